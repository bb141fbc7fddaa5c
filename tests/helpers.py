"""Helpers shared by tests and benchmarks: small ONNX generators and engine bundles built from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np



def _save(graph: Any, path: Path, metadata: str | None) -> Path:
    """An opset-17 model of `graph`, its "dexrt" metadata set when given, checked and saved to `path`."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if metadata is not None:
        helper.set_model_props(model, {"dexrt": metadata})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path

def make_plain_onnx(path: Path, *, out_channels: int = 2, seed: int = 0, metadata: str | None = None,
                    stride: int = 1, reduce_batch: bool = False) -> Path:
    """A plain ONNX generator without torch: 3x3 conv (1 -> C) + tanh, dynamic N, H, W, no dexrt metadata.

    ``stride`` > 1 and ``reduce_batch`` make broken generators whose output is not (N, C, H, W) of their input.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.5, (out_channels, 1, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, (out_channels,)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3],
                              strides=[stride, stride])]
    if reduce_batch:
        nodes += [helper.make_node("ReduceMean", ["y"], ["r"], axes=[0], keepdims=1)]
    nodes += [helper.make_node("Tanh", ["r" if reduce_batch else "y"], ["out"])]
    graph = helper.make_graph(
        nodes,
        "plain_generator",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", out_channels, "H", "W"])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return _save(graph, path, metadata)


def build_bundle(onnx_path: Path, out: Path, **options) -> Path:
    from dexrt.build.openvino import build_openvino, read_onnx_contract
    from dexrt.runtime.bundle import write_bundle

    precision = options.pop("precision", "fp32")
    contract = read_onnx_contract(onnx_path, **options)
    manifest, payload = build_openvino(contract, onnx_path, precision=precision)
    write_bundle(out, manifest, payload)
    return out


def write_random_pngs(folder: Path, n: int, size: tuple[int, int]) -> Path:
    """`n` PNG16 files of uniform noise (seeded by index) named cxr000.png, ... in `folder`."""
    from dexrt.io.images import write_image

    for i in range(n):
        write_image(folder / f"cxr{i:03d}.png", (np.random.default_rng(i).random(size) * 60000).astype(np.uint16))
    return folder


def normalised_metadata(pixel_spacing_mm: float | None = None) -> str:
    """ONNX metadata of a normalised engine (bone, soft) on the (-0.25, 1.25) windows, optionally with its spacing."""
    import json

    from dexrt.runtime.contract import NORMALISATION, NORMALISED_WINDOW

    meta = {"input": {"window": list(NORMALISED_WINDOW), "quantity": "se", "normalisation": NORMALISATION},
            "output": {"windows": [list(NORMALISED_WINDOW)] * 2}}
    if pixel_spacing_mm is not None:
        meta["pixel_spacing_mm"] = pixel_spacing_mm
    return json.dumps(meta)


def make_linear_onnx(path: Path, weights: list[float], biases: list[float], *, metadata: str | None = None) -> Path:
    """A per-pixel linear generator: output channel c = weights[c] * x + biases[c] (a 1x1 convolution), no
    activation. On normalised (-0.25, 1.25) windows, weight 0.5 and bias -1/3 make each part half the input."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.asarray(weights, np.float32).reshape(-1, 1, 1, 1)
    bias = np.asarray(biases, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["out"], kernel_shape=[1, 1])],
        "linear_generator",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", len(weights), "H", "W"])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return _save(graph, path, metadata)


def write_ct_series(folder: Path, slices: list[np.ndarray], positions: list[tuple[float, float, float]], *,
                    iop: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                    spacing: tuple[float, float] = (1.0, 1.0), series_uid: str | None = None,
                    slope: float = 1.0, intercept: float = -1024.0, number: int = 1) -> list[Path]:
    """Write one CT slice per position (pixel arrays are (rows, cols), stored as (HU - intercept) / slope)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    files = []
    for k, (hu, pos) in enumerate(zip(slices, positions)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.Modality, ds.SeriesInstanceUID, ds.SOPInstanceUID = "CT", series_uid, meta.MediaStorageSOPInstanceUID
        ds.SeriesNumber, ds.SeriesDescription = number, f"series {number}"
        ds.ImageOrientationPatient = list(iop)
        ds.ImagePositionPatient = list(pos)
        ds.PixelSpacing = list(spacing)
        ds.Rows, ds.Columns = hu.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.rint((hu - intercept) / slope).astype(np.int16).tobytes()
        path = folder / f"s{number}_{k:03d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        files.append(path)
    return files
