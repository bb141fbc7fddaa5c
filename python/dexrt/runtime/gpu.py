"""What this machine offers for GPU engines, and the check that a TensorRT plan fits it.

A TensorRT plan runs only with the TensorRT version that built it, on the GPU model it was tuned for (its
kernels are chosen per compute capability and per GPU). A bundle's manifest records both (the ``tensorrt``
and ``gpu`` sections written by :mod:`dexrt.build.tensorrt`); :func:`check_plan` compares them with the
running machine before anything is deserialized, so a mismatch is a clear error instead of TensorRT's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dexrt import _core
from dexrt._errors import BundleError, EngineError


@dataclass(frozen=True)
class GpuRuntime:
    """The GPU and TensorRT a plan would run on here."""

    gpu_name: str
    compute_capability: str  # "8.9"
    tensorrt_version: str  # "10.13.0" (major.minor.patch of the loaded libnvinfer)


def gpu_available() -> bool:
    """True when dexrt was built with CUDA and a CUDA device is usable now."""
    return bool(_core.cuda.compiled) and int(_core.cuda.status()["device_count"]) > 0


def current_runtime(device: int = 0) -> GpuRuntime:
    """The GPU ``device`` and the loaded TensorRT; EngineError when this build or machine has none."""
    if not _core.tensorrt.compiled:
        raise EngineError(
            "this build of dexrt has no TensorRT backend; rebuild it on a machine with the CUDA toolkit and a "
            "TensorRT SDK (`TensorRT_ROOT=/path/to/TensorRT pip install .`, see docs/gpu.md)"
        )
    status = _core.cuda.status()
    devices = _core.cuda.devices()
    if not devices:
        raise EngineError(f"no usable CUDA device: {status['error']}")
    if not 0 <= device < len(devices):
        raise EngineError(f"CUDA device {device} does not exist ({len(devices)} found)")
    d = devices[device]
    return GpuRuntime(d["name"], d["compute_capability"], str(_core.tensorrt.library_version()))


def same_release(a: str, b: str) -> bool:
    """True when two TensorRT versions share major.minor.patch ("10.13.0.35" and "10.13.0" do)."""
    return a.split(".")[:3] == b.split(".")[:3]


def check_plan(manifest: dict[str, Any], path: object, runtime: GpuRuntime) -> None:
    """Refuse a TensorRT bundle built for another GPU model or TensorRT release than ``runtime``."""
    trt, gpu = manifest.get("tensorrt"), manifest.get("gpu")
    if not isinstance(trt, dict) or not isinstance(gpu, dict):
        raise BundleError(f"{path}: invalid manifest: a TensorRT bundle needs its 'tensorrt' and 'gpu' sections")
    built_trt, built_name, built_cc = trt.get("version"), gpu.get("name"), gpu.get("compute_capability")
    if not (isinstance(built_trt, str) and isinstance(built_name, str) and isinstance(built_cc, str)):
        raise BundleError(f"{path}: invalid manifest: 'tensorrt.version', 'gpu.name' and "
                          "'gpu.compute_capability' must be strings")
    rebuild = "rebuild it here with `dexrt build-engine MODEL.onnx --device gpu -o ENGINE.dexrt`"
    if not same_release(built_trt, runtime.tensorrt_version):
        raise EngineError(
            f"{path}: the engine was built with TensorRT {built_trt}, this dexrt runs TensorRT "
            f"{runtime.tensorrt_version}; TensorRT plans only load in the release that built them: {rebuild}"
        )
    if built_cc != runtime.compute_capability or built_name != runtime.gpu_name:
        raise EngineError(
            f"{path}: the engine was built for {built_name} (compute capability {built_cc}), this GPU is "
            f"{runtime.gpu_name} (compute capability {runtime.compute_capability}); TensorRT plans are tuned "
            f"for one GPU model: {rebuild}"
        )
