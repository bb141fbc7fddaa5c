"""`dexrt export CHECKPOINT -o model.onnx`: a trained generator as ONNX with dexrt's metadata."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dexrt._errors import require_extra


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="ONNX file to write (replaced atomically).")
@click.option("--opset", type=click.IntRange(min=17), default=17, show_default=True, help="ONNX opset.")
@click.option("--pixel-spacing", "pixel_spacing", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Pixel spacing of the training images at the patient, mm (default: what the checkpoint records; "
                   "`dexrt train` records a `dexrt synth` dataset's).")
@click.option("--flip-average", is_flag=True,
              help="Return the mean of the outputs for the image and its left-right mirror image (twice the "
                   "network's work; docs/model.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the written metadata as JSON on stdout.")
def export(checkpoint: Path, output: Path, opset: int, pixel_spacing: float | None, flip_average: bool,
           as_json: bool) -> None:
    """Export the generator of a CHECKPOINT folder (config.json + model.safetensors) to ONNX.

    The model takes `se` (N, 1, H, W) float32 and returns `de` (N, 2, H, W) float32 (bone, soft) in the
    network's [-1, 1] range, with N, H, W dynamic; H and W must be multiples of its size_multiple.
    """
    require_extra("train", "`dexrt export`", "torch", "safetensors", "dexrt_train")
    from dexrt_train.export import export_checkpoint

    meta = export_checkpoint(checkpoint, output, opset=opset, pixel_spacing_mm=pixel_spacing,
                             flip_average=flip_average)
    if as_json:
        click.echo(json.dumps({"path": str(output), "metadata": meta}, indent=2, sort_keys=True))
    else:
        click.echo(f"{output}  ({meta['model_hash']}, H and W multiples of {meta['size_multiple']})")
