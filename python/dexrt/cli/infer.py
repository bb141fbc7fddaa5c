"""`dexrt infer`: convert a folder of single-energy radiographs into bone and soft-tissue images."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click


@click.command()
@click.argument("source", metavar="FOLDER", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the outputs (created if needed).")
@click.option("--engine", "engine_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Engine bundle (.dexrt) from `dexrt build-engine`.")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout instead of text.")
def infer(source: Path, output: Path, engine_path: Path, device: str, as_json: bool) -> None:
    """Convert the PNG (16-bit) and TIFF images in FOLDER (or one image file).

    Each NAME.ext gives NAME_bone.ext and NAME_soft.ext in the output folder. A file that cannot be converted is
    reported and skipped; the exit code is 1 if any failed.
    """
    from tqdm import tqdm

    from dexrt.convert import convert_files, find_images
    from dexrt.engine import Engine

    sources = find_images(source)
    engine = Engine(engine_path, device=device)
    start = time.perf_counter()
    outcomes = []
    show_progress = sys.stderr.isatty() and not as_json
    with tqdm(total=len(sources), unit="image", disable=not show_progress, file=sys.stderr) as bar:
        for outcome in convert_files(engine, sources, output):
            outcomes.append(outcome)
            if not outcome.ok:
                tqdm.write(f"Error: {outcome.error}", file=sys.stderr)
            bar.update()
    elapsed = time.perf_counter() - start
    failed = [o for o in outcomes if not o.ok]
    if as_json:
        summary = {
            "engine": str(engine_path),
            "backend": engine.backend,
            "device": engine.device,
            "output": str(output),
            "converted": len(outcomes) - len(failed),
            "failed": len(failed),
            "seconds": round(elapsed, 3),
            "files": [
                {"source": str(o.source), "outputs": [str(p) for p in o.outputs], "error": o.error,
                 "seconds": round(o.seconds, 4)}
                for o in outcomes
            ],
        }
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(
            f"Converted {len(outcomes) - len(failed)} of {len(outcomes)} images"
            + (f" ({len(failed)} failed)" if failed else "")
            + f" in {elapsed:.1f} s with {engine_path.name} ({engine.backend} {engine.device}) -> {output}"
        )
    if failed:
        sys.exit(1)
