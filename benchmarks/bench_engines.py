"""Engine latency against peers on the same weights: dexrt, OpenVINO's Python API, ONNX Runtime, torch eager
(NCHW and channels_last); on a CUDA GPU also torch eager FP32/FP16 there and dexrt's TensorRT FP16 engine (those
skip without one). Every benchmark checks its output against ONNX Runtime first.

    python -m pytest benchmarks/bench_engines.py [--ngf 32] [-k 256]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dexrt
from dexrt.pipelines.bench import GPU_ENGINES, make_runners, tolerance

ENGINES = ["dexrt", "openvino-python", "onnxruntime", "torch-eager", "torch-channels-last", *GPU_ENGINES]
SIZES = [256, 512, 1024]
BATCHES = [1, 4, 8]


@pytest.fixture(scope="session")
def torch_module(ngf: int):
    import torch

    from dexrt_train.networks import GeneratorConfig, define_G

    torch.manual_seed(0)  # the same weights as unet_onnx_bench
    return define_G(GeneratorConfig(ngf=ngf)).eval()


@pytest.fixture(scope="session")
def runners(unet_onnx_bench: Path, torch_module):
    return make_runners(unet_onnx_bench, torch_module, max_side=max(SIZES), max_batch=max(BATCHES))


@pytest.fixture(scope="session")
def inputs_and_reference(runners):
    cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def get(size: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        if (size, batch) not in cache:
            x = np.random.default_rng(size + batch).uniform(-1, 1, (batch, 1, size, size)).astype(np.float32)
            cache[(size, batch)] = (x, runners["onnxruntime"](x))
        return cache[(size, batch)]

    return get


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s}px")
def test_engine_latency(benchmark, record, runners, inputs_and_reference, engine: str, size: int, batch: int) -> None:
    benchmark.group = f"engine latency {size}x{size} batch {batch}"
    if engine not in runners:
        pytest.skip(f"{engine} is not available here (a CUDA GPU, and for TensorRT a TensorRT build of dexrt)")
    x, reference = inputs_and_reference(size, batch)
    run = runners[engine]
    out = run(x)  # warm-up (compiles static shapes) and correctness check
    assert out.shape == reference.shape
    assert np.abs(out - reference).max() <= tolerance(engine)
    rounds = 5 if size * size * batch <= 512 * 512 * 4 else 2
    benchmark.pedantic(run, args=(x,), rounds=rounds, warmup_rounds=0)
    benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median
    record(engine)


@pytest.mark.benchmark(group="end to end uint16 -> uint16, 512x512")
@pytest.mark.parametrize("engine", ["dexrt", "onnxruntime"])
def test_end_to_end_uint16(benchmark, record, unet_bundle_bench: Path, unet_onnx_bench: Path, engine: str) -> None:
    """dexrt's C++ value contract against the same pre/post written in numpy around ONNX Runtime."""
    image = (np.random.default_rng(0).random((512, 512)) * 65535).astype(np.uint16)
    dexrt_engine = dexrt.Engine(unet_bundle_bench)
    if engine == "dexrt":
        run = dexrt_engine.infer
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(unet_onnx_bench), providers=["CPUExecutionProvider"])

        def run(img: np.ndarray) -> tuple[np.ndarray, ...]:
            x = (img.astype(np.float32) * np.float32(2 / 65535) - 1)[None, None]
            y = session.run(None, {"se": x})[0][0]
            return tuple(np.clip(np.rint((c + 1) * np.float32(65535 / 2)), 0, 65535).astype(np.uint16) for c in y)

    expected = dexrt_engine.infer(image)
    got = run(image)
    for g, e in zip(got, expected):
        assert np.abs(g.astype(np.int64) - e).max() <= 2
    benchmark.pedantic(run, args=(image,), rounds=5, warmup_rounds=1)
    record(engine)
