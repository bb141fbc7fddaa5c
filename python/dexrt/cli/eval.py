"""`dexrt eval`: score an engine on a dataset split; prints a table (overall and per patient) and writes JSON and a
figure."""

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
@click.option("--full-resolution", is_flag=True,
              help="Score each view at its own size through the engine's full-resolution call (down to the model's "
                   "pixel spacing, the network, the outputs back up, as `dexrt infer` treats a detector frame); needs "
                   "the dataset's pixel spacing.")
@click.option("--upsampling", type=click.Choice(["guided", "bicubic"]), default="guided", show_default=True,
              help="With --full-resolution: how the outputs come back to the view's size.")
def eval_(dataset: Path, engine_path: Path | None, split: str, max_views: int, output: Path, as_json: bool,
          full_resolution: bool, upsampling: str) -> None:
    """Per-channel PSNR, SSIM, MAE, bone suppression and tumour CNR of an engine on DATASET's SPLIT."""
    from dexrt._atomic import atomic_write
    from dexrt.runtime.engine import Engine
    from dexrt.evaluation.evaluate import evaluate
    from dexrt.models import resolve_engine

    engine_path = resolve_engine(engine_path)
    with Engine(engine_path, upsampling=upsampling) as engine:  # the output folder is made only once the scores exist
        result = evaluate(engine, dataset, split=split, max_views=max_views, panel=output / "panel.png",
                          full_resolution=full_resolution)
    output.mkdir(parents=True, exist_ok=True)
    with atomic_write(output / "metrics.json") as f:
        f.write((json.dumps(result, indent=2) + "\n").encode())
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{engine_path.name} on {dataset} [{split}], {result['views']} views:")
    for key, value in result["metrics"].items():
        click.echo(f"  {key:28s} {value:10.4f}")
    click.echo(patient_table(result["patients"]))
    click.echo(f"Wrote {output / 'metrics.json'} and {output / 'panel.png'}", err=True)


_COLUMNS = (("bone/psnr", "bone PSNR"), ("bone/ssim", "bone SSIM"), ("soft/psnr", "soft PSNR"),
            ("soft/ssim", "soft SSIM"), ("bone_suppression", "suppression"))


def patient_table(patients: dict[str, dict]) -> str:
    """Per patient: views and the headline metrics, one row each (a plain-text table)."""
    width = max([len("patient"), len("  at train angles"), *(len(p) for p in patients)])
    lines = [f"  {'patient':{width}s} {'views':>6s} " + " ".join(f"{title:>11s}" for _, title in _COLUMNS)]
    for name, p in patients.items():
        rows = [(name, p)] + [(f"  at {s} angles", q) for s, q in p.get("by_angle_split", {}).items()]
        for label, q in rows:
            cells = " ".join(f"{q['metrics'].get(key, float('nan')):11.4f}" for key, _ in _COLUMNS)
            lines.append(f"  {label:{width}s} {q['views']:6d} {cells}")
    return "\n".join(lines)
