"""ONNX export of the generator: input ``se`` (N, 1, H, W) float32 -> output ``de`` (N, 2, H, W) float32.

N, H and W are dynamic (dimension names "N", "H", "W"); H and W must be multiples of ``size_multiple``
(``2**depth``), which the runtime pads to. The network is exported in eval mode (dropout off, BatchNorm running
statistics; see `dexrt_train.networks`). The TorchScript exporter (``dynamo=False``) is used: it keeps H and W
symbolic through the skip concatenations without needing onnxscript.

The model carries one ``metadata_props`` entry, key ``dexrt``, a JSON object that `dexrt build-engine` reads::

    {"format_version": 1,
     "input": {"name": "se", "window": [lo, hi]},
     "output": {"name": "de", "channels": ["bone", "soft"], "windows": [[lo, hi], [lo, hi]]},
     "size_multiple": 256, "model_hash": "sha256:<hex of model.safetensors>", "model": {generator config}}
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from dexrt._atomic import atomic_write
from dexrt._errors import ModelError
from dexrt_train.checkpoint import (
    DEFAULT_WINDOW,
    INPUT_NAME,
    OUTPUT_CHANNELS,
    OUTPUT_NAME,
    load_checkpoint,
    model_hash as hash_bytes,
    state_dict_bytes,
)
from dexrt_train.networks import GeneratorConfig

METADATA_KEY = "dexrt"
METADATA_VERSION = 1
DEFAULT_OPSET = 17


def onnx_metadata(config: GeneratorConfig, *, input_window: Sequence[float], output_windows: Sequence[Sequence[float]],
                  channels: Sequence[str], model_hash: str, pixel_spacing_mm: float | None = None) -> dict[str, Any]:
    meta = {
        "format_version": METADATA_VERSION,
        "input": {"name": INPUT_NAME, "window": [float(v) for v in input_window]},
        "output": {"name": OUTPUT_NAME, "channels": list(channels),
                   "windows": [[float(v) for v in w] for w in output_windows]},
        "size_multiple": config.size_multiple,
        "model_hash": model_hash,
        "model": asdict(config),
    }
    if pixel_spacing_mm is not None:
        if not pixel_spacing_mm > 0:
            raise ValueError(f"pixel spacing must be > 0 mm, got {pixel_spacing_mm}")
        meta["pixel_spacing_mm"] = float(pixel_spacing_mm)  # of the training images, at the patient
    return meta


def export_onnx(generator: nn.Module, config: GeneratorConfig, path: str | os.PathLike[str], *,
                input_window: Sequence[float] = DEFAULT_WINDOW,
                output_windows: Sequence[Sequence[float]] = (DEFAULT_WINDOW, DEFAULT_WINDOW),
                channels: Sequence[str] = OUTPUT_CHANNELS,
                model_hash: str | None = None, pixel_spacing_mm: float | None = None,
                opset: int = DEFAULT_OPSET) -> Path:
    """Export `generator` to `path` (written atomically) and return the path.

    `model_hash` defaults to the SHA-256 of the bytes `save_checkpoint` would write as model.safetensors.
    The generator's train/eval mode is restored afterwards.
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    if len(output_windows) != config.out_channels or len(channels) != config.out_channels:
        raise ValueError(f"need {config.out_channels} output windows and channel names, got "
                         f"{len(output_windows)} and {len(channels)}")
    if model_hash is None:
        model_hash = hash_bytes(state_dict_bytes(generator))
    meta = onnx_metadata(config, input_window=input_window, output_windows=output_windows, channels=channels,
                         model_hash=model_hash, pixel_spacing_mm=pixel_spacing_mm)

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
                generator, (example,), buf, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "N", 2: "H", 3: "W"}, OUTPUT_NAME: {0: "N", 2: "H", 3: "W"}},
                do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL,
            )
    finally:
        generator.train(was_training)

    model = onnx.load_from_string(buf.getvalue())
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)
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
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise ModelError(f"ONNX model has no {METADATA_KEY!r} metadata; export it with `dexrt export`")


def export_checkpoint(checkpoint: str | os.PathLike[str], path: str | os.PathLike[str], *,
                      opset: int = DEFAULT_OPSET, pixel_spacing_mm: float | None = None) -> dict[str, Any]:
    """Export a checkpoint folder's generator to ONNX; returns the metadata written.

    ``pixel_spacing_mm`` (of the training images) defaults to the one the checkpoint recorded, if any.
    """
    ckpt = load_checkpoint(checkpoint)
    spacing = pixel_spacing_mm if pixel_spacing_mm is not None else ckpt.raw_config.get("pixel_spacing_mm")
    export_onnx(ckpt.generator, ckpt.config, path, input_window=ckpt.windows.input,
                output_windows=ckpt.windows.outputs, channels=ckpt.windows.channels,
                model_hash=ckpt.model_hash, pixel_spacing_mm=spacing, opset=opset)
    return read_metadata(path)
