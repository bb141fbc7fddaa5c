"""INT8 CPU engines: OpenVINO IR quantized after training by NNCF (`dexrt build-engine --precision int8`).

NNCF's post-training quantization inserts FakeQuantize nodes on weights and activations; their ranges come from
running the FP32 model over a calibration set. The calibration images go through the exact pre-processing the
runtime uses (dexrt's C++ value contract and mirror padding), so the ranges are those the engine will see.
Calibrate at the resolution you deploy: activation ranges of a fully convolutional U-Net shift with image size.

On CPUs without VNNI/AMX the gain is modest (large ConvTranspose layers stay FP32); docs/model.md has figures.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from dexrt._errors import InputError, require_extra

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 300  # NNCF's default subset size


def calibration_files(source: str | os.PathLike[str], limit: int = DEFAULT_CALIBRATION_IMAGES) -> list[Path]:
    """SE images to calibrate on: a `dexrt synth` dataset (its train split's SE images) or a folder of images.

    At most ``limit`` files, spread evenly over the sorted list so every gantry range is represented.
    """
    from dexrt.layout import find_images
    from dexrt.dataset import is_dataset, open_dataset

    source = Path(source)
    if is_dataset(source):
        files = [v.files["se"] for v in open_dataset(source).split("train")]
        if not files:
            raise InputError(f"{source}: the dataset has no train views to calibrate on")
    else:
        files = find_images(source)
    if limit < 1:
        raise ValueError(f"the calibration set needs at least one image, got a limit of {limit}")
    if len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    return files


def calibration_inputs(files: list[Path], input_window: tuple[float, float], size_multiple: int, *,
                       normalised: bool = False) -> list[np.ndarray]:
    """Each file as the (1, 1, Hp, Wp) float32 network input the runtime would feed (normalised first for an
    engine that records the robust normalisation, as `dexrt.Engine` does)."""
    from dexrt import _core
    from dexrt.contract import normalise
    from dexrt.images import read_radiograph

    inputs = []
    for path in files:
        frames = read_radiograph(path).frames  # (F, H, W)
        for frame in frames:
            image = normalise(frame)[0] if normalised else frame
            inputs.append(_core.prepost.preprocess(image[np.newaxis], input_window, size_multiple))
    shapes = {x.shape for x in inputs}
    if len(shapes) > 1:
        log.warning("calibration images have %d different padded shapes %s; the ranges mix resolutions",
                    len(shapes), sorted(shapes))
    return inputs


def _compiled(model: Any, shape: tuple[int, ...]) -> Any:
    import openvino as ov

    fixed = model.clone()
    fixed.reshape(list(shape))
    return ov.Core().compile_model(fixed, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})  # as the runtime compiles


def quality_vs_fp32(fp32: Any, int8: Any, inputs: list[np.ndarray], channels: tuple[str, ...]) -> dict[str, Any]:
    """PSNR of the INT8 model's outputs against the FP32 model's, per channel, in the network range [-1, 1]
    (data range 2), over ``inputs`` (images not used for calibration)."""
    from dexrt.metrics import psnr

    want, got = [], []
    for x in inputs:
        want.append(_compiled(fp32, x.shape)(x)[0])  # (1, C, Hp, Wp)
        got.append(_compiled(int8, x.shape)(x)[0])
    a, b = np.concatenate(want), np.concatenate(got)
    return {"psnr_db": {c: round(psnr(b[:, i], a[:, i], data_range=2.0), 2) for i, c in enumerate(channels)},
            "images": len(inputs), "range": "network values [-1, 1], data range 2"}


def int8_layers(model: Any, shape: tuple[int, ...]) -> dict[str, int]:
    """How many convolutions the CPU plugin runs in 8 bits, read from the compiled model's runtime information
    (which depends on the CPU: without VNNI/AMX, transposed convolutions may stay in f32)."""
    counts = {"convolutions": 0, "int8": 0}
    for op in _compiled(model, shape).get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in ("Convolution", "Deconvolution"):
            counts["convolutions"] += 1
            counts["int8"] += info["runtimePrecision"].astype(str) in ("i8", "u8")
    return counts


def quantize_openvino(contract: Any, onnx_path: str | os.PathLike[str], calibration: str | os.PathLike[str], *,
                      images: int = DEFAULT_CALIBRATION_IMAGES) -> tuple[dict[str, Any], dict[str, bytes]]:
    """ONNX generator -> INT8 OpenVINO IR calibrated on ``calibration``; returns (manifest, payload)."""
    require_extra("quantize", "INT8 engines", "nncf")
    import nncf
    import openvino as ov

    from dexrt.build import contract_manifest, convert_onnx, ir_payload, smoke_test

    files = calibration_files(calibration, images)
    inputs = calibration_inputs(files, contract.input_window, contract.size_multiple,
                                normalised=contract.normalisation is not None)
    # Every fifth image is held out to measure the INT8 engine against FP32 (all of them when there are few).
    held_out = inputs[::5] if len(inputs) >= 10 else inputs
    calibrate = [x for i, x in enumerate(inputs) if i % 5] if len(inputs) >= 10 else inputs
    model = convert_onnx(onnx_path)
    log.info("calibrating on %d images from %s", len(calibrate), calibration)
    # Fast bias correction keeps the per-channel means of the FP32 model; the performance preset quantizes
    # activations symmetrically (the CPU's fastest INT8 kernels).
    quantized = nncf.quantize(model, nncf.Dataset(calibrate), preset=nncf.QuantizationPreset.PERFORMANCE,
                              subset_size=len(calibrate), fast_bias_correction=True)
    payload = ir_payload(quantized, compress_to_fp16=False)
    manifest = contract_manifest(contract, onnx_path)
    manifest.update(backend="openvino", device="cpu", precision="int8")
    manifest["libraries"]["openvino"] = ov.get_version().split("-")[0]
    manifest["libraries"]["nncf"] = nncf.__version__
    manifest["quantization"] = {
        "method": "NNCF post-training quantization (min-max ranges, performance preset, fast bias correction)",
        "calibration_source": str(calibration),
        "calibration_images": len(calibrate),
        "calibration_shapes": [list(s) for s in sorted({tuple(int(v) for v in x.shape[2:]) for x in inputs})],
        "vs_fp32": quality_vs_fp32(model, quantized, held_out, contract.channels),
        "layers": int8_layers(quantized, held_out[0].shape),
    }
    smoke_test(manifest, payload, onnx_path)
    return manifest, payload
