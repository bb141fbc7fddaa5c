"""`dexrt bench`: latency and throughput of dexrt's engine against peers on the same ONNX generator.

Peers, each run only where its package is installed: OpenVINO's own Python API (FP32: ``INFERENCE_PRECISION_HINT``
f32, as dexrt compiles; and its default settings, bf16 on CPUs with AMX), ONNX Runtime (CPU), and, when
the generator's PyTorch module is at hand, torch eager FP32 (NCHW and channels_last). On a machine with a CUDA
GPU: torch eager FP16 and FP32 on the GPU, and dexrt's TensorRT FP16 engine when this build has the TensorRT
backend. Every measurement is checked against the first engine (dexrt on the CPU) on the same input before it is
reported; FP16 engines get the looser ``TOLERANCE_FP16``. GPU figures are host to host (numpy in, numpy out, as
``Engine.infer`` is called), so they include the PCIe copies. With a calibration dataset (``calibration``), dexrt's
INT8 engine (`dexrt build-engine --precision int8`, accuracy-controlled) and OpenVINO's own INT8 of the same ONNX
(NNCF post-training quantization with its defaults, used from Python) join, and every engine is fed a real SE image
of that dataset instead of noise. Results are a JSON document
(``schema``: `SCHEMA`) that two runs can be compared with, a printed table and a latency-vs-size plot.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]  # (N, 1, H, W) f32 in [-1, 1] -> (N, C, H, W) f32 in [-1, 1]

SCHEMA = "dexrt-bench/2"  # 2: interleaved rounds, per-round ratios to the reference
TOLERANCE = 2e-3  # max abs difference to the reference, in the network's [-1, 1] range
TOLERANCE_FP16 = 5e-2  # the same for engines computing in FP16 or bf16 (about 8 LSB of a 10-bit image)
TOLERANCE_INT8 = 0.15  # INT8 engines on a real image: a sanity bound (their quality is measured by `dexrt eval`)
GPU_ENGINES = ("torch-cuda-fp32", "torch-cuda-fp16", "dexrt-tensorrt-fp16")


def tolerance(engine: str) -> float:
    if engine.endswith("int8"):
        return TOLERANCE_INT8
    return TOLERANCE_FP16 if engine.endswith(("fp16", "default")) else TOLERANCE


@dataclass
class Result:
    engine: str
    height: int
    width: int
    batch: int
    p50_ms: float
    p99_ms: float
    images_per_s: float
    gflops: float  # achieved GFLOP/s
    peak_percent: float | None
    max_abs_error: float
    repeats: int
    # time of this engine / time of the reference (dexrt) in the same round: median and quartiles over rounds
    ratio_to_reference: float
    ratio_quartiles: tuple[float, float]


def conv_flops(onnx_path: str | os.PathLike[str], height: int, width: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of the Conv and ConvTranspose nodes for one (1, 1, H, W) image."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(onnx_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (1, 1, height, width)):
        d.ClearField("dim_param")
        d.dim_value = v
    model = shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    weights = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    total = 0.0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out = shapes.get(node.output[0])
            w = weights.get(node.input[1])
            if out and w:
                total += 2.0 * float(np.prod(w)) * out[2] * out[3]
        elif node.op_type == "ConvTranspose":
            inp = shapes.get(node.input[0])
            w = weights.get(node.input[1])
            if inp and w:
                total += 2.0 * float(np.prod(w)) * inp[2] * inp[3]
    return total


def cpu_peak_gflops() -> float | None:
    """Estimated FP32 peak of this CPU: cores x clock x FLOPs/cycle (2 FMA units of the widest vectors)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    found = re.search(r"^flags\s*:(.*)$", info, re.M)
    flags = set(found.group(1).split()) if found else set()
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)]
    if not mhz:
        return None
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    per_cycle = lanes * 2 * (2 if "fma" in flags or "avx512f" in flags else 1)
    return len(os.sched_getaffinity(0)) * (sum(mhz) / len(mhz)) / 1e3 * per_cycle


def make_runners(onnx_path: Path, torch_module: Any = None, engines: list[str] | None = None, *,
                 max_side: int = 1024, max_batch: int = 8, calibration: Path | None = None) -> dict[str, Runner]:
    """The engines to compare, each taking and returning network-range tensors.

    ``max_side`` and ``max_batch`` bound the inputs the TensorRT engine is built for (its optimization profile).
    ``calibration`` (a dataset or folder of SE images) adds the INT8 engines.
    """
    import importlib.util

    runners: dict[str, Runner] = {}
    wanted = set(engines) if engines else None

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    if want("dexrt"):
        runners["dexrt"] = _dexrt_runner(onnx_path)
    if want("openvino-python"):
        runners["openvino-python"] = _openvino_runner(onnx_path, {"INFERENCE_PRECISION_HINT": "f32"})
    if want("openvino-python-default"):
        runners["openvino-python-default"] = _openvino_runner(onnx_path, {})
    if calibration is not None and want("dexrt-int8"):
        runners["dexrt-int8"] = _dexrt_runner(onnx_path, calibration)
    if calibration is not None and want("openvino-python-int8"):
        runners["openvino-python-int8"] = _openvino_runner(onnx_path, {"INFERENCE_PRECISION_HINT": "f32"},
                                                           calibration)
    if want("onnxruntime") and importlib.util.find_spec("onnxruntime"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # ONNX Runtime's threads spin-wait after a run by default: in interleaved rounds they would take the
        # cores from whichever engine runs next
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        runners["onnxruntime"] = lambda x: session.run(None, {name: x})[0]
    if torch_module is not None and importlib.util.find_spec("torch"):
        import torch

        module = torch_module.eval()
        if want("torch-eager"):
            runners["torch-eager"] = lambda x: _torch_run(module, x, channels_last=False)
        if want("torch-channels-last"):
            cl = module.to(memory_format=torch.channels_last)
            runners["torch-channels-last"] = lambda x: _torch_run(cl, x, channels_last=True)
        if torch.cuda.is_available():
            import copy

            for name, dtype in (("torch-cuda-fp32", torch.float32), ("torch-cuda-fp16", torch.float16)):
                if want(name):
                    gpu = copy.deepcopy(module).to(device="cuda", dtype=dtype)
                    runners[name] = functools.partial(_torch_cuda_run, gpu, dtype=dtype)
    if want("dexrt-tensorrt-fp16"):
        from dexrt.runtime.gpu import gpu_available

        if _core_has_tensorrt() and gpu_available() and importlib.util.find_spec("tensorrt"):
            runners["dexrt-tensorrt-fp16"] = _tensorrt_runner(onnx_path, max_side, max_batch)
    return runners


def _core_has_tensorrt() -> bool:
    from dexrt import _core

    return bool(_core.tensorrt.compiled)


def _torch_cuda_run(module: Any, x: np.ndarray, dtype: Any) -> np.ndarray:
    import torch

    with torch.inference_mode():
        t = torch.from_numpy(x).to(device="cuda", dtype=dtype, non_blocking=False)
        return module(t).float().cpu().numpy()  # .cpu() waits for the GPU


def _torch_run(module: Any, x: np.ndarray, *, channels_last: bool) -> np.ndarray:
    import torch

    with torch.inference_mode():
        t = torch.from_numpy(x)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return module(t).contiguous().numpy()


def _dexrt_runner(onnx_path: Path, calibration: Path | None = None) -> Runner:
    """dexrt's engine (INT8 with ``calibration``) with identity windows ([-1, 1] <-> [-1, 1]), so it consumes
    network-range input directly."""
    from dexrt.build.openvino import build_openvino, read_onnx_contract
    from dexrt.runtime.engine import Engine

    contract = read_onnx_contract(onnx_path)
    if calibration is None:
        manifest, payload = build_openvino(contract, onnx_path)
    else:
        from dexrt.build.quantize import quantize_openvino

        manifest, payload = quantize_openvino(contract, onnx_path, calibration)
    engine = Engine.from_parts(manifest, payload, network_io=True)  # the public Engine users call
    return lambda x: np.stack(engine.infer(x[:, 0]), axis=1)  # (N, 1, H, W) -> (N, C, H, W)


def _tensorrt_runner(onnx_path: Path, max_side: int, max_batch: int) -> Runner:
    """dexrt's TensorRT FP16 engine (GPU 0) with identity windows, built for batches 1..max_batch of
    sides up to ``max_side``; tuned for one image of 512x512 (or ``max_side`` when smaller)."""
    from dexrt.build.openvino import read_onnx_contract
    from dexrt.build.tensorrt import build_tensorrt
    from dexrt.runtime.engine import Engine

    contract = read_onnx_contract(onnx_path)
    m = contract.size_multiple
    side = -(-max_side // m) * m
    opt = min(side, -(-512 // m) * m)
    manifest, payload = build_tensorrt(contract, onnx_path, precision="fp16", min_shape=(1, m, m),
                                       opt_shape=(1, opt, opt), max_shape=(max_batch, side, side), contexts=1)
    engine = Engine.from_parts(manifest, payload, network_io=True, device="gpu", contexts=1)
    return lambda x: np.stack(engine.infer(x[:, 0]), axis=1)  # (N, 1, H, W) -> (N, C, H, W)


def _openvino_runner(onnx_path: Path, config: dict[str, str], calibration: Path | None = None) -> Runner:
    """OpenVINO's own Python API, compiled per input shape like dexrt does (static shapes, latency hint, and
    `config`); with ``calibration``, the model NNCF's post-training quantization makes with its defaults."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(onnx_path))
    if calibration is not None:
        import nncf

        model = nncf.quantize(model, nncf.Dataset(_calibration_inputs(onnx_path, calibration)))
    compiled: dict[tuple[int, ...], Any] = {}

    def run(x: np.ndarray) -> np.ndarray:
        if x.shape not in compiled:
            m = model.clone()
            m.reshape(list(x.shape))
            compiled[x.shape] = core.compile_model(m, "CPU", {"PERFORMANCE_HINT": "LATENCY", **config}
                                                   ).create_infer_request()
        request = compiled[x.shape]
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()

    return run


def _calibration_inputs(onnx_path: Path, calibration: Path, size: int | None = None,
                        limit: int = 300) -> list[np.ndarray]:
    """SE images of `calibration` as network inputs (1, 1, H, W), as dexrt pre-processes them; resized to
    `size` a side first when given."""
    from dexrt.build.openvino import read_onnx_contract
    from dexrt.io.images import read_radiograph
    from dexrt.build.quantize import calibration_files, network_input

    contract = read_onnx_contract(onnx_path)
    out = []
    for path in calibration_files(calibration, limit):
        image = read_radiograph(path).frames[0]
        out.append(network_input(image if size is None else resized(image, size), contract))
    return out


def resized(image: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize to size x size: for timing, only the shape and the kind of content matter."""
    rows = np.arange(size) * image.shape[0] // size
    cols = np.arange(size) * image.shape[1] // size
    return np.ascontiguousarray(image[rows][:, cols])


def measure_rounds(runners: dict[str, Runner], x: np.ndarray, *, min_seconds: float, min_rounds: int = 5
                   ) -> dict[str, list[float]]:
    """Wall times in seconds per engine, measured in interleaved rounds: each round runs every engine once, in an
    order rotated from round to round, so a slow phase of a shared machine hits all engines alike. Every engine
    has had one warm-up run before."""
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < min_seconds * len(names):
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            runners[name](x)
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return times


def round_ratios(times: list[float], reference: list[float]) -> tuple[float, tuple[float, float]]:
    """Median and quartiles of the per-round ratios ``times[i] / reference[i]``."""
    ratios = np.asarray(times) / np.asarray(reference)
    q1, median, q3 = (float(v) for v in np.percentile(ratios, [25, 50, 75]))
    return median, (q1, q3)


def run_suite(onnx_path: Path, *, sizes: list[int], batches: list[int], torch_module: Any = None,
              engines: list[str] | None = None, min_seconds: float = 2.0, calibration: Path | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    runners = make_runners(onnx_path, torch_module, engines, max_side=max(sizes), max_batch=max(batches),
                           calibration=calibration)
    peak = cpu_peak_gflops()
    results: list[Result] = []
    rng = np.random.default_rng(0)
    for size in sizes:
        flops = conv_flops(onnx_path, size, size)
        for batch in batches:
            if calibration is None:
                x = rng.uniform(-1, 1, (batch, 1, size, size)).astype(np.float32)
            else:  # a real image: INT8 ranges were calibrated on images, not on noise
                x = np.repeat(_calibration_inputs(onnx_path, calibration, size, limit=1)[0], batch, axis=0)
            reference = None
            errors = {}
            for name, runner in runners.items():  # the check is also each engine's warm-up run
                out = runner(x)
                reference = out if reference is None else reference
                errors[name] = float(np.abs(out - reference).max())
                if errors[name] > tolerance(name):
                    raise AssertionError(f"{name} differs from {next(iter(runners))} by {errors[name]:.2e} at "
                                         f"{size}x{size} batch {batch}")
            if progress:
                progress(f"{', '.join(runners)} {size}x{size} batch {batch}, interleaved")
            times = measure_rounds(runners, x, min_seconds=min_seconds)
            first = next(iter(runners))
            for name in runners:
                p50 = statistics.median(times[name])
                gflops = flops * batch / p50 / 1e9
                ratio, quartiles = round_ratios(times[name], times[first])
                results.append(Result(
                    engine=name, height=size, width=size, batch=batch, p50_ms=p50 * 1e3,
                    p99_ms=float(np.percentile(times[name], 99)) * 1e3, images_per_s=batch / p50, gflops=gflops,
                    peak_percent=100 * gflops / peak if peak and name not in GPU_ENGINES else None,  # CPU's peak
                    max_abs_error=errors[name], repeats=len(times[name]), ratio_to_reference=ratio,
                    ratio_quartiles=quartiles))
    return {
        "schema": SCHEMA,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "processor": _cpu_name(), "cpus": len(os.sched_getaffinity(0)),
                    "peak_gflops_estimate": peak},
        "libraries": _versions(),
        "model": {"onnx": str(onnx_path), "reference": next(iter(runners)),
                  "calibration": None if calibration is None else str(calibration)},
        "results": [asdict(r) for r in results],
    }


def _cpu_name() -> str:
    try:
        match = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        return match.group(1) if match else platform.processor()
    except OSError:
        return platform.processor()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("dexrt", "openvino", "onnxruntime", "torch", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def format_table(report: dict[str, Any]) -> str:
    """One line per engine and shape; "vs dexrt" is the median per-round time ratio with its quartiles."""
    lines = [f"{'engine':22s} {'size':>9s} {'batch':>5s} {'p50 ms':>9s} {'p99 ms':>9s} {'img/s':>8s} "
             f"{'GFLOP/s':>8s} {'% peak':>7s} {'vs dexrt [quartiles]':>22s}"]
    for r in report["results"]:
        peak = f"{r['peak_percent']:6.1f}%" if r["peak_percent"] is not None else "    n/a"
        q1, q3 = r["ratio_quartiles"]
        lines.append(f"{r['engine']:22s} {r['height']:>4d}x{r['width']:<4d} {r['batch']:>5d} {r['p50_ms']:9.2f} "
                     f"{r['p99_ms']:9.2f} {r['images_per_s']:8.2f} {r['gflops']:8.1f} {peak} "
                     f"{r['ratio_to_reference']:6.2f}x [{q1:.2f}, {q3:.2f}]")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency (p50 per image) against image size, one line per engine and batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = sorted({(r["engine"], r["batch"]) for r in report["results"]})
    for engine, batch in keys:
        rows = sorted((r for r in report["results"] if r["engine"] == engine and r["batch"] == batch),
                      key=lambda r: r["height"])
        ax.plot([r["height"] for r in rows], [r["p50_ms"] / batch for r in rows], marker="o",
                label=f"{engine} (batch {batch})")
    ax.set_xlabel("image size (pixels a side)")
    ax.set_ylabel("p50 latency per image (ms)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{report['machine']['processor']}, {report['machine']['cpus']} CPUs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    from dexrt._atomic import atomic_write

    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def save(report: dict[str, Any], path: Path) -> None:
    from dexrt._atomic import atomic_write

    with atomic_write(path) as f:
        f.write((json.dumps(report, indent=2) + "\n").encode())
