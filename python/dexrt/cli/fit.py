"""`dexrt fit CT -o patient.dexrt`: a model of one patient from the planning CT, within a time budget."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dexrt.pipelines.fit.geometry import preset_names


def _point(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise click.BadParameter(f"expected X,Y,Z in mm, got {text!r}", param_hint="--isocentre")
    return values  # type: ignore[return-value]


@click.command("fit")
@click.argument("ct", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="The patient engine to write (e.g. patient.dexrt).")
@click.option("--jobs", "jobs_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FITS.toml",
              help="Many patients: one [[fit]] table each (ct, output, plan, ...; docs/fit.md) instead of CT and -o.")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="With --jobs: run the fits on Ray, one per actor ('local', 'auto', HOST:PORT) [one after another].")
@click.option("--cpus-per-fit", type=click.IntRange(min=1), default=2, show_default=True,
              help="With --ray: CPUs each fit's actor holds (and its threads).")
@click.option("--plan", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="DICOM RT Plan: the isocentre(s) and the beams' angles (its frame of reference must be the CT's).")
@click.option("--isocentre", "isocentres", multiple=True, metavar="X,Y,Z",
              help="Isocentre in DICOM patient coordinates (LPS, mm), repeatable [the plan's, else the body's centre].")
@click.option("--geometry", "geometry_spec", metavar="PRESET|FILE.toml",
              help=f"kV imaging geometry: a preset ({', '.join(preset_names())}) or a TOML file [default].")
@click.option("--sid", type=float, help="Source-isocentre distance, mm (overrides the geometry).")
@click.option("--sdd", type=float, help="Source-detector distance, mm (overrides the geometry).")
@click.option("--detector-mm", metavar="W[xH]", help="Panel size, mm (overrides the geometry).")
@click.option("--detector-px", metavar="N[xM]", help="Panel pixels, columns x rows (overrides the geometry).")
@click.option("--angles", metavar="A:B,...",
              help="kV source angles (IEC gantry scale): ranges A:B and single angles [the plan's beams + the "
                   "imager's offset, else all].")
@click.option("--position", type=click.Choice(["HFS", "FFS", "HFP", "FFP"]),
              help="Patient position [the plan's, else the CT's, else HFS].")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Time budget from CT to engine (rendering, fine-tuning, export, build, scoring).")
@click.option("--init", default="default", show_default=True, metavar="default|CHECKPOINT",
              help="Model to start from: the shipped model's checkpoint, or a `dexrt train` checkpoint folder.")
@click.option("--precision", type=click.Choice(["int8", "fp16"]), default="int8", show_default=True,
              help="int8: calibrated on the patient's views with accuracy control (<= 0.3 dB); fp16: weights only.")
@click.option("--sign", "sign_key", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="KEY",
              help="Sign the engine with this Ed25519 private key (`dexrt keygen`).")
@click.option("--report", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write report.md (before/after table), scores.json and panels here.")
@click.option("--patient-id", help="PatientID to record when the CT carries none (NIfTI, NRRD, ...).")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the rendered views, the training run and the ONNX model here [a temporary folder].")
@click.option("--pixel-mm", type=click.FloatRange(min=0.1, max=10.0),
              help="Pixel at the isocentre of the views [the starting model's].")
@click.option("--breathing-mm", type=click.FloatRange(0, 50), default=15.0, show_default=True,
              help="Diaphragm excursion, peak to peak.")
@click.option("--setup-mm", type=click.FloatRange(0, 30), default=5.0, show_default=True,
              help="Setup error (rms translation; held-out views: exactly this).")
@click.option("--setup-deg", type=click.FloatRange(0, 10), default=2.0, show_default=True,
              help="Setup rotation (rms; held-out views: exactly this).")
@click.option("--train-views", type=click.IntRange(min=1), help="Training views [from the budget].")
@click.option("--val-views", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--test-views", type=click.IntRange(min=1), default=16, show_default=True,
              help="Held-out views, scored before and after.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Fine-tuning learning rate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="Projector threads (0: all cores).")
@click.option("--progress/--no-progress", default=True, help="Progress bars on stderr (only on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def fit(ct: str | None, output: Path | None, jobs_file: Path | None, ray_address: str | None, cpus_per_fit: int,
        plan: Path | None, isocentres: tuple[str, ...], geometry_spec: str | None,
        sid: float | None, sdd: float | None, detector_mm: str | None, detector_px: str | None, angles: str | None,
        position: str | None, minutes: float, init: str, precision: str, sign_key: Path | None, report: Path | None,
        patient_id: str | None, work: Path | None, pixel_mm: float | None, breathing_mm: float, setup_mm: float,
        setup_deg: float, train_views: int | None, val_views: int, test_views: int, lr: float, seed: int,
        threads: int, progress: bool, as_json: bool) -> None:
    """Fit a model of one patient from the planning CT: DRRs of this patient at the treatment's kV angles,
    centred on the isocentre, with setup errors, breathing and the imaging chain; the default model fine-tuned on
    them within --minutes; held-out views scored before and after; the engine written with the patient's identity
    (docs/fit.md).

    CT: a DICOM series, a NIfTI, NRRD or MetaImage file, or a name of the CT catalogue (`example`,
    `pyradiomics-lung2`, ...). Many patients: --jobs FITS.toml, in turn or on Ray (--ray)."""
    from dexrt._errors import require_extra

    require_extra("synth", "`dexrt fit`", "nibabel", "xraydb", "spekpy", "scipy")
    require_extra("train", "`dexrt fit`", "torch", "safetensors", "dexrt_train")
    if precision == "int8":
        require_extra("quantize", "`dexrt fit --precision int8`", "nncf")
    from dexrt_train.fit import DexrtTrainer
    from dexrt.pipelines.fit.fit import FitOptions
    from dexrt.pipelines.fit.fit import fit as run_fit
    from dexrt.pipelines.fit.geometry import load_geometry, parse_pair, with_overrides

    geometry = with_overrides(
        load_geometry(geometry_spec), sid_mm=sid, sdd_mm=sdd,
        detector_mm=parse_pair(detector_mm, "--detector-mm") if detector_mm else None,
        detector_px=parse_pair(detector_px, "--detector-px", int) if detector_px else None)
    if jobs_file is None and (ct is None or output is None):
        raise click.UsageError("give CT and -o/--output, or --jobs FITS.toml")
    if jobs_file is not None and (ct is not None or output is not None):
        raise click.UsageError("--jobs takes the CTs and outputs from its file: give neither CT nor -o")
    if ray_address is not None and jobs_file is None:
        raise click.UsageError("--ray runs the fits of a --jobs file")
    # with --jobs, each job brings its CT and output (and may override the rest)
    opts = FitOptions(ct=ct or "", output=output or Path("jobs.dexrt"), plan=plan,
                      isocentres_lps=tuple(_point(p) for p in isocentres),
                      geometry=geometry, angles=angles, position=position, minutes=minutes, init=init,
                      precision=precision, sign_key=sign_key, report=report, patient_id=patient_id, work=work,
                      pixel_mm=pixel_mm, breathing_mm=breathing_mm, setup_mm=setup_mm, setup_deg=setup_deg,
                      train_views=train_views, val_views=val_views, test_views=test_views, lr=lr, seed=seed,
                      threads=threads, progress=progress and not as_json)
    if jobs_file is not None:
        from dexrt.pipelines.fit.cluster import fit_all, read_jobs

        results = fit_all(read_jobs(jobs_file, opts), DexrtTrainer, address=ray_address, cpus_per_fit=cpus_per_fit)
        if as_json:
            click.echo(json.dumps(results, indent=2))
        for r in results:
            if not r["ok"]:
                click.echo(f"{r['job']}: failed: {r['error']}", err=True)
                continue
            s, where = r["fit"]["scores"], f" on {r['worker']}" if "worker" in r else ""
            click.echo(f"{r['job']}: bone {s['before']['bone/psnr']:.2f} -> {s['after']['bone/psnr']:.2f} dB in "
                       f"{r['fit']['timings_s']['wall_s'] / 60:.1f} min{where}", err=as_json)
        if not all(r["ok"] for r in results):
            raise SystemExit(1)
        return
    result = run_fit(opts, DexrtTrainer())
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    f = result["fit"]
    s = f["scores"]
    click.echo(f"Wrote {output} (patient {result['patient']['patient_id'] or '-'}, {precision}"
               f"{', signed' if result['signed'] else ''}) in {f['timings_s']['wall_s'] / 60:.1f} min. Held-out "
               f"views ({s['views']}): bone {s['before']['bone/psnr']:.2f} -> {s['after']['bone/psnr']:.2f} dB, soft "
               f"{s['before']['soft/psnr']:.2f} -> {s['after']['soft/psnr']:.2f} dB, suppression "
               f"{s['before']['bone_suppression']:.3f} -> {s['after']['bone_suppression']:.3f}")
