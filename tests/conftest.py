"""Shared fixtures: small ONNX generators with random weights and engine bundles built from them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from helpers import build_bundle, make_plain_onnx, normalised_metadata

# The default run is reproducible: the fuzz tests replay the same examples every time, so CI cannot turn red
# on a new random draw. `pytest tests/test_fuzz.py --hypothesis-profile explore` searches afresh, longer.
settings.register_profile("ci", max_examples=60, derandomize=True)
settings.register_profile("explore", max_examples=2000, derandomize=False)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def plain_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_plain_onnx(tmp_path_factory.mktemp("plain") / "plain.onnx")


@pytest.fixture(scope="session")
def plain_engine_path(plain_onnx: Path) -> Path:
    """A bundle of the plain conv generator, size multiple 64 (so padding is exercised on odd sizes)."""
    return build_bundle(plain_onnx, plain_onnx.with_suffix(".dexrt"), size_multiple=64)


@pytest.fixture(scope="session")
def normalised_engine_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plain conv generator as a normalised (bone, soft) engine trained at 1.5 mm, size multiple 64."""
    folder = tmp_path_factory.mktemp("normalised")
    onnx_path = make_plain_onnx(folder / "normalised.onnx", metadata=normalised_metadata(pixel_spacing_mm=1.5))
    return build_bundle(onnx_path, folder / "normalised.dexrt", size_multiple=64)


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
