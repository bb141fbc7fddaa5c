"""Shared fixtures: small ONNX generators with random weights and engine bundles built from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def make_plain_onnx(path: Path, *, out_channels: int = 2, seed: int = 0, metadata: str | None = None) -> Path:
    """A plain ONNX generator without torch: 3x3 conv (1 -> C) + tanh, dynamic N, H, W, no dexrt metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.5, (out_channels, 1, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, (out_channels,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
            helper.make_node("Tanh", ["y"], ["out"]),
        ],
        "plain_generator",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", out_channels, "H", "W"])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if metadata is not None:
        helper.set_model_props(model, {"dexrt": metadata})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def build_bundle(onnx_path: Path, out: Path, **options) -> Path:
    from dexrt.build import build_openvino, read_onnx_contract
    from dexrt.bundle import write_bundle

    precision = options.pop("precision", "fp32")
    contract = read_onnx_contract(onnx_path, **options)
    manifest, payload = build_openvino(contract, onnx_path, precision=precision)
    write_bundle(out, manifest, payload)
    return out


@pytest.fixture(scope="session")
def plain_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_plain_onnx(tmp_path_factory.mktemp("plain") / "plain.onnx")


@pytest.fixture(scope="session")
def plain_engine_path(plain_onnx: Path) -> Path:
    """A bundle of the plain conv generator, size multiple 64 (so padding is exercised on odd sizes)."""
    return build_bundle(plain_onnx, plain_onnx.with_suffix(".dexrt"), size_multiple=64)


@pytest.fixture(scope="session")
def unet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real pix2pix U-Net generator (depth 8, size multiple 256), narrow (ngf 8), random weights."""
    import torch

    from dexrt_train.export import export_onnx
    from dexrt_train.networks import GeneratorConfig, define_G

    torch.manual_seed(0)
    config = GeneratorConfig(ngf=8)
    path = tmp_path_factory.mktemp("unet") / "unet.onnx"
    export_onnx(define_G(config), config, path)
    return path


@pytest.fixture(scope="session")
def unet_engine_path(unet_onnx: Path) -> Path:
    return build_bundle(unet_onnx, unet_onnx.with_suffix(".dexrt"))


# -- GPU marker and report header -----------------------------------------------------------------------------
def gpu_unavailable_reason() -> str | None:
    """Why `gpu` tests cannot run here, or None when a CUDA device is usable."""
    from dexrt import _core

    if not _core.cuda.compiled:
        return "dexrt was built without CUDA"
    status = _core.cuda.status()
    if status["device_count"] == 0:
        return f"no usable CUDA device ({status['error']})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = gpu_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> list[str]:
    from importlib import metadata

    import openvino

    from dexrt import _core

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    cuda = _core.cuda.status()
    if cuda["compiled"]:
        runtime = f"{cuda['runtime_version'] // 1000}.{cuda['runtime_version'] % 1000 // 10}"
        devices = ", ".join(f"{d['name']} (sm {d['compute_capability']})" for d in _core.cuda.devices())
        cuda_line = f"CUDA {runtime} compiled; driver {cuda['driver_version'] or 'none'}; " + (
            f"devices: {devices}" if devices else f"no device: {cuda['error']}")
    else:
        cuda_line = "CUDA not compiled"
    trt = f"runtime {_core.tensorrt.library_version()}" if _core.tensorrt.compiled else "runtime not compiled"
    return [
        f"dexrt {_core.__version__}; OpenVINO {openvino.get_version()}",
        cuda_line,
        f"TensorRT {trt}; python package {installed('tensorrt')}",
    ]
