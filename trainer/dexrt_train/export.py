"""ONNX export of the generator: input ``se`` (N, 1, H, W) float32 -> output ``de`` (N, 2, H, W) float32.

N, H and W are dynamic (dimension names "N", "H", "W"); H and W must be multiples of ``size_multiple``
(``2**depth``), which the runtime pads to. The network is exported in eval mode (dropout off, BatchNorm running
statistics; see `dexrt_train.networks`). The TorchScript exporter (``dynamo=False``) is used: it keeps H and W
symbolic through the skip concatenations without needing onnxscript.

The model carries one ``metadata_props`` entry, key ``dexrt``, a JSON object that `dexrt build-engine` reads::

    {"format_version": 1,
     "input": {"name": "se", "window": [lo, hi]},
     "output": {"name": "de", "channels": ["bone", "soft"], "windows": [[lo, hi], [lo, hi]]},
     "size_multiple": 256, "model_hash": "sha256:<hex of model.safetensors>", "model": {generator config},
     "flip_average": true}

``flip_average`` (optional, `dexrt export --flip-average`) marks a graph that runs the generator on the image and
on its mirror image (one pass of batch 2N) and returns the mean of the two outputs, the second mirrored back:
test-time averaging over the left-right flip the network was trained with. It doubles the network's work.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from dexrt._atomic import atomic_write
from dexrt._errors import ModelError
from dexrt.runtime.contract import (
    INPUT_NAME,
    ONNX_METADATA_KEY,
    ONNX_METADATA_VERSION,
    OUTPUT_CHANNELS,
    OUTPUT_NAME,
    Encoding,
    read_onnx_metadata,
    write_onnx_metadata,
)
from dexrt.runtime.pixel_spacing import check_option
from dexrt_train.checkpoint import (
    DEFAULT_WINDOW,
    load_checkpoint,
    state_dict_bytes,
)
from dexrt_train.checkpoint import (
    model_hash as hash_bytes,
)
from dexrt_train.networks import GeneratorConfig

METADATA_KEY, METADATA_VERSION = ONNX_METADATA_KEY, ONNX_METADATA_VERSION
DEFAULT_OPSET = 17


class FlipAverage(nn.Module):
    """(N, C, H, W) -> mean of G(x) and G(x mirrored left-right) mirrored back, as one generator pass of batch 2N."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = self.generator(torch.cat([x, x.flip(3)], dim=0)).unflatten(0, (2, -1))  # (2, N, C_out, H, W)
        return (both[0] + both[1].flip(3)) * 0.5


def onnx_metadata(config: GeneratorConfig, *, input_window: Sequence[float], output_windows: Sequence[Sequence[float]],
                  channels: Sequence[str], model_hash: str, pixel_spacing_mm: float | None = None,
                  encodings: Sequence[Encoding] | None = None,
                  normalisation: dict[str, Any] | None = None, flip_average: bool = False) -> dict[str, Any]:
    meta = {
        "format_version": METADATA_VERSION,
        "input": {"name": INPUT_NAME, "window": [float(v) for v in input_window]},
        "output": {"name": OUTPUT_NAME, "channels": list(channels),
                   "windows": [[float(v) for v in w] for w in output_windows]},
        "size_multiple": config.size_multiple,
        "model_hash": model_hash,
        "model": asdict(config),
    }
    if encodings is not None:  # what stored values mean: input first, then each output channel
        meta["input"].update(quantity="se", encoding=encodings[0].as_manifest())
        meta["output"]["encodings"] = [e.as_manifest() for e in encodings[1:]]
    # scale-free input: each image mapped by its own robust range (dexrt.runtime.contract)
    if normalisation is not None:
        meta["input"].update(quantity="se", normalisation=normalisation)
    if pixel_spacing_mm is not None:
        check_option("pixel spacing", pixel_spacing_mm)
        meta["pixel_spacing_mm"] = float(pixel_spacing_mm)  # of the training images, at the patient
    if flip_average:
        meta["flip_average"] = True
    return meta


def export_onnx(generator: nn.Module, config: GeneratorConfig, path: str | os.PathLike[str], *,
                input_window: Sequence[float] = DEFAULT_WINDOW,
                output_windows: Sequence[Sequence[float]] = (DEFAULT_WINDOW, DEFAULT_WINDOW),
                channels: Sequence[str] = OUTPUT_CHANNELS,
                model_hash: str | None = None, pixel_spacing_mm: float | None = None,
                encodings: Sequence[Encoding] | None = None, normalisation: dict[str, Any] | None = None,
                opset: int = DEFAULT_OPSET, flip_average: bool = False) -> Path:
    """Export `generator` to `path` (written atomically) and return the path.

    `model_hash` defaults to the SHA-256 of the bytes `save_checkpoint` would write as model.safetensors.
    `flip_average` exports the mean over the left-right flip (`FlipAverage`). The generator's train/eval mode
    is restored afterwards.
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    if len(output_windows) != config.out_channels or len(channels) != config.out_channels:
        raise ValueError(f"need {config.out_channels} output windows and channel names, got "
                         f"{len(output_windows)} and {len(channels)}")
    if model_hash is None:
        model_hash = hash_bytes(state_dict_bytes(generator))
    meta = onnx_metadata(config, input_window=input_window, output_windows=output_windows, channels=channels,
                         model_hash=model_hash, pixel_spacing_mm=pixel_spacing_mm, encodings=encodings,
                         normalisation=normalisation, flip_average=flip_average)

    was_training = generator.training
    device = next(generator.parameters()).device
    generator.eval()
    s = config.size_multiple
    example = torch.zeros(1, config.in_channels, s, s, device=device)  # (N, 1, H, W)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # the TorchScript exporter announces its deprecation; the dynamo one needs onnxscript
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                FlipAverage(generator) if flip_average else generator, (example,), buf, dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "N", 2: "H", 3: "W"}, OUTPUT_NAME: {0: "N", 2: "H", 3: "W"}},
                do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL,
            )
    finally:
        generator.train(was_training)

    model = onnx.load_from_string(buf.getvalue())
    write_onnx_metadata(model, meta)
    model.producer_name = "dexrt"
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(model.SerializeToString())
    return path


def read_metadata(model: onnx.ModelProto | str | os.PathLike[str]) -> dict[str, Any]:
    """The ``dexrt`` metadata of an exported model."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    meta = read_onnx_metadata(model)
    if meta is not None:
        return meta
    raise ModelError(f"ONNX model has no {METADATA_KEY!r} metadata; export it with `dexrt export`")


def export_checkpoint(checkpoint: str | os.PathLike[str], path: str | os.PathLike[str], *,
                      opset: int = DEFAULT_OPSET, pixel_spacing_mm: float | None = None,
                      flip_average: bool = False) -> dict[str, Any]:
    """Export a checkpoint folder's generator to ONNX; returns the metadata written.

    ``pixel_spacing_mm`` (of the training images) defaults to the one the checkpoint recorded, if any.
    """
    ckpt = load_checkpoint(checkpoint)
    spacing = pixel_spacing_mm if pixel_spacing_mm is not None else ckpt.raw_config.get("pixel_spacing_mm")
    input_window, output_windows = ckpt.windows.input, ckpt.windows.outputs
    encodings = None
    normalisation = ckpt.raw_config.get("normalisation")
    storage = ckpt.raw_config.get("storage")
    if storage:  # physical windows -> the stored values of each quantity's recorded encoding
        try:
            encodings = [Encoding.from_manifest(storage[c]) for c in ("se", *ckpt.windows.channels)]
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{checkpoint}: invalid 'storage' encodings ({exc})") from None
        input_window = _stored_window(input_window, encodings[0])
        output_windows = tuple(_stored_window(w, e) for w, e in zip(output_windows, encodings[1:]))
    export_onnx(ckpt.generator, ckpt.config, path, input_window=input_window,
                output_windows=output_windows, channels=ckpt.windows.channels, encodings=encodings,
                normalisation=normalisation, model_hash=ckpt.model_hash, pixel_spacing_mm=spacing, opset=opset,
                flip_average=flip_average)
    return read_metadata(path)


def _stored_window(window: Sequence[float], encoding: Encoding) -> tuple[float, float]:
    lo, hi = (float(v) for v in encoding.stored_float(np.asarray(window, np.float64)))
    return (lo, hi)
