"""`dexrt build-engine`: ONNX generator -> self-describing engine bundle (.dexrt)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dexrt._errors import InputError


@click.command("build-engine")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The engine bundle to write (e.g. model.dexrt).")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="cpu: OpenVINO. gpu: TensorRT.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="cpu: fp32 (default), fp16 (FP16-compressed weights, half the size) or int8 (NNCF post-training "
                   "quantization; needs --calibration). gpu: fp16 (default) or fp32.")
@click.option("--calibration", type=click.Path(exists=True, path_type=Path), default=None,
              help="int8: SE images to calibrate on, a `dexrt synth` dataset (train split) or a folder of images, "
                   "at the resolution you deploy.")
@click.option("--calibration-images", type=click.IntRange(1, 100000), default=300, show_default=True,
              help="int8: at most this many calibration images, spread over the set.")
@click.option("--max-loss-db", default="0.3", show_default=True, metavar="DB|off",
              help="int8 calibrated on a `dexrt synth` dataset: PSNR each output may lose to INT8 against the "
                   "dataset's truth; layers go back to float, the one that helps most first, until it holds "
                   "(docs/model.md). "
                   "'off': plain post-training quantization.")
@click.option("--input-window", nargs=2, type=float, default=None, metavar="LO HI",
              help="Stored input values mapped to -1 and +1 (default: the model's metadata, else 0 65535).")
@click.option("--output-window", "output_windows", nargs=2, type=float, multiple=True, metavar="LO HI",
              help="Per output channel, in order (default: the model's metadata, else 0 65535 each).")
@click.option("--channels", default=None, help="Comma-separated output channel names (default: bone,soft).")
@click.option("--size-multiple", type=click.IntRange(1, 4096), default=None,
              help="Images are padded to a multiple of this (default: the model's metadata, else 256).")
@click.option("--sign", "sign_key", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="KEY",
              help="Sign the bundle's manifest with this Ed25519 private key (from `dexrt keygen`).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON on stdout.")
def build_engine(
    onnx_path: Path,
    output: Path,
    device: str,
    precision: str | None,
    calibration: Path | None,
    calibration_images: int,
    max_loss_db: str,
    input_window: tuple[float, float] | None,
    output_windows: tuple[tuple[float, float], ...],
    channels: str | None,
    size_multiple: int | None,
    sign_key: Path | None,
    as_json: bool,
) -> None:
    """Build an engine bundle from an ONNX generator (one input (N,1,H,W), one output (N,C,H,W), range [-1, 1])."""
    from dexrt.build.openvino import build_openvino, read_onnx_contract
    from dexrt.runtime.bundle import write_bundle

    budget = _loss_budget(max_loss_db)
    if precision == "int8" and (device != "cpu" or calibration is None):
        raise click.UsageError("--precision int8 is for --device cpu and needs --calibration DATASET_OR_FOLDER")
    if calibration is not None and precision != "int8":
        raise click.UsageError("--calibration is only used with --precision int8")
    if output.exists() and output.resolve() == onnx_path.resolve():
        raise InputError(f"{output}: refusing to overwrite the input model")
    if not output.parent.is_dir():
        raise InputError(f"{output.parent}: output folder does not exist")
    signing_key = None
    if sign_key is not None:  # a bad key is reported before minutes of building, not after
        from dexrt.runtime.signing import load_private_key

        signing_key = load_private_key(sign_key)
    contract = read_onnx_contract(
        onnx_path,
        input_window=input_window,
        output_windows=list(output_windows) or None,
        channels=[c.strip() for c in channels.split(",")] if channels else None,
        size_multiple=size_multiple,
    )
    if device == "gpu":
        from dexrt.build.tensorrt import build_tensorrt

        manifest, payload = build_tensorrt(contract, onnx_path, precision=precision or "fp16")
    elif precision == "int8":
        from dexrt.build.quantize import quantize_openvino

        assert calibration is not None  # checked with the options above
        manifest, payload = quantize_openvino(contract, onnx_path, calibration, images=calibration_images,
                                              max_loss_db=budget)
    else:
        manifest, payload = build_openvino(contract, onnx_path, precision=precision or "fp32")
    write_bundle(output, manifest, payload, signing_key=signing_key)
    size_mb = output.stat().st_size / 1e6
    if as_json:
        from dexrt.runtime.bundle import read_manifest

        click.echo(json.dumps(read_manifest(output), indent=2, sort_keys=True))
    else:
        from dexrt.runtime.signing import public_key_of

        click.echo(
            f"Wrote {output} ({manifest['backend']} {manifest['device']} {manifest['precision']}, {size_mb:.1f} MB; "
            f"outputs {', '.join(contract.channels)}; input window {list(contract.input_window)}; "
            f"size multiple {contract.size_multiple}"
            + (f"; signed by key {public_key_of(signing_key).key_id}" if signing_key is not None else "") + ")"
        )


def _loss_budget(text: str) -> float | None:
    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0.0:  # also refuses NaN
        raise click.BadParameter(f"expected dB >= 0 or 'off', got {text!r}", param_hint="--max-loss-db")
    return value
