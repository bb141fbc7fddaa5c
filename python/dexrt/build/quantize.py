"""INT8 CPU engines: OpenVINO IR quantized after training by NNCF (`dexrt build-engine --precision int8`).

NNCF's post-training quantization inserts FakeQuantize nodes on weights and activations; their ranges come from
running the FP32 model over a calibration set. The calibration images go through the exact pre-processing the
runtime uses (dexrt's C++ value contract and mirror padding), so the ranges are those the engine will see.
Calibrate at the resolution you deploy: activation ranges of a fully convolutional U-Net shift with image size.

On CPUs without VNNI/AMX the gain is modest (large ConvTranspose layers stay FP32); docs/model.md has figures.

**Accuracy control.** Calibrated on a `dexrt synth` dataset, the build also knows the true outputs of held-out
views, so it can measure what INT8 costs: per channel, the mean over those views of ``10 log10(MSE_int8 /
MSE_fp32)`` against the truth, in dB of PSNR (as `dexrt eval` averages PSNR over views). When the worst channel
loses more than ``max_loss_db``, parts of the network go back to floating point (a convolution, or the quantized
input of another op), greedily, the one that helps most first, until the loss is within budget: a mixed-precision
engine chosen by measurement. A folder of plain images has no truth to measure against; it gets plain PTQ.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dexrt._errors import InputError, require_extra

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 300  # NNCF's default subset size
MAX_LOSS_DB = 0.3  # default budget: PSNR a channel may lose to INT8 against the truth


def calibration_files(source: str | os.PathLike[str], limit: int = DEFAULT_CALIBRATION_IMAGES) -> list[Path]:
    """SE images to calibrate on: a `dexrt synth` dataset (its train split's SE images) or a folder of images.

    At most ``limit`` files, spread evenly over the sorted list so every gantry range is represented.
    """
    from dexrt.io.dataset import is_dataset
    from dexrt.io.layout import find_images

    source = Path(source)
    if is_dataset(source):
        return [v.files["se"] for v in calibration_views(source, limit)]
    return _spread(find_images(source), limit)


def calibration_views(dataset: str | os.PathLike[str], limit: int = DEFAULT_CALIBRATION_IMAGES) -> list[Any]:
    """The train views of a dataset that `calibration_files` takes."""
    from dexrt.io.dataset import open_dataset

    views = open_dataset(dataset).split("train")
    if not views:
        raise InputError(f"{dataset}: the dataset has no train views to calibrate on")
    return _spread(views, limit)


def _spread(items: list[Any], limit: int) -> list[Any]:
    if limit < 1:
        raise ValueError(f"the calibration set needs at least one image, got a limit of {limit}")
    if len(items) > limit:
        items = [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]
    return items


def network_input(image: np.ndarray, contract: Any) -> np.ndarray:
    """One (H, W) SE image as the (1, 1, Hp, Wp) float32 network input the runtime would feed (normalised first
    for an engine that records the robust normalisation, as `dexrt.Engine` does)."""
    from dexrt import _core
    from dexrt.runtime.contract import normalise

    if contract.normalisation is not None:
        image = normalise(image)[0]
    return _core.prepost.preprocess(np.asarray(image)[np.newaxis], contract.input_window, contract.size_multiple)


def calibration_inputs(files: list[Path], contract: Any) -> list[np.ndarray]:
    """Every frame of `files` as a network input (`network_input`)."""
    from dexrt.io.images import read_radiograph

    inputs = [network_input(frame, contract) for path in files for frame in read_radiograph(path).frames]
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


def _outputs(model: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """`model` run on each input, (C, Hp, Wp) each; compiled once per input shape."""
    compiled: dict[tuple[int, ...], Any] = {}
    out = []
    for x in inputs:
        if x.shape not in compiled:
            compiled[x.shape] = _compiled(model, x.shape)
        out.append(compiled[x.shape](x)[0][0])
    return out


def quality_vs_fp32(fp32: Any, int8: Any, inputs: list[np.ndarray], channels: tuple[str, ...]) -> dict[str, Any]:
    """PSNR of the INT8 model's outputs against the FP32 model's, per channel, in the network range [-1, 1]
    (data range 2), over ``inputs`` (images not used for calibration)."""
    from dexrt.evaluation.metrics import psnr

    a, b = np.stack(_outputs(fp32, inputs)), np.stack(_outputs(int8, inputs))  # (N, C, Hp, Wp)
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


@dataclass
class Reference:
    """Held-out views with their true outputs: network inputs (1, 1, Hp, Wp), targets (C, H, W) in the network's
    range, and the crops that take an output back to the view."""

    inputs: list[np.ndarray]
    targets: list[np.ndarray]
    crops: list[tuple[slice, slice]]


def reference_views(contract: Any, dataset: str | os.PathLike[str], views: list[Any]) -> Reference:
    """`views` of a dataset as the engine sees them, with the outputs it should give: for a normalised engine the
    SE image's bone and soft parts (`dexrt.runtime.contract.normalised_parts`, as the trainer makes them), otherwise
    each output in the engine's recorded encoding (the dataset's when it records none)."""
    from dexrt.runtime.contract import mirror_pad, normalised_parts, view_normalisation, window_to_unit
    from dexrt.io.dataset import open_dataset

    ds = open_dataset(dataset, processed=contract.normalisation is not None)
    encodings = contract.encodings or (ds.encodings["se"], *(ds.encodings[c] for c in contract.channels))
    # Each view's files as `ds` names them: views listed from a dataset opened otherwise (`calibration_views`) name
    # the ideal DE pair, not the pair a chained view's processing shows, which is a normalised engine's truth.
    own = {v.id: v for v in ds.views}
    ref = Reference([], [], [])
    for view in (own[v.id] for v in views):
        true = {c: ds.physical(view, c) for c in ("se", *contract.channels)}
        if contract.normalisation is not None:
            image = true["se"].astype(np.float32)
            norm = view_normalisation(image, true["bone"], true["soft"])  # the range `network_input` normalises by
            _, bone, soft = normalised_parts(true["se"], true["bone"], true["soft"], norm)
            values = {"bone": bone, "soft": soft}
        else:
            image = encodings[0].stored_float(true["se"])
            values = {c: e.stored_float(true[c]) for c, e in zip(contract.channels, encodings[1:])}
        ref.inputs.append(network_input(image, contract))
        ref.targets.append(np.stack([window_to_unit(values[c], w)
                                     for c, w in zip(contract.channels, contract.output_windows)]))
        ref.crops.append(mirror_pad(image, contract.size_multiple)[1])
    return ref


def _mse(model: Any, ref: Reference) -> np.ndarray:
    """(views, channels) mean squared error of `model` against the truth, per reference view."""
    return np.array([np.mean((out[:, rows, cols].astype(np.float64) - target) ** 2, axis=(1, 2))
                     for out, target, (rows, cols) in zip(_outputs(model, ref.inputs), ref.targets, ref.crops)])


def psnr_loss_db(mse: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Per channel, the PSNR lost from `base` to `mse` (both (views, channels)), averaged over the views.

    The mean of per-view losses, not the loss of the summed errors: a few views with large errors (the collimator
    edges of processed views) would otherwise hide what INT8 costs on all the others."""
    return np.mean(10.0 * np.log10(np.maximum(mse, 1e-20) / np.maximum(base, 1e-20)), axis=0)


@dataclass(frozen=True)
class _Unit:
    """What can be given back to floating point: one convolution (its weights and the quantizer of its input), or
    one other op's quantized input (the quantizer stays for its other consumers: the SE input feeds both the
    first convolution and ``soft = SE - bone + correction``, and only the latter needs it in float)."""

    label: str
    consumer: str  # the op whose quantized input goes back to float
    convolution: bool = False


def _quantized_inputs(op: Any) -> list[int]:
    return [i for i in range(op.get_input_size())
            if op.input_value(i).get_node().get_type_name() == "FakeQuantize"]


def _units(quantized: Any) -> list[_Unit]:
    units = []
    for op in quantized.get_ops():
        name, kind = op.get_friendly_name(), op.get_type_name()
        if kind == "Convolution":
            units.append(_Unit(name, name, convolution=True))
        elif kind != "FakeQuantize" and _quantized_inputs(op):
            units.append(_Unit(f"input of {name}", name))
    return units


def _in_float(quantized: Any, units: list[_Unit], weights: dict[str, np.ndarray]) -> Any:
    """A copy of a quantized model with `units` back in floating point: their inputs taken from before the
    quantizer, and their convolutions given the FP32 model's weights."""
    import openvino as ov

    chosen = {u.consumer: u for u in units}
    copy = quantized.clone()
    for op in copy.get_ops():
        unit = chosen.get(op.get_friendly_name())
        if unit is None:
            continue
        for i in _quantized_inputs(op):
            op.input(i).replace_source_output(op.input_value(i).get_node().input_value(0))
        if unit.convolution:
            op.input(1).replace_source_output(ov.op.Constant(weights[unit.consumer]).output(0))
    return copy


def _weights(fp32: Any) -> dict[str, np.ndarray]:
    """Each convolution's FP32 weights, by name (NNCF keeps the names of the nodes it quantizes)."""
    out = {}
    for op in fp32.get_ops():
        source = op.input_value(1).get_node() if op.get_type_name() == "Convolution" else None
        if source is not None and source.get_type_name() == "Constant":
            out[op.get_friendly_name()] = source.get_data().copy()
    return out


def restore_precision(fp32: Any, quantized: Any, ref: Reference, channels: tuple[str, ...],
                      max_loss_db: float) -> tuple[Any, dict[str, Any]]:
    """Give parts of `quantized` back to floating point until no channel loses more than `max_loss_db` of PSNR
    against the truth compared with `fp32`. Greedy: each step tries every remaining part with those already
    chosen and keeps the one that leaves the smallest worst-channel loss. Parts are tried together, not alone,
    because they interact: the soft output ``SE - bone + correction`` is quantized at two places, and freeing
    either alone gains nothing (on the default model 8.1 and 9.3 dB lost; both, 0.45 dB)."""
    base = _mse(fp32, ref)
    weights = _weights(fp32)

    def loss(model: Any) -> np.ndarray:
        return psnr_loss_db(_mse(model, ref), base)

    first = loss(quantized)
    record: dict[str, Any] = {
        "criterion": "per channel, the mean over held-out views of 10 log10(MSE_int8 / MSE_fp32) against their "
                     "true outputs",
        "views": len(ref.inputs), "max_loss_db": max_loss_db,
        "ptq_loss_db": {c: round(float(v), 3) for c, v in zip(channels, first)}}
    remaining = [u for u in _units(quantized) if not u.convolution or u.consumer in weights]
    record["candidates"] = len(remaining)
    chosen: list[_Unit] = []
    now, model = first, quantized
    while now.max() > max_loss_db and remaining:
        best: tuple[np.ndarray, _Unit, Any] | None = None
        for unit in remaining:
            candidate = _in_float(quantized, [*chosen, unit], weights)
            candidate_loss = loss(candidate)
            if best is None or candidate_loss.max() < best[0].max():
                best = (candidate_loss, unit, candidate)
        assert best is not None
        now, unit, model = best
        chosen.append(unit)
        remaining.remove(unit)
        log.info("%s back in float: the worst channel loses %.3f dB", unit.label, now.max())
    record["float_layers"] = [u.label for u in chosen]
    record["loss_db"] = {c: round(float(v), 3) for c, v in zip(channels, now)}
    return model, record


def quantize_openvino(contract: Any, onnx_path: str | os.PathLike[str], calibration: str | os.PathLike[str], *,
                      images: int = DEFAULT_CALIBRATION_IMAGES, max_loss_db: float | None = MAX_LOSS_DB
                      ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """ONNX generator -> INT8 OpenVINO IR calibrated on ``calibration``; returns (manifest, payload)."""
    require_extra("quantize", "INT8 engines", "nncf")
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    from dexrt.build.openvino import contract_manifest, convert_onnx, ir_payload, smoke_test
    from dexrt.io.dataset import is_dataset

    files = calibration_files(calibration, images)
    inputs = calibration_inputs(files, contract)
    # Every fifth image is held out to measure the INT8 engine against FP32 (all of them when there are few).
    held = slice(None, None, 5) if len(inputs) >= 10 else slice(None)
    held_out = inputs[held]
    calibrate = [x for i, x in enumerate(inputs) if i % 5] if len(inputs) >= 10 else inputs
    model = convert_onnx(onnx_path)
    log.info("calibrating on %d images from %s", len(calibrate), calibration)
    budget = max_loss_db if is_dataset(calibration) else None  # a dataset knows the truth: the loss is measured
    controlled = budget is not None
    # The performance preset quantizes activations symmetrically (the CPU's fastest INT8 kernels). Fast bias
    # correction keeps the per-channel means of the FP32 model by changing its biases; under accuracy control it
    # is off, so that a layer given back to float is exactly the FP32 layer (on the default model it did not
    # help either: bone lost 0.24 dB with it, 0.16 dB without).
    quantized = nncf.quantize(model, nncf.Dataset(calibrate), preset=nncf.QuantizationPreset.PERFORMANCE,
                              subset_size=len(calibrate), fast_bias_correction=True,
                              advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=controlled))
    accuracy = None
    if budget is not None:
        ref = reference_views(contract, calibration, calibration_views(calibration, images)[held])
        quantized, accuracy = restore_precision(model, quantized, ref, contract.channels, budget)
    payload = ir_payload(quantized, compress_to_fp16=False)
    manifest = contract_manifest(contract, onnx_path)
    manifest.update(backend="openvino", device="cpu", precision="int8")
    manifest["libraries"]["openvino"] = ov.get_version().split("-")[0]
    manifest["libraries"]["nncf"] = nncf.__version__
    manifest["quantization"] = {
        "method": "NNCF post-training quantization (min-max ranges, performance preset, "
                  + ("no bias correction; accuracy control)" if controlled else "fast bias correction)"),
        "calibration_source": str(calibration),
        "calibration_images": len(calibrate),
        "calibration_shapes": [list(s) for s in sorted({tuple(int(v) for v in x.shape[2:]) for x in inputs})],
        "vs_fp32": quality_vs_fp32(model, quantized, held_out, contract.channels),
        "layers": int8_layers(quantized, held_out[0].shape),
        "accuracy_control": accuracy,  # None: plain PTQ (no truth to measure against, or switched off)
    }
    smoke_test(manifest, payload, onnx_path)
    return manifest, payload
