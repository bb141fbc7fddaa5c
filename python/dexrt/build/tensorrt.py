"""TensorRT engine builds for `dexrt build-engine --device gpu`.

    build_tensorrt(contract, onnx_path, *, precision="fp16", min_shape=None, opt_shape=None, max_shape=None,
                   timing_cache=None, contexts=2, samples=None, workspace_bytes=None)
        -> (manifest, {"model.plan": bytes})

``contract`` is the :class:`dexrt.build.openvino.OnnxContract` of ``onnx_path``. Shapes are (N, H, W) of the padded
network input (H and W multiples of the contract's size multiple): the engine runs any shape between
``min_shape`` and ``max_shape`` and is tuned for ``opt_shape``. ``timing_cache`` is a file that speeds up
later builds on the same GPU; it is read when it exists and written back (atomically) after the build.
``contexts`` is the number of optimization profiles, one per execution context that may run at once.

Precision: with TensorRT 10, ``fp16`` sets the FP16 builder flag on the float32 network (weak typing); from
TensorRT 11 on, which only builds strongly typed networks, the ONNX graph is first converted to float16
(:mod:`dexrt.build.fp16`). Either way the engine's input and output are float16 on purpose: the CUDA
pre/post kernels write and read float16 directly, halving the traffic around the network.

After the build the engine runs on sample inputs and is compared with the float32 ONNX model run by
OpenVINO on the CPU; the PSNR (network range [-1, 1], peak-to-peak 2) goes into the manifest. The manifest
records what the plan is bound to: GPU name and compute capability, TensorRT version, the ONNX file's hash
(``model.onnx_sha256``), precision and shapes.

Needs the ``tensorrt`` Python package (the same TensorRT release dexrt's runtime was built with) and a
dexrt built with its TensorRT backend, on the machine with the GPU the engine is for.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from dexrt._atomic import atomic_write
from dexrt._errors import EngineError, ModelError, require_package

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")
DEFAULT_OPT_SIDE = 2048  # a typical radiograph side, rounded up to the size multiple
DEFAULT_MAX_SIDE = 4096
DEFAULT_MAX_BATCH = 4
Shape = tuple[int, int, int]  # (N, H, W) of the padded network input


def build_tensorrt(
    contract: Any,
    onnx_path: str | os.PathLike[str],
    *,
    precision: str = "fp16",
    min_shape: Shape | None = None,
    opt_shape: Shape | None = None,
    max_shape: Shape | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    contexts: int = 2,
    samples: np.ndarray | None = None,
    workspace_bytes: int | None = None,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Build a TensorRT plan of ``onnx_path`` for GPU 0; returns (manifest, payload). See the module doc."""
    from dexrt.build.openvino import contract_manifest

    trt = import_tensorrt()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} for the GPU, got {precision!r}")
    if contexts < 1:
        raise ValueError(f"contexts must be >= 1, got {contexts}")
    runtime = _check_runtime(trt)
    shapes = profile_shapes(contract.size_multiple, min_shape, opt_shape, max_shape)
    onnx_path = Path(onnx_path)
    major = int(trt.__version__.split(".")[0])
    strongly_typed = precision == "fp16" and major >= 11

    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    onnx_bytes = _network_bytes(onnx_path, fp16_graph=strongly_typed)
    if not parser.parse(onnx_bytes, str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"{onnx_path}: TensorRT cannot parse the model: {errors}")
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise ModelError(f"{onnx_path}: the network must have one input and one output")
    inp, out = network.get_input(0), network.get_output(0)
    if precision == "fp16" and not strongly_typed:
        inp.dtype = trt.float16  # weak typing: the I/O types are chosen here; the graph's come from the flag
        out.dtype = trt.float16

    config = builder.create_builder_config()
    if precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: no TF32 convolutions
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    for _ in range(contexts):  # identical profiles: contexts running at once need one each
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, *((n, 1, h, w) for n, h, w in (shapes["min"], shapes["opt"], shapes["max"])))
        config.add_optimization_profile(profile)
    cache = _load_timing_cache(config, timing_cache)

    log.info("building a TensorRT %s %s engine of %s for %s; shapes %s", trt.__version__, precision,
             onnx_path.name, runtime["gpu_name"], shapes)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"{onnx_path}: TensorRT could not build the engine: {logger.last_error or 'no detail'}")
    plan_bytes = bytes(plan)
    if timing_cache is not None:
        with atomic_write(timing_cache) as f:
            f.write(bytes(cache.serialize()))

    manifest = contract_manifest(contract, onnx_path)
    manifest.update(backend="tensorrt", device="gpu", precision=precision)
    manifest["libraries"]["tensorrt"] = trt.__version__
    manifest["tensorrt"] = {
        "version": trt.__version__,
        "typing": "strong" if strongly_typed else "weak",
        "io_dtype": "float16" if precision == "fp16" else "float32",
        "profiles": contexts,
        "shapes": {k: list(v) for k, v in shapes.items()},
    }
    manifest["gpu"] = {"name": runtime["gpu_name"], "compute_capability": runtime["compute_capability"]}
    manifest["accuracy"] = compare_with_fp32(manifest, plan_bytes, onnx_path, shapes["opt"], samples)
    return manifest, {"model.plan": plan_bytes}


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a MissingExtraError saying exactly what to install."""
    return require_package("tensorrt", "building a GPU engine", install_hint(),
                           "NVIDIA TensorRT for Python")


def install_hint() -> str:
    """The pip command that matches this dexrt's CUDA and TensorRT (see docs/gpu.md)."""
    from dexrt import _core

    runtime = _core.cuda.status()["runtime_version"] if _core.cuda.compiled else 0
    package = f"tensorrt-cu{runtime // 1000}" if runtime else "tensorrt-cu13"
    if _core.tensorrt.compiled:
        version = _core.tensorrt.library_version()
        return f"`pip install \"{package}=={version}.*\"` (the TensorRT release this dexrt runs)"
    return (f"`pip install {package}`, and rebuild dexrt against the same TensorRT release's SDK "
            "(`TensorRT_ROOT=/path/to/TensorRT pip install .`): this build has no TensorRT runtime")


def profile_shapes(size_multiple: int, min_shape: Shape | None, opt_shape: Shape | None,
                   max_shape: Shape | None) -> dict[str, Shape]:
    """The (N, H, W) min/opt/max of the optimization profile: defaults filled in, then checked."""

    def up(side: int) -> int:
        return -(-side // size_multiple) * size_multiple

    m = size_multiple
    shapes = {
        "min": tuple(min_shape) if min_shape else (1, m, m),
        "opt": tuple(opt_shape) if opt_shape else (1, up(DEFAULT_OPT_SIDE), up(DEFAULT_OPT_SIDE)),
        "max": tuple(max_shape) if max_shape else (DEFAULT_MAX_BATCH, up(DEFAULT_MAX_SIDE), up(DEFAULT_MAX_SIDE)),
    }
    for name, s in shapes.items():
        if len(s) != 3 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in s):
            raise ValueError(f"{name} shape must be three positive integers (N, H, W), got {s}")
        if s[1] % m or s[2] % m:
            raise ValueError(f"{name} shape {s}: H and W must be multiples of the size multiple {m}")
    for i, axis in enumerate("NHW"):
        if not shapes["min"][i] <= shapes["opt"][i] <= shapes["max"][i]:
            raise ValueError(f"shapes must satisfy min <= opt <= max on {axis}, got {shapes}")
    return {k: (int(v[0]), int(v[1]), int(v[2])) for k, v in shapes.items()}


def sample_inputs(shape: Shape, seed: int = 0) -> np.ndarray:
    """Deterministic (N, H, W) float32 inputs in [-0.9, 0.9]: smooth structure plus a little noise, so that
    they exercise the network like a radiograph rather than like white noise."""
    n, h, w = shape
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (n, h // 16 + 2, w // 16 + 2))

    def upsample(size: int, steps: int) -> np.ndarray:  # (size, steps) linear interpolation matrix
        at = np.linspace(0, steps - 1, size)
        return np.stack([np.interp(at, np.arange(steps), e) for e in np.eye(steps)], axis=1)

    smooth = upsample(h, coarse.shape[1]) @ coarse @ upsample(w, coarse.shape[2]).T  # (n, h, w)
    images = 0.8 * smooth + 0.1 * rng.standard_normal((n, h, w))
    return np.clip(images, -0.9, 0.9).astype(np.float32)


def compare_with_fp32(manifest: dict[str, Any], plan: bytes, onnx_path: Path, shape: Shape,
                      samples: np.ndarray | None) -> dict[str, Any]:
    """Run the plan (through dexrt's own TensorRT runtime, CUDA pre/post included) and the float32 ONNX
    model (OpenVINO, CPU) on the same network-range inputs; returns the PSNR of the plan's outputs."""
    import openvino as ov

    from dexrt.runtime.engine import Engine
    from dexrt.evaluation.metrics import psnr

    x = sample_inputs(shape) if samples is None else np.ascontiguousarray(samples, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"samples must be (N, H, W) network-range float32, got shape {x.shape}")
    # The value contract as the identity: the engine sees exactly these values, unpadded.
    with Engine.from_parts(manifest, {"model.plan": plan}, network_io=True, device="gpu", contexts=1) as engine:
        got = np.stack(engine.infer(x))  # (C, N, H, W)
    core = ov.Core()
    model = core.read_model(str(onnx_path))
    model.reshape([x.shape[0], 1, x.shape[1], x.shape[2]])
    want = core.compile_model(model, "CPU")(x[:, np.newaxis])[0]  # (N, C, H, W)
    value = psnr(got, want.transpose(1, 0, 2, 3), data_range=2.0)  # the network range [-1, 1]
    log.info("TensorRT %s vs float32 ONNX: PSNR %.1f dB on %s", manifest["precision"], value, x.shape)
    return {"psnr_db": round(value, 2), "reference": "onnx float32 (OpenVINO CPU)", "samples": list(x.shape),
            "range": [-1.0, 1.0]}


def _check_runtime(trt: Any) -> dict[str, str]:
    """A plan must be loadable by dexrt's runtime: same TensorRT release, a usable GPU."""
    from dexrt.runtime.gpu import current_runtime, same_release

    rt = current_runtime(0)
    if not same_release(trt.__version__, rt.tensorrt_version):
        raise EngineError(f"the tensorrt Python package is {trt.__version__} but dexrt's runtime loads TensorRT "
                          f"{rt.tensorrt_version}; a plan only loads in the release that built it: "
                          f"{install_hint()}")
    return {"gpu_name": rt.gpu_name, "compute_capability": rt.compute_capability}


def _network_bytes(onnx_path: Path, *, fp16_graph: bool) -> bytes:
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: no such ONNX file")
    if not fp16_graph:
        return onnx_path.read_bytes()
    import onnx

    from dexrt.build.fp16 import convert_to_fp16

    return convert_to_fp16(onnx.load(str(onnx_path))).SerializeToString()


def _load_timing_cache(config: Any, path: str | os.PathLike[str] | None) -> Any:
    data = Path(path).read_bytes() if path is not None and Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another GPU or TensorRT release: start a fresh one (it replaces the file after the build).
        log.warning("timing cache %s does not match this GPU or TensorRT; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _make_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to `logging` and keeps the last error for the exception."""
    trt_log = logging.getLogger("dexrt.tensorrt")
    levels = {trt.ILogger.INTERNAL_ERROR: logging.ERROR, trt.ILogger.ERROR: logging.ERROR,
              trt.ILogger.WARNING: logging.WARNING, trt.ILogger.INFO: logging.INFO,
              trt.ILogger.VERBOSE: logging.DEBUG}

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.last_error = ""

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(severity, logging.INFO)
            if level >= logging.ERROR:
                self.last_error = msg
            trt_log.log(level, "%s", msg)

    return _Logger()
