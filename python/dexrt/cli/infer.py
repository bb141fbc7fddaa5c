"""`dexrt infer`: convert radiographs (DICOM, PNG, TIFF) into bone and soft-tissue images."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import click

if TYPE_CHECKING:
    from dexrt.pipelines.convert import ConvertOptions


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the run shuts down like on Ctrl-C (no partial files)."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _spacing_option(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    from dexrt.runtime.pixel_spacing import check_option

    try:
        check_option(f"--{param.name.replace('_', '-')}" if param.name != "old_spacing" else "--spacing", value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


@click.command()
@click.argument("source", metavar="SOURCE", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the outputs (created if needed; subfolders mirror SOURCE's).")
@click.option("--engine", "engine_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Engine bundle (.dexrt) from `dexrt build-engine` (default: dexrt's bundled model).")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True)
@click.option("-r", "--recursive", is_flag=True, help="Also convert the images in SOURCE's subfolders.")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only files matching GLOB (a name, or a path relative to SOURCE if it has a '/'). Repeatable.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching GLOB. Repeatable.")
@click.option("--overwrite", is_flag=True, help="Convert again files whose outputs exist (default: skip them).")
@click.option("--input-spacing", type=float, metavar="MM", callback=_spacing_option,
              help="Pixel spacing (mm, at the patient) of inputs whose files give none: PNG, TIFF, DICOM without a "
                   "usable spacing (default: estimated, and reported).")
@click.option("--model-spacing", type=float, metavar="MM", callback=_spacing_option,
              help="The MODEL's training pixel spacing in mm that images are resampled to (default: from the "
                   "engine, if recorded).")
@click.option("--spacing", "old_spacing", type=float, metavar="MM", hidden=True, callback=_spacing_option,
              help="Deprecated: --model-spacing.")
@click.option("--no-resample", is_flag=True, help="Never resample to the training pixel spacing.")
@click.option("--strict", is_flag=True,
              help="Refuse inputs that do not look like frontal chest radiographs, and, with a patient engine "
                   "(`dexrt fit`), inputs not shown to be its patient (default: convert with a warning).")
@click.option("--preview", is_flag=True, help="Also write NAME_preview.png (SE | bone | soft, 8-bit).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=16, show_default=True,
              help="Files in flight at once (decoding, waiting for the engine, writing).")
@click.option("--require-signed", is_flag=True,
              help="Refuse an engine not signed by a trusted key (the project's key, or those in the files named "
                   "by DEXRT_TRUSTED_KEYS; see docs/runtime.md).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout instead of text.")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Convert on a Ray cluster: 'auto' (the cluster this machine belongs to), 'local' (a Ray "
                   "instance started here for this run), HOST:PORT or ray://HOST:10001. SOURCE, OUTPUT and the "
                   "engine must be on a filesystem every node sees. Needs `pip install 'dexrt[ray]'`.")
@click.option("--ray-actors", type=click.IntRange(min=1), metavar="N",
              help="Engines (Ray actors) in the pool (default: one per CPU, or per GPU for a GPU engine).")
def infer(source: Path, output: Path, engine_path: Path, device: str, recursive: bool, include: tuple[str, ...],
          exclude: tuple[str, ...], overwrite: bool, input_spacing: float | None, model_spacing: float | None,
          old_spacing: float | None, no_resample: bool, strict: bool, preview: bool, jobs: int, require_signed: bool,
          as_json: bool, ray_address: str | None, ray_actors: int | None) -> None:
    """Convert the DICOM, PNG (8/16-bit) and TIFF radiographs in SOURCE (a folder or one file).

    Each NAME.ext gives NAME_bone.ext and NAME_soft.ext in the output folder, in the input's format, value
    convention and size. Files whose outputs already exist are skipped, so an interrupted run can simply be
    run again. A file that cannot be converted is reported and the others go on; the exit code is 1 if any
    failed. With --ray the files are converted by a pool of engines on a Ray cluster (docs/distributed.md).

    Each image is resampled to the model's pixel spacing. An input's own spacing comes from its DICOM header,
    else --input-spacing, else an estimate; every assumption is reported (stderr and --json). Inputs that do not
    look like frontal chest radiographs are converted with a warning, or refused with --strict (docs/infer.md).
    """
    from dexrt.runtime.bundle import read_manifest
    from dexrt.io.layout import find_images
    from dexrt.models import DEFAULT_ENGINE, resolve_engine

    from dexrt.pipelines.convert import ConvertOptions, deprecated_spacing

    try:
        model_spacing, warning = deprecated_spacing(model_spacing, old_spacing, names=("--model-spacing", "--spacing"),
                                                    input_name="--input-spacing")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if warning:
        click.echo(f"Warning: {warning}", err=True)
    if model_spacing is not None and no_resample:
        raise click.UsageError("--model-spacing and --no-resample contradict each other; give one")
    if ray_actors is not None and ray_address is None:
        raise click.UsageError("--ray-actors needs --ray ADDRESS")
    given_engine = engine_path
    engine_path = resolve_engine(engine_path)
    if not as_json:
        which = "the bundled default model" if engine_path == DEFAULT_ENGINE else "engine"
        click.echo(f"Using {which} {engine_path}" + (f" on Ray ({ray_address})" if ray_address else ""), err=True)
    root = source if source.is_dir() else source.parent
    channels = read_manifest(engine_path)["output"]["channels"]  # checked; names the outputs not to take as inputs
    sources = find_images(source, recursive=recursive, include=include, exclude=exclude, skip=output,
                          channels=channels)
    options = ConvertOptions(root=root, overwrite=overwrite, resample=not no_resample, model_spacing_mm=model_spacing,
                             input_spacing_mm=input_spacing, strict=strict, preview=preview, jobs=jobs)
    show_progress = sys.stderr.isatty() and not as_json
    if ray_address is None:
        run = _run(sources, engine_path, device, output, options, show_progress=show_progress, note=not no_resample,
                   require_signed=require_signed)
    else:
        run = _run_ray(sources, given_engine, device, output, options, address=ray_address, actors=ray_actors,
                       show_progress=show_progress, note=not no_resample, require_signed=require_signed)
    outcomes = run["outcomes"]
    counts = {status: sum(o.status == status for o in outcomes) for status in ("converted", "skipped", "failed")}
    warned = sum(bool(o.warnings) for o in outcomes)
    if as_json:
        summary = {
            "engine": str(engine_path),
            "backend": run["backend"],
            "device": run["device"],
            "output": str(output),
            "files_found": len(sources),
            **counts,
            **({"ray": run["ray"]} if "ray" in run else {}),
            "interrupted": run["interrupted"] is not None,
            "seconds": round(run["seconds"], 3),
            "resampling": run["resampling"],
            "model_spacing_mm": run["model_spacing_mm"],
            "warned": warned,
            "files": [
                {"source": str(o.source), "status": o.status, "outputs": [str(p) for p in o.outputs],
                 "error": o.error, "frames": o.frames, "seconds": round(o.seconds, 4), "geometry": o.geometry,
                 "spacing": (o.geometry or {}).get("input_spacing"), "domain": o.domain, "warnings": o.warnings}
                for o in outcomes
            ],
        }
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(
            f"Converted {counts['converted']} of {len(sources)} images"
            + (f" ({counts['failed']} failed)" if counts["failed"] else "")
            + (f", skipped {counts['skipped']} already converted" if counts["skipped"] else "")
            + (f", {warned} with warnings" if warned else "")
            + f" in {run['seconds']:.1f} s with {engine_path.name} ({run['backend']} {run['device']}"
            + (f", {run['ray']['actors']} Ray actors" if "ray" in run else "") + f") -> {output}"
        )
    if run["interrupted"] is not None:
        left = len(sources) - len(outcomes)
        # Ray reports files a batch at a time: some of those not reported may be written already.
        unreported = "not confirmed converted" if "ray" in run else "not converted"
        click.echo(f"Interrupted: {left} of {len(sources)} files {unreported}; run the same command again to "
                   "finish them.", err=True)
        sys.exit(run["interrupted"])
    if counts["failed"]:
        sys.exit(1)


def _run(sources: list[Path], engine_path: Path, device: str, output: Path, options: ConvertOptions, *,
         show_progress: bool, note: bool, require_signed: bool) -> dict[str, Any]:
    """Convert `sources` in this process; returns plain results (outcomes in input order, engine facts, timing,
    interruption).

    The engine lives only inside this function, so it is released before the command exits, whatever holds on
    to the command's frames afterwards (a traceback, a test runner).
    """
    from dexrt.pipelines.convert import FOLDER_ENGINE_OPTIONS, Converter
    from dexrt.runtime.engine import Engine

    engine = Engine(engine_path, device=device, require_signed=require_signed, **FOLDER_ENGINE_OPTIONS)
    try:
        converter = Converter(engine, output, options)
        if converter.model_spacing_mm is None and note:
            click.echo(f"Note: {converter.resampling_note}", err=True)
        run = _drive(lambda: closing(converter.run(sources)), sources, show_progress)
    finally:
        engine.close(cancel=True)
    return {**run, "backend": engine.backend, "device": engine.device, "resampling": converter.resampling_note,
            "model_spacing_mm": converter.model_spacing_mm}


def _run_ray(sources: list[Path], engine_path: Path | None, device: str, output: Path, options: ConvertOptions, *,
             address: str, actors: int | None, show_progress: bool, note: bool, require_signed: bool
             ) -> dict[str, Any]:
    """Convert `sources` on a Ray cluster (dexrt.pipelines.distributed); the same results as `_run`, plus the pool's."""
    from dexrt.pipelines.distributed import RayConverter, import_ray

    import_ray()  # a missing extra is reported before anything starts
    if logging.getLogger().getEffectiveLevel() > logging.INFO:  # without -v, Ray Data's execution log is noise
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    converter = RayConverter(output, engine=engine_path, device=device, address=address, actors=actors,
                             require_signed=require_signed, options=options)
    if converter.model_spacing_mm is None and note:
        click.echo(f"Note: {converter.resampling_note}", err=True)
    run = _drive(lambda: closing(converter.run(sources)), sources, show_progress)
    return {**run, "backend": converter.backend, "device": converter.engine_device,
            "resampling": converter.resampling_note, "model_spacing_mm": converter.model_spacing_mm,
            "ray": {"address": address, "actors": converter.actors_used, "workers": len(converter.workers)}}


def _drive(open_run: Any, sources: list[Path], show_progress: bool) -> dict[str, Any]:
    """Consume a converter's outcomes with a progress bar and errors on stderr; Ctrl-C and SIGTERM end the run
    cleanly. Returns the outcomes in input order, the time taken and the exit code of an interruption."""
    from tqdm import tqdm

    order = {path: i for i, path in enumerate(sources)}
    outcomes = []
    start = time.perf_counter()
    interrupted: int | None = None  # the exit code; not the exception, whose traceback would keep the engine
    with _sigterm_raises(), tqdm(total=len(sources), unit="file", disable=not show_progress, file=sys.stderr) as bar:
        try:
            with open_run() as results:  # closing(): an interrupt stops the workers
                for outcome in results:  # as files finish
                    outcomes.append(outcome)
                    for warning in outcome.warnings:
                        tqdm.write(f"Warning: {warning}", file=sys.stderr)
                    if not outcome.ok:
                        tqdm.write(f"Error: {outcome.error}", file=sys.stderr)
                    bar.update()
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the run has stopped cleanly, nothing partial
            interrupted = 143 if isinstance(exc, Terminated) else 130
    outcomes.sort(key=lambda o: order[o.source])
    return {"outcomes": outcomes, "seconds": time.perf_counter() - start, "interrupted": interrupted}
