"""Build engine bundles from ONNX generators (`dexrt build-engine`).

An ONNX generator is accepted when it has one input (N, 1, H, W) and one output (N, C, H, W), both float32 in
the network range [-1, 1]. Models exported by `dexrt export` carry their value contract in the ONNX metadata
property ``dexrt`` (JSON: input window, output channels and windows, size multiple, model hash); for a plain
ONNX generator without it the contract comes from the options or the defaults below.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dexrt._errors import EngineError, ModelError
from dexrt.runtime.bundle import channel_name_problem, window_problem
from dexrt.runtime.contract import (
    NORMALISATION,
    OUTPUT_CHANNELS,
    STORED_WINDOW,
    Encoding,
    read_onnx_metadata,
    recorded_encodings,
)
from dexrt.runtime.pixel_spacing import check_option

log = logging.getLogger(__name__)

DEFAULT_WINDOW = STORED_WINDOW
DEFAULT_CHANNELS = OUTPUT_CHANNELS
DEFAULT_SIZE_MULTIPLE = 256  # 2**8: the reference unet_256
PRECISIONS = ("fp32", "fp16")  # fp16: FP16-compressed weights (half the file), computed in FP32 on the CPU


@dataclass(frozen=True)
class OnnxContract:
    """What an ONNX generator promises: names, shapes and the value contract."""

    input_name: str
    output_name: str
    input_shape: list[int | str]
    output_shape: list[int | str]
    input_window: tuple[float, float]
    output_windows: tuple[tuple[float, float], ...]
    channels: tuple[str, ...]
    size_multiple: int
    sha256: str  # of the ONNX file
    model_hash: str | None = None  # of the trained weights, from `dexrt export`
    model: dict[str, Any] = field(default_factory=dict)  # generator config, from `dexrt export`
    pixel_spacing_mm: float | None = None  # of the training images at the patient, from `dexrt export`
    flip_average: bool = False  # the graph averages over the left-right flip (`dexrt export --flip-average`)
    # what stored values mean physically (input, then each output), from `dexrt export`; None when unrecorded
    encodings: tuple[Encoding, ...] | None = None
    # scale-free input (dexrt.runtime.contract.NORMALISATION), from `dexrt export`
    normalisation: dict[str, Any] | None = None


def _dims(value_info: Any) -> list[int | str]:
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims


def read_onnx_contract(
    path: str | os.PathLike[str],
    *,
    input_window: tuple[float, float] | None = None,
    output_windows: list[tuple[float, float]] | None = None,
    channels: list[str] | None = None,
    size_multiple: int | None = None,
) -> OnnxContract:
    """Check an ONNX generator and return its contract; options override the model's own metadata."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such ONNX file")
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # onnx raises protobuf DecodeError and others for garbage
        raise ModelError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ModelError(
            f"{path}: a dexrt generator has one input and one output, this model has {len(inputs)} and "
            f"{len(graph.output)}"
        )
    inp, out = inputs[0], graph.output[0]
    float32 = onnx.TensorProto.FLOAT
    for what, vi in (("input", inp), ("output", out)):
        if vi.type.tensor_type.elem_type != float32:
            dtype = onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)
            raise ModelError(f"{path}: the {what} '{vi.name}' must be float32, it is {dtype}")
    in_shape, out_shape = _dims(inp), _dims(out)
    if len(in_shape) != 4 or in_shape[1] != 1:
        raise ModelError(f"{path}: the input '{inp.name}' must be (N, 1, H, W), it is {tuple(in_shape)}")
    if len(out_shape) != 4 or not isinstance(out_shape[1], int) or out_shape[1] < 1:
        raise ModelError(f"{path}: the output '{out.name}' must be (N, C, H, W) with a fixed C, it is "
                         f"{tuple(out_shape)}")

    try:
        meta: dict[str, Any] = read_onnx_metadata(model) or {}
    except ValueError as exc:
        raise ModelError(f"{path}: the 'dexrt' metadata is not a JSON object ({exc})") from exc
    meta_in = meta.get("input", {})
    meta_out = meta.get("output", {})

    n_out = out_shape[1]
    assert isinstance(n_out, int)
    resolved_channels = tuple(channels or meta_out.get("channels") or DEFAULT_CHANNELS[:n_out])
    if len(resolved_channels) != n_out:
        raise ModelError(f"{path}: the output has {n_out} channels but {len(resolved_channels)} channel names "
                         f"were given ({', '.join(resolved_channels)})")
    resolved_in = tuple(input_window or meta_in.get("window") or DEFAULT_WINDOW)
    resolved_out = tuple(tuple(w) for w in (output_windows or meta_out.get("windows") or [DEFAULT_WINDOW] * n_out))
    if len(resolved_out) != n_out:
        raise ModelError(f"{path}: the output has {n_out} channels but {len(resolved_out)} output windows")
    for name in resolved_channels:
        if channel_name_problem(name):
            raise ModelError(f"{path}: {channel_name_problem(name)}")
    if len({c.lower() for c in resolved_channels}) != n_out:
        raise ModelError(f"{path}: the channel names {', '.join(resolved_channels)} are not unique")
    for w in (resolved_in, *resolved_out):
        if window_problem(list(w)):
            raise ModelError(f"{path}: window {window_problem(list(w))}")
    multiple = int(size_multiple or meta.get("size_multiple") or DEFAULT_SIZE_MULTIPLE)
    if not 1 <= multiple <= 4096:
        raise ModelError(f"{path}: size multiple must be in [1, 4096], got {multiple}")
    return OnnxContract(
        input_name=inp.name,
        output_name=out.name,
        input_shape=in_shape,
        output_shape=out_shape,
        input_window=(float(resolved_in[0]), float(resolved_in[1])),
        output_windows=tuple((float(lo), float(hi)) for lo, hi in resolved_out),
        channels=resolved_channels,
        size_multiple=multiple,
        sha256=hashlib.sha256(data).hexdigest(),
        model_hash=meta.get("model_hash"),
        model=meta.get("model", {}),
        pixel_spacing_mm=_spacing(path, meta.get("pixel_spacing_mm")),
        flip_average=meta.get("flip_average") is True,
        encodings=_encodings(path, meta_in.get("encoding"), meta_out.get("encodings"), n_out),
        normalisation=_normalisation(path, meta_in.get("normalisation")),
    )


def _normalisation(path: Path, value: Any) -> dict[str, Any] | None:
    if value is not None and value != NORMALISATION:
        raise ModelError(f"{path}: input normalisation {value!r} is not one this dexrt applies ({NORMALISATION})")
    return value


def _encodings(path: Path, inp: Any, out: Any, n_out: int) -> tuple[Encoding, ...] | None:
    try:
        return recorded_encodings(inp, out, n_out)
    except ValueError as exc:
        raise ModelError(f"{path}: invalid encodings in the 'dexrt' metadata: {exc}") from exc


def _spacing(path: str | os.PathLike[str], value: Any) -> float | None:
    if value is None:
        return None
    try:
        check_option("pixel_spacing_mm", value)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path}: {exc}") from None
    return float(value)


def contract_manifest(contract: OnnxContract, onnx_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The backend-independent part of a bundle manifest."""
    import onnx

    from dexrt import __version__

    manifest: dict[str, Any] = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "source": Path(onnx_path).name,
            "onnx_sha256": contract.sha256,
            "model_hash": contract.model_hash,
            "config": contract.model,
            **({"flip_average": True} if contract.flip_average else {}),
        },
        "input": {
            "name": contract.input_name,
            "shape": contract.input_shape,
            "dtype": "float32",
            "window": list(contract.input_window),
        },
        "output": {
            "name": contract.output_name,
            "shape": contract.output_shape,
            "dtype": "float32",
            "channels": list(contract.channels),
            "windows": [list(w) for w in contract.output_windows],
        },
        "size_multiple": contract.size_multiple,
        "libraries": {"dexrt": __version__, "onnx": onnx.__version__},
        **({"pixel_spacing_mm": contract.pixel_spacing_mm} if contract.pixel_spacing_mm is not None else {}),
    }
    if contract.normalisation is not None:
        manifest["input"].update(quantity="se", normalisation=contract.normalisation)
    if contract.encodings is not None:  # what the stored values in and out mean physically
        manifest["input"].update(quantity="se", encoding=contract.encodings[0].as_manifest())
        manifest["output"]["encodings"] = [e.as_manifest() for e in contract.encodings[1:]]
    return manifest


def build_openvino(contract: OnnxContract, onnx_path: str | os.PathLike[str], *, precision: str = "fp32"
                   ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Convert an ONNX generator to OpenVINO IR; returns (manifest fields, payload)."""
    import openvino as ov

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} for the CPU, got {precision!r}")
    payload = ir_payload(convert_onnx(onnx_path), compress_to_fp16=(precision == "fp16"))
    manifest = contract_manifest(contract, onnx_path)
    manifest.update(backend="openvino", device="cpu", precision=precision)
    manifest["libraries"]["openvino"] = ov.get_version().split("-")[0]
    smoke_test(manifest, payload, onnx_path)
    return manifest, payload


def convert_onnx(onnx_path: str | os.PathLike[str]) -> Any:
    """The ONNX generator as an ``openvino.Model``; EngineError when OpenVINO cannot convert it."""
    import openvino as ov

    try:
        return ov.convert_model(str(onnx_path))
    except Exception as exc:  # OpenVINO raises its own exception types for unsupported graphs
        raise EngineError(f"{onnx_path}: OpenVINO cannot convert this model: {exc}") from exc


def ir_payload(model: Any, *, compress_to_fp16: bool) -> dict[str, bytes]:
    """An ``openvino.Model`` serialized as the bundle's ``model.xml`` and ``model.bin``."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="dexrt-build-") as tmp:
        xml = Path(tmp, "model.xml")
        ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
        return {"model.xml": xml.read_bytes(), "model.bin": xml.with_suffix(".bin").read_bytes()}


def smoke_test(manifest: dict[str, Any], payload: dict[str, bytes], onnx_path: str | os.PathLike[str]) -> None:
    """Compile and run the new engine once, so a bundle that cannot run is never written."""
    from dexrt.runtime.engine import Engine

    m = manifest["size_multiple"]
    try:
        with Engine.from_parts(manifest, payload, device="cpu") as engine:
            # a batch of two, so a network that mixes or collapses the batch is caught too
            out = np.stack(engine.infer(np.zeros((2, m, m), np.float32)))
    except Exception as exc:
        raise EngineError(f"{onnx_path}: the built engine does not run: {exc}") from exc
    if out.shape != (len(manifest["output"]["channels"]), 2, m, m):
        raise EngineError(f"{onnx_path}: the built engine returned shape {out.shape}")
    log.info("smoke test passed at %dx%d", m, m)
