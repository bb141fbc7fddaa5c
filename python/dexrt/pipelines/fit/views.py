"""The views `dexrt fit` renders of one patient: at the treatment's kV angles, centred on the isocentre(s), with
the patient as a fraction finds them (setup error, breathing; `dexrt.pipelines.fit.motion`) and through a kV
imaging chain (`dexrt.synth.chain`: tube voltage, dose and noise, scatter and grid, blur, heel, collimation,
processing; no magnification change and no aim offset: the room's geometry is known).

Three sets, never sharing an angle or a patient state:

* **train**: angles drawn uniformly over the angle ranges, away from the held-out angles by `guard_deg`; breathing
  phases on a grid (`TRAIN_PHASES`), setup errors drawn per view (normal, rms `setup_mm` and `setup_deg` over the
  three axes, truncated at 2 sd);
* **val** (checkpoint choice): train angles, breathing phase `VAL_PHASE`, setup errors drawn from their own stream;
* **test** (held out, the before/after scores): angles spread evenly over the ranges, each `guard_deg` from every
  training angle, breathing phase `TEST_PHASE` (between two training phases), and a setup error of exactly
  `setup_mm` and `setup_deg`, in a direction drawn per view.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dexrt._atomic import atomic_write
from dexrt._errors import InputError
from dexrt.pipelines.fit.motion import Breathing, PatientState, rigid
from dexrt.synth.chain import ChainConfig, draw_chain
from dexrt.synth.render import ImagingConfig, Renderer, View
from dexrt.synth.volume import MaterialVolume

TRAIN_PHASES = (-1.0, -1.0 / 3.0, 1.0 / 3.0, 1.0)
VAL_PHASE = -2.0 / 3.0
TEST_PHASE = 2.0 / 3.0
STATIC_BEAM_WINDOW_DEG = 10.0  # a single angle (a static beam, `--angles 90`) is imaged over +-5 degrees

# The kV imager's chain: what varies between images of one room (exposure, scatter, processing), not its geometry.
KV_CHAIN = ChainConfig(magnification=None, offset_mm=0.0, marker_prob=0.0, annotation_prob=0.0,
                       collimation_prob=0.3, processing_prob=0.5)


@dataclass(frozen=True)
class AngleRange:
    """kV source angles in the patient's frame (the renderer's gantry angle), from `start` over `extent` degrees in
    the increasing direction, at one couch angle and one isocentre."""

    start: float
    extent: float
    couch_deg: float = 0.0
    isocentre: int = 0
    label: str = ""

    def record(self) -> dict:
        return {"start_deg": round(self.start, 4), "extent_deg": round(self.extent, 4), "couch_deg": self.couch_deg,
                "isocentre": self.isocentre, "from": self.label}


def parse_angles(text: str) -> list[tuple[float, float]]:
    """'A:B,C' -> [(start, extent), ...] of room angles: A:B from A up to B (0:360 the whole turn), C a window of
    `STATIC_BEAM_WINDOW_DEG` about C."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part:
                a, b = (float(v) for v in part.split(":", 1))
                extent = 360.0 if abs(b - a) >= 360.0 else (b - a) % 360.0
                if extent == 0.0:
                    raise ValueError
                out.append((a % 360.0, extent))
            else:
                c = float(part)
                out.append(((c - STATIC_BEAM_WINDOW_DEG / 2) % 360.0, STATIC_BEAM_WINDOW_DEG))
        except ValueError:
            raise InputError(f"--angles: expected A:B ranges or single angles in degrees, comma-separated, got "
                             f"{part!r}") from None
    if not out:
        raise InputError("--angles: no angle given")
    return out


class AngleSampler:
    """Positions along the concatenated ranges <-> (range, angle)."""

    def __init__(self, ranges: list[AngleRange]) -> None:
        if not ranges:
            raise InputError("no angles to render")
        self.ranges = ranges
        self.lengths = np.array([max(r.extent, 1e-6) for r in ranges])
        self.total = float(self.lengths.sum())

    def at(self, position: float) -> tuple[AngleRange, float]:
        ends = np.cumsum(self.lengths)
        i = min(int(np.searchsorted(ends, position, side="right")), len(self.ranges) - 1)
        r = self.ranges[i]
        return r, (r.start + position - (ends[i] - self.lengths[i])) % 360.0


def _circular(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


@dataclass(frozen=True)
class ViewPlan:
    train: int
    val: int
    test: int
    setup_mm: float = 5.0
    setup_deg: float = 2.0
    guard_deg: float = 3.0
    seed: int = 0


def test_angles(sampler: AngleSampler, n: int, guard_deg: float) -> list[tuple[AngleRange, float]]:
    """`n` held-out angles, evenly spaced; fewer distinct angles (each used more than once) when the ranges are too
    short to keep `2 guard_deg` of training arc between neighbours."""
    distinct = max(1, min(n, int(sampler.total // (4.0 * guard_deg)) if sampler.total > 4 * guard_deg else 1))
    picks = [sampler.at((k + 0.5) * sampler.total / distinct) for k in range(distinct)]
    return [picks[k % distinct] for k in range(n)]


def _setup(rng: np.random.Generator, setup_mm: float, setup_deg: float, exact: bool) -> tuple[tuple, tuple]:
    def vector(rms: float) -> np.ndarray:
        if rms <= 0:
            return np.zeros(3)
        if exact:  # exactly `rms` long, in a random direction
            v = rng.normal(size=3)
            return v / np.linalg.norm(v) * rms
        return np.clip(rng.normal(0.0, rms / math.sqrt(3.0), 3), -2 * rms / math.sqrt(3.0), 2 * rms / math.sqrt(3.0))

    shift, rot = vector(setup_mm), vector(setup_deg)
    return tuple(round(float(v), 4) for v in shift), tuple(round(float(v), 4) for v in rot)


def plan_fit_views(renderer: Renderer, ranges: list[AngleRange], isocentres: list[tuple[float, float, float]],
                   plan: ViewPlan) -> dict[str, list[View]]:
    """The train, val and test views (angles, states, chains, noise seeds), all drawn from `plan.seed`."""
    sampler = AngleSampler(ranges)
    held = test_angles(sampler, plan.test, plan.guard_deg) if plan.test else []
    held_angles = {round(a, 6) for _, a in held}
    guard = plan.guard_deg if sampler.total > 4 * plan.guard_deg else 0.0
    se, cfg = renderer.config.physics.se, renderer.config

    def train_angle(rng: np.random.Generator) -> tuple[AngleRange, float]:
        for _ in range(10_000):
            r, a = sampler.at(float(rng.uniform(0.0, sampler.total)))
            if all(_circular(a, h) >= guard for h in held_angles):
                return r, a
        raise InputError("the angle ranges leave no training angle outside the held-out ones; widen --angles")

    def make(kind: str, n: int, stream: int) -> list[View]:
        rng = np.random.default_rng([plan.seed, stream])
        views = []
        for i in range(n):
            if kind == "test":
                r, angle = held[i]
                phase = TEST_PHASE
            else:
                r, angle = train_angle(rng)
                phase = TRAIN_PHASES[i % len(TRAIN_PHASES)] if kind == "train" else VAL_PHASE
            shift, rot = _setup(rng, plan.setup_mm, plan.setup_deg, exact=kind == "test")
            seed = int(rng.integers(0, 2**31 - 1))
            state = PatientState(i, isocentres[r.isocentre], phase, shift, rot, kind)
            chain = draw_chain(KV_CHAIN, se, cfg.sid_mm, cfg.sdd_mm, renderer.body_radius_mm, seed)
            views.append(View(f"{kind}_{i:05d}", round(angle, 6), round(r.couch_deg, 6), 0.0,
                              seed if cfg.physics.noise else None, [], chain, state))  # type: ignore[arg-type]
        # one breathing volume per (isocentre, phase): render them in that order
        views.sort(key=lambda v: (v.anatomy.breathing, v.anatomy.isocentre_mm, v.id))  # type: ignore[union-attr]
        return views

    return {"train": make("train", plan.train, 1), "val": make("val", plan.val, 2), "test": make("test", plan.test, 3)}


class PatientRenderer(Renderer):
    """A renderer whose views carry a `PatientState`: the volume is the planning CT's, breathed and set up as the
    state says (the last breathing phase's volume is kept for the next view).

    With `pad_multiple` (see `padded`) every rendered image is mirror-padded to that multiple exactly as the runtime
    pads an engine's input (`dexrt.runtime.contract.mirror_pad`): a kV image of the panel's field, brought to the
    model's pixel spacing, is smaller than the network's size multiple, so the network sees it padded; training
    views made the same way teach it that input (the default model, trained on whole 256-pixel views, loses several
    dB on padded ones)."""

    def __init__(self, ct: Any, config: ImagingConfig, breathing_mm: float) -> None:
        super().__init__(ct, config)
        self.breathing_mm = breathing_mm
        self.pad_multiple: int | None = None
        self._breathing: Breathing | None = None
        self._phase: tuple[float, MaterialVolume] | None = None

    def render(self, view: View, noise: bool | None = None) -> dict[str, np.ndarray]:
        images = super().render(view, noise)
        if self.pad_multiple is None:
            return images
        from dexrt.runtime.contract import mirror_pad

        return {k: mirror_pad(v, self.pad_multiple)[0] if v.ndim == 2 else v for k, v in images.items()}

    def padded(self, multiple: int | None) -> PatientRenderer:
        """The same renderer, its images mirror-padded to `multiple` (None: not padded), sharing the volumes."""
        other = copy.copy(self)
        other.pad_multiple = multiple
        return other

    def padded_size(self) -> tuple[int, int]:
        rows, cols = self.config.size
        if self.pad_multiple is None:
            return rows, cols
        from dexrt.runtime.contract import pad_geometry

        hp, wp, _, _ = pad_geometry(rows, cols, self.pad_multiple)
        return hp, wp

    @property
    def breathing(self) -> Breathing:
        if self._breathing is None:
            self._breathing = Breathing(self.volume, self.breathing_mm)
        return self._breathing

    def volume_for(self, view: View) -> MaterialVolume:
        state = view.anatomy
        if not isinstance(state, PatientState):
            return super().volume_for(view)
        if self._phase is None or self._phase[0] != state.breathing:
            self._phase = (state.breathing, self.breathing.at(state.breathing))
        return rigid(self._phase[1], state, self.iso)


def write_views(renderer: PatientRenderer, views: list[View], splits: list[str], out: Path, *, seed: int,
                fit_record: dict, provenance: dict, progress: Any = None) -> dict:
    """Write `views` as a dexrt dataset (`dexrt.synth.writer`), its manifest's split ranges replaced by the fit's
    angle record and a `fit` block added."""
    from dexrt.synth.writer import DatasetConfig, write_dataset

    cfg = DatasetConfig(views=len(views), seed=seed, chain=KV_CHAIN, tilt_jitter_deg=0.0)
    manifest = write_dataset(renderer, cfg, out, provenance=provenance, progress=progress, planned=(views, splits))
    if renderer.pad_multiple is not None:  # the images are the field mirror-padded: say so, and their size
        from dexrt.runtime.contract import pad_geometry

        hp, wp, top, left = pad_geometry(*renderer.config.size, renderer.pad_multiple)
        manifest["size"] = [hp, wp]
        manifest["padding"] = {"field_px": list(renderer.config.size), "padded_to": [hp, wp],
                               "field_at_px": [top, left], "mode": "mirror, as the runtime pads an engine's input"}
    counts = {s: splits.count(s) for s in ("train", "val", "test")}
    manifest["splits"] = {s: {"views": counts[s], "rule": "dexrt fit: see fit.angles"} for s in counts}
    manifest.pop("split_rule", None)
    manifest["fit"] = fit_record
    with atomic_write(out / "manifest.json") as f:
        f.write(json.dumps(manifest, indent=1).encode())
    return manifest


def unpadded_copy(dataset: Path, out: Path, limit: int) -> Path:
    """Up to `limit` train views of a padded dataset (`write_views` with `PatientRenderer.padded`), spread over it,
    cropped back to the field and written as a dataset of their own: the views as a kV image of the panel reaches
    the engine (normalised over the field, then padded by the engine). The INT8 build calibrates on them, so its
    activation ranges and its accuracy check are those of the deployed input, not of an input normalised over its
    own padding (on lung2, calibrating on the padded views left 5 of 16 held-out views with 8-20 dB of soft PSNR
    lost)."""
    from dexrt.io.images import read_image, write_image

    manifest = json.loads((dataset / "manifest.json").read_text())
    padding = manifest.get("padding")
    if padding is None:
        raise InputError(f"{dataset}: not a padded dataset (no 'padding' in its manifest)")
    views = [v for v in manifest["views"] if v["split"] == "train"]
    views = [views[i] for i in np.unique(np.linspace(0, len(views) - 1, min(limit, len(views))).round().astype(int))]
    (rows, cols), (top, left) = padding["field_px"], padding["field_at_px"]
    for v in views:
        for rel in [*v["files"].values(), *([v["mask"]] if v.get("mask") else [])]:
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            write_image(target, read_image(dataset / rel)[top:top + rows, left:left + cols])
    copy_manifest = {**manifest, "views": views, "size": [rows, cols]}
    copy_manifest.pop("padding")
    copy_manifest["splits"] = {"train": {"views": len(views), "rule": "dexrt fit: train views cropped to the field"}}
    with atomic_write(out / "manifest.json") as f:
        f.write(json.dumps(copy_manifest, indent=1).encode())
    return out
