"""`dexrt eval`: score an engine on a dataset split; prints a table and writes JSON and a figure."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("eval")
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--engine", "engine_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Engine bundle (default: dexrt's bundled model).")
@click.option("--split", default="test", show_default=True, help="Dataset split to score.")
@click.option("--max-views", type=click.IntRange(0), default=0, help="Score only the first N views (0: all).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("dexrt-eval"),
              show_default=True, help="Folder for metrics.json and panel.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout.")
def eval_(dataset: Path, engine_path: Path | None, split: str, max_views: int, output: Path, as_json: bool) -> None:
    """Per-channel PSNR, SSIM, MAE, bone suppression and tumour CNR of an engine on DATASET's SPLIT."""
    from dexrt._atomic import atomic_write
    from dexrt.runtime.engine import Engine
    from dexrt.evaluation.evaluate import evaluate
    from dexrt.models import resolve_engine

    engine_path = resolve_engine(engine_path)
    with Engine(engine_path) as engine:  # the output folder is made only once the scores exist
        result = evaluate(engine, dataset, split=split, max_views=max_views, panel=output / "panel.png")
    output.mkdir(parents=True, exist_ok=True)
    with atomic_write(output / "metrics.json") as f:
        f.write((json.dumps(result, indent=2) + "\n").encode())
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{engine_path.name} on {dataset} [{split}], {result['views']} views:")
    for key, value in result["metrics"].items():
        click.echo(f"  {key:28s} {value:10.4f}")
    click.echo(f"Wrote {output / 'metrics.json'} and {output / 'panel.png'}", err=True)
