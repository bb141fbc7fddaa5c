"""`dexrt fit`: a model of one patient, from the planning CT, within a time budget (docs/fit.md).

    CT (+ RT Plan) -> isocentre(s), kV angles -> train / val / held-out views of this patient at those angles, with
    setup errors, breathing and a kV imaging chain -> the starting model scored on the held-out views -> fine-tuned
    from it for the time left -> exported flip-averaged -> engine (INT8 with accuracy control, or FP16) -> scored on
    the same held-out views -> written with the patient's identity, the geometry, the angles, the budget and both
    scores in its (signed) manifest.

The PyTorch side (timing a step, fine-tuning, exporting) comes in as a `FitTrainer` (`dexrt_train.fit` provides the one
backed by the trainer, and the command line hands it in), so this module, like every pipeline, never imports the
trainer.

The budget (`minutes`) is for the whole run, CT to signed engine. After the CT is read and one view and one
training step are timed, the run is planned and printed: a share of what is left renders the views (their number
follows), the export, the engine build and the scoring keep their measured or stated allowance, and fine-tuning
gets the rest, its number of steps re-planned as it goes (the trainer checkpoints in chunks).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dexrt._atomic import atomic_write
from dexrt._errors import InputError
from dexrt.pipelines.fit.geometry import Geometry, load_geometry
from dexrt.pipelines.fit.identity import ct_identity, resolve_ct
from dexrt.pipelines.fit.plan import (
    check_plan_against_ct,
    lps_to_ras,
    patient_angle,
    patient_couch,
    read_plan,
)
from dexrt.pipelines.fit.views import (
    KV_CHAIN,
    STATIC_BEAM_WINDOW_DEG,
    TEST_PHASE,
    TRAIN_PHASES,
    VAL_PHASE,
    AngleRange,
    PatientRenderer,
    ViewPlan,
    parse_angles,
    plan_fit_views,
    write_views,
)
from dexrt.runtime.bundle import sha256_hex

log = logging.getLogger(__name__)

RENDER_SHARE = 0.25  # of the time left after setup and the fixed stages, for rendering views
MIN_TRAIN_VIEWS, MAX_TRAIN_VIEWS = 8, 800
# Allowances for the stages after training, seconds (measured on the shared 2-core development machine: INT8 with
# accuracy control took 65 s of CPU and 156 s of wall time on a patient model; docs/fit.md).
EXPORT_S = 15.0
BUILD_S = {"int8": 120.0, "fp16": 10.0}
SCORE_S_PER_VIEW = 0.2  # both engines, with the first call's compilation spread over the views
DEFAULT_LR = 1e-4


class FitTrainer(Protocol):
    def step_seconds(self, init: Path) -> float:
        """Seconds one fine-tuning step of `init`'s generator takes here."""

    def fine_tune(self, dataset: Path, run: Path, init: Path, *, seconds: float, lr: float, seed: int,
                  progress: bool) -> dict[str, Any]:
        """Fine-tune `init` on `dataset` (train and val splits) into `run` for about `seconds`; returns a summary
        with "checkpoint" (the folder to export), "steps", "seconds"."""

    def export(self, checkpoint: Path, onnx: Path, *, pixel_spacing_mm: float) -> dict[str, Any]:
        """The checkpoint's generator, flip-averaged, as ONNX; returns its metadata."""


@dataclass
class FitOptions:
    ct: str
    output: Path
    plan: Path | None = None
    isocentres_lps: tuple[tuple[float, float, float], ...] = ()
    geometry: Geometry = field(default_factory=load_geometry)
    angles: str | None = None
    position: str | None = None  # patient position when neither the plan nor the CT says (default HFS)
    minutes: float = 20.0
    init: str = "default"
    precision: str = "int8"
    sign_key: Path | None = None
    report: Path | None = None
    patient_id: str | None = None
    work: Path | None = None  # kept; default: a temporary folder beside the output, removed at the end
    pixel_mm: float | None = None  # working pixel at the isocentre; default the starting model's
    breathing_mm: float = 15.0
    setup_mm: float = 5.0
    setup_deg: float = 2.0
    train_views: int | None = None  # default: from the budget
    val_views: int = 8
    test_views: int = 16
    lr: float = DEFAULT_LR
    seed: int = 0
    threads: int = 0
    calibration_images: int = 100
    progress: bool = True

    def validate(self) -> None:
        if not 0 < self.minutes <= 24 * 60:
            raise InputError(f"--minutes must be in (0, 1440], got {self.minutes}")
        if self.precision not in ("int8", "fp16"):
            raise InputError(f"--precision must be int8 or fp16, got {self.precision!r}")
        if self.test_views < 1 or self.val_views < 1:
            raise InputError("the held-out and validation sets need at least one view each")
        if not (0 <= self.setup_mm <= 30 and 0 <= self.setup_deg <= 10 and 0 <= self.breathing_mm <= 50):
            raise InputError("setup error must be 0-30 mm and 0-10 deg, breathing 0-50 mm")
        if self.output.exists() and self.output.is_dir():
            raise InputError(f"{self.output}: is a folder; give the engine file to write (e.g. patient.dexrt)")
        if not self.output.parent.is_dir():
            raise InputError(f"{self.output.parent}: output folder does not exist")


def _say(text: str) -> None:
    print(f"dexrt fit: {text}", file=sys.stderr, flush=True)


def init_checkpoint(init: str) -> Path:
    from dexrt.models import DEFAULT_CHECKPOINT

    path = DEFAULT_CHECKPOINT if init == "default" else Path(init)
    if not (path / "config.json").is_file():
        raise InputError(f"{path}: not a checkpoint folder (no config.json); --init takes 'default' or a "
                         "`dexrt train` checkpoint folder")
    return path


def _weights_hash(path: Path) -> str | None:
    """The checkpoint's weights as `dexrt_train` names them: sha256 of model.safetensors."""
    try:
        return "sha256:" + sha256_hex((path / "model.safetensors").read_bytes())
    except OSError:
        return None


def _size_multiple(path: Path) -> int:
    """The generator's size multiple (2 ** depth) from a checkpoint's config."""
    try:
        depth = int(json.loads((path / "config.json").read_text())["generator"]["depth"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}/config.json: no generator depth ({exc})") from None
    return 2 ** depth


def _checkpoint_spacing(path: Path) -> float | None:
    try:
        value = json.loads((path / "config.json").read_text()).get("pixel_spacing_mm")
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def angle_ranges(opts: FitOptions, plan: Any, isocentres: int, position: str) -> tuple[list[AngleRange], str]:
    """The kV angle ranges in the patient frame, and where they came from."""
    offset = opts.geometry.kv_offset_deg

    def to_patient(start: float, extent: float, couch: float, iso: int, label: str, pos: str) -> AngleRange:
        # A negating map (FFS, FFP) turns the range around: its end becomes the start.
        begin = start if pos in ("HFS", "HFP") else start + extent
        return AngleRange(patient_angle(begin, pos), extent, patient_couch(couch, pos), iso, label)

    if opts.angles is not None:
        given = parse_angles(opts.angles)
        ranges = [to_patient(a, e, 0.0, i, f"--angles {opts.angles} (kV source angles)", position)
                  for i in range(isocentres) for a, e in given]
        return ranges, "option"
    if plan is not None:
        isos = plan.isocentres()
        ranges = []
        for beam in plan.beams:
            iso = next(i for i, p in enumerate(isos) if np.linalg.norm(np.subtract(p, beam.isocentre_lps_mm)) <= 0.5)
            start, extent = beam.gantry_range()
            if extent == 0.0:
                start, extent = start - STATIC_BEAM_WINDOW_DEG / 2, STATIC_BEAM_WINDOW_DEG
            label = f"beam {beam.number} ({beam.name}): MV gantry {beam.gantry_deg:g}" + (
                f"-{beam.arc_end_deg:g} {beam.direction}" if beam.arc_end_deg is not None else "") + \
                f", kV = MV {offset:+g}"
            ranges.append(to_patient((start + offset) % 360.0, extent, beam.couch_deg, iso, label, beam.position))
        return ranges, "plan"
    return [AngleRange(0.0, 360.0, 0.0, i, "all angles") for i in range(isocentres)], "all"


def score(engine: Any, dataset: Path) -> tuple[dict[str, float], list[np.ndarray]]:
    """Mean metrics of `engine` on the dataset's test split, as `dexrt eval` computes them, and each view's panel
    row (SE | true bone | predicted bone | true soft | predicted soft)."""
    from dexrt.evaluation.evaluate import predicted_views
    from dexrt.evaluation.metrics import scored_view, summarize

    per_view, rows = [], []
    for se, true, pred, mask in predicted_views(engine, dataset, split="test"):
        metrics, row = scored_view(se, true, pred, mask)
        per_view.append(metrics)
        rows.append(row)
    return summarize(per_view), rows


def _start_engine(init: str, checkpoint: Path, trainer: FitTrainer, work: Path, spacing: float) -> tuple[Any, str]:
    """The starting model as an engine: the bundled default, or `--init`'s checkpoint exported and built (FP16)."""
    from dexrt.runtime.engine import Engine

    if init == "default":
        from dexrt.models import DEFAULT_ENGINE

        return Engine(DEFAULT_ENGINE, device="cpu"), "the bundled default engine (default.dexrt)"
    from dexrt.build.openvino import build_openvino, read_onnx_contract

    onnx = work / "init.onnx"
    trainer.export(checkpoint, onnx, pixel_spacing_mm=spacing)
    manifest, payload = build_openvino(read_onnx_contract(onnx), onnx, precision="fp16")
    return Engine.from_parts(manifest, payload, device="cpu"), f"{checkpoint} (flip-averaged, FP16)"


def fit(opts: FitOptions, trainer: FitTrainer) -> dict[str, Any]:
    """Run a whole fit (see the module docstring); returns the summary recorded in the engine's manifest."""
    t0 = time.monotonic()
    deadline = t0 + opts.minutes * 60.0
    timings: dict[str, float] = {}
    opts.validate()
    signing_key = None
    if opts.sign_key is not None:  # a bad key is reported now, not after the budget is spent
        from dexrt.runtime.signing import load_private_key

        signing_key = load_private_key(opts.sign_key)
    checkpoint = init_checkpoint(opts.init)
    init_hash = _weights_hash(checkpoint)  # recorded: the shipped default checkpoint changes between releases
    spacing = opts.pixel_mm or _checkpoint_spacing(checkpoint)
    if spacing is None:
        raise InputError(f"{checkpoint}: records no training pixel spacing; give --pixel-mm")

    # -- the patient: CT, identity, plan, isocentres
    from dexrt.synth.ct import load_ct

    source = resolve_ct(opts.ct)
    ct = load_ct(source.path, source.labels)
    identity = ct_identity(source.path, ct.sha256, getattr(ct, "meta", None), opts.patient_id)
    warnings: list[str] = []
    plan = read_plan(opts.plan) if opts.plan is not None else None
    if plan is not None:
        warnings += check_plan_against_ct(plan, identity.frame_of_reference_uid, identity.patient_id)
        if identity.patient_id is None and plan.patient_id:
            identity = ct_identity(source.path, ct.sha256, getattr(ct, "meta", None), plan.patient_id)
    position = (opts.position or identity.patient_position or "HFS").upper()
    iso_lps: list[tuple[float, float, float]]
    if opts.isocentres_lps:
        iso_lps, iso_from = list(opts.isocentres_lps), "--isocentre"
    elif plan is not None:
        iso_lps, iso_from = plan.isocentres(), f"RT Plan {Path(plan.path).name}"
    else:
        iso_lps, iso_from = [], "the body's centre"
    lo, hi = ct.world_bounds()
    for p in iso_lps:
        ras = np.asarray(lps_to_ras(p), float)
        if np.any(ras < lo) or np.any(ras > hi):
            corners = [np.round(lps_to_ras(c.tolist()), 1).tolist() for c in (hi, lo)]
            raise InputError(f"{source.path}: the isocentre {list(p)} mm (DICOM patient coordinates) lies outside the "
                             f"CT ({corners[0]} to {corners[1]})")

    # -- the renderer: the training field (at least the trainer's crop) and the panel's field, one pixel size
    from dexrt.synth.physics import PhysicsConfig
    from dexrt.synth.render import ImagingConfig

    g = opts.geometry
    panel = g.field_px(spacing)
    pixel_det = spacing * g.magnification
    from dexrt.synth.volume import LabelRules

    imaging = ImagingConfig(size=panel, sid_mm=g.sid_mm, sdd_mm=g.sdd_mm, detector_mm=pixel_det * max(panel),
                            iso_mm=lps_to_ras(iso_lps[0]) if iso_lps else None,
                            rules=source.rules or LabelRules(), physics=PhysicsConfig(noise=True), threads=opts.threads)
    renderer = PatientRenderer(ct, imaging, opts.breathing_mm)
    x, y, z = (float(v) for v in renderer.iso)  # the body's centre, when no isocentre is given
    isocentres = [lps_to_ras(p) for p in iso_lps] or [(x, y, z)]
    if not iso_lps:
        iso_lps = [lps_to_ras(isocentres[0])]  # the map is its own inverse
    ranges, angles_from = angle_ranges(opts, plan, len(isocentres), position)
    timings["ct_and_volume_s"] = time.monotonic() - t0

    # -- time one view and one step, then plan the run
    probe = plan_fit_views(renderer, ranges, isocentres, ViewPlan(1, 1, 1, opts.setup_mm, opts.setup_deg,
                                                                  seed=opts.seed + 99))["train"][0]
    t = time.monotonic()
    renderer.volume_for(probe)  # the breathing field (built once) and one breathing phase's volume
    t_breath = time.monotonic() - t
    t = time.monotonic()
    renderer.render(probe)  # that phase's volume is kept: this is one view's own cost
    t_view = time.monotonic() - t
    step_s = trainer.step_seconds(checkpoint)
    # train and val views as the engine sees a kV image of the panel: mirror-padded to the network's size multiple
    train_renderer = renderer.padded(_size_multiple(checkpoint))  # shares the breathing field built by the probe
    train_field = train_renderer.padded_size()
    n_val, n_test = opts.val_views, opts.test_views
    fixed = EXPORT_S + BUILD_S[opts.precision] + SCORE_S_PER_VIEW * n_test * 2
    phases = len(TRAIN_PHASES) + 2
    left = deadline - time.monotonic() - fixed - phases * t_breath * len(isocentres)
    n_train = opts.train_views or int(np.clip(RENDER_SHARE * left / max(t_view, 1e-3) - n_val - n_test,
                                              MIN_TRAIN_VIEWS, MAX_TRAIN_VIEWS))
    render_s = (n_train + n_val + n_test) * t_view + phases * t_breath * len(isocentres)
    train_s = deadline - time.monotonic() - render_s - fixed
    total = time.monotonic() - t0 + render_s + max(train_s, step_s * 10) + fixed
    _say(f"{opts.minutes:g} min budget. CT, volume and timing took {time.monotonic() - t0:.0f} s. Plan: render "
         f"{n_train} train + {n_val} val + {n_test} held-out views (~{render_s:.0f} s, {t_view:.2f} s a view), score "
         f"the starting model, fine-tune ~{max(train_s, 0) / step_s:.0f} steps (~{max(train_s, 0):.0f} s at "
         f"{step_s:.2f} s a step), export and build {opts.precision} (~{EXPORT_S + BUILD_S[opts.precision]:.0f} s): "
         f"done in ~{total / 60:.1f} min")
    if train_s < step_s * 10:
        _say(f"the budget leaves less than 10 steps of fine-tuning; the run will take about {total / 60:.1f} min")
    timings["probe_s"] = time.monotonic() - t0 - timings["ct_and_volume_s"]

    work_owned = opts.work is None
    work = opts.work or Path(tempfile.mkdtemp(prefix=f".{opts.output.name}.fit-", dir=opts.output.parent))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = _run(opts, trainer, train_renderer, ranges, isocentres, work, checkpoint, spacing, deadline,
                      n_train, timings, t0, signing_key,
                      context={"identity": identity, "plan": plan, "iso_lps": iso_lps, "iso_from": iso_from,
                               "angles_from": angles_from, "position": position, "panel": panel,
                               "train_field": train_field, "warnings": warnings, "source": source, "ct": ct,
                               "init_hash": init_hash})
    finally:
        if work_owned:
            shutil.rmtree(work, ignore_errors=True)
    return result


def _run(opts: FitOptions, trainer: FitTrainer, renderer: PatientRenderer, ranges: list[AngleRange],
         isocentres: list[tuple[float, float, float]], work: Path, checkpoint: Path, spacing: float, deadline: float,
         n_train: int, timings: dict[str, float], t0: float, signing_key: Any, context: dict[str, Any]
         ) -> dict[str, Any]:
    from tqdm import tqdm

    g = opts.geometry
    views = plan_fit_views(renderer, ranges, isocentres, ViewPlan(n_train, opts.val_views, opts.test_views,
                                                                 opts.setup_mm, opts.setup_deg, seed=opts.seed))
    identity, ct = context["identity"], context["ct"]
    fit_record: dict[str, Any] = {
        "ct": {"source": identity.source, "sha256": identity.sha256, "shape": list(ct.hu.shape),
               "spacing_mm": np.round(ct.spacing, 4).tolist(),
               **{k: v for k, v in context["source"].provenance.items() if k != "licence"}},  # its text: datasets
        "plan": context["plan"].record() if context["plan"] is not None else None,
        "patient_position": context["position"],
        "isocentres_lps_mm": [[round(float(v), 3) + 0.0 for v in p] for p in context["iso_lps"]],
        "isocentres_from": context["iso_from"],
        "geometry": g.record(), "pixel_at_iso_mm": spacing,
        "panel_field_px": list(context["panel"]),
        "training_views": {"field_px": list(context["panel"]), "padded_to_px": list(context["train_field"]),
                           "padding": "mirror, as the runtime pads the engine's input"},
        "angles": [r.record() for r in ranges], "angles_from": context["angles_from"],
        "angle_convention": "kV source angles in the patient frame: 0 = source anterior, 90 = at the patient's "
                            "left; room angle = MV gantry + kv_offset_deg, then mapped by patient position",
        "variation": {"setup_mm_rms": opts.setup_mm, "setup_deg_rms": opts.setup_deg,
                      "breathing_mm_peak_to_peak": opts.breathing_mm, "train_phases": list(TRAIN_PHASES),
                      "val_phase": VAL_PHASE, "test_phase": TEST_PHASE,
                      "test_setup": f"exactly {opts.setup_mm} mm and {opts.setup_deg} deg, random direction",
                      "breathing": renderer.breathing.describe(), "chain": asdict(KV_CHAIN)},
        "views": {k: len(v) for k, v in views.items()},
        "budget_minutes": opts.minutes, "seed": opts.seed,
        "warnings": context["warnings"],
    }
    provenance = dict(context["source"].provenance)
    show = opts.progress and sys.stderr.isatty()
    t = time.monotonic()
    with tqdm(total=sum(len(v) for v in views.values()), desc="render", unit="view", disable=not show,
              file=sys.stderr) as bar:
        train_ds = work / "train"
        write_views(renderer, views["train"] + views["val"], ["train"] * len(views["train"]) + ["val"] * len(
            views["val"]), train_ds, seed=opts.seed, fit_record=fit_record, provenance=provenance,
                    progress=bar.update)
        panel_renderer = renderer.padded(None)  # held-out views: the panel's field as it is; the engine pads
        heldout = work / "heldout"
        write_views(panel_renderer, views["test"], ["test"] * len(views["test"]), heldout, seed=opts.seed,
                    fit_record=fit_record, provenance=provenance, progress=bar.update)
    timings["render_s"] = time.monotonic() - t

    # -- the starting model on the held-out views
    t = time.monotonic()
    start_engine, start_name = _start_engine(opts.init, checkpoint, trainer, work, spacing)
    with start_engine:
        start_hash = start_engine.manifest.get("model", {}).get("model_hash")
        before, before_rows = score(start_engine, heldout)
    timings["score_before_s"] = time.monotonic() - t
    _say(f"starting model on {len(views['test'])} held-out views: bone {before['bone/psnr']:.2f} dB, soft "
         f"{before['soft/psnr']:.2f} dB, suppression {before['bone_suppression']:.3f}")

    # -- fine-tune for what the budget leaves
    fixed = EXPORT_S + BUILD_S[opts.precision] + SCORE_S_PER_VIEW * len(views["test"])
    seconds = max(deadline - time.monotonic() - fixed, 0.0)
    t = time.monotonic()
    summary = trainer.fine_tune(train_ds, work / "run", checkpoint, seconds=seconds, lr=opts.lr, seed=opts.seed,
                                progress=opts.progress)
    timings["train_s"] = time.monotonic() - t

    # -- export, build, score, record
    t = time.monotonic()
    onnx = work / "patient.onnx"
    trainer.export(Path(summary["checkpoint"]), onnx, pixel_spacing_mm=spacing)
    timings["export_s"] = time.monotonic() - t
    t = time.monotonic()
    calibration = train_ds
    if opts.precision == "int8":  # calibrated on the training views as the engine gets them: the field, unpadded
        from dexrt.pipelines.fit.views import unpadded_copy

        calibration = unpadded_copy(train_ds, work / "calibration", opts.calibration_images)
    manifest, payload = _build(onnx, opts.precision, calibration, opts.calibration_images)
    timings["build_s"] = time.monotonic() - t
    t = time.monotonic()
    from dexrt.runtime.engine import Engine

    with Engine.from_parts(manifest, payload, device="cpu") as fitted:
        after, after_rows = score(fitted, heldout)
    timings["score_after_s"] = time.monotonic() - t
    _say(f"fitted {opts.precision} engine on the same views: bone {after['bone/psnr']:.2f} dB, soft "
         f"{after['soft/psnr']:.2f} dB, suppression {after['bone_suppression']:.3f}")

    fit_record["init"] = {"checkpoint": "default" if opts.init == "default" else str(checkpoint),
                          "model_hash": context["init_hash"], "engine_scored": start_name,
                          "engine_model_hash": start_hash}
    fit_record["training"] = {**{k: v for k, v in summary.items() if k != "checkpoint"}, "lr": opts.lr}
    fit_record["scores"] = {"split": "held-out views (test): other angles, breathing phase and setup error not "
                                     "used in training", "views": len(views["test"]),
                            "before": _rounded(before), "after": _rounded(after),
                            "gain_db": {c: round(after[f"{c}/psnr"] - before[f"{c}/psnr"], 3)
                                        for c in ("bone", "soft")},
                            "after_engine": f"this engine ({opts.precision})"}
    timings["wall_s"] = time.monotonic() - t0
    fit_record["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    manifest["patient"] = identity.block()
    manifest["fit"] = fit_record
    from dexrt.runtime.bundle import write_bundle

    write_bundle(opts.output, manifest, payload, signing_key=signing_key)
    if opts.report is not None:
        from dexrt.pipelines.fit.report import write_report

        write_report(opts.report, fit_record, identity.block(), before_rows, after_rows, train_ds)
    return {"output": str(opts.output), "patient": identity.block(), "fit": fit_record,
            "signed": signing_key is not None}


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in metrics.items()}


def _build(onnx: Path, precision: str, calibration: Path, images: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    from dexrt.build.openvino import build_openvino, read_onnx_contract

    contract = read_onnx_contract(onnx)
    if precision == "int8":
        import contextlib

        from dexrt.build.quantize import MAX_LOSS_DB, quantize_openvino

        with contextlib.redirect_stdout(sys.stderr):  # NNCF draws its progress on stdout: results go there
            return quantize_openvino(contract, onnx, calibration, images=images, max_loss_db=MAX_LOSS_DB)
    return build_openvino(contract, onnx, precision="fp16")


def write_json(path: Path, doc: dict[str, Any]) -> None:
    with atomic_write(path) as f:
        f.write((json.dumps(doc, indent=2) + "\n").encode())
