"""The batched runtime: overhead of the batcher at batch 1, and throughput with concurrent clients."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import dexrt

SIZE = (256, 256)
IMAGES_PER_ROUND = 16


def frames(n: int) -> list[np.ndarray]:
    return [(np.random.default_rng(i).random(SIZE) * 60000).astype(np.uint16) for i in range(n)]


@pytest.fixture(scope="module")
def reference(unet_bundle_bench: Path) -> list[tuple[np.ndarray, ...]]:
    with dexrt.Engine(unet_bundle_bench) as engine:
        return [engine.infer(x) for x in frames(IMAGES_PER_ROUND)]


def check(results: list[tuple[np.ndarray, ...]], reference: list[tuple[np.ndarray, ...]]) -> None:
    for got, want in zip(results, reference):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.benchmark(group="batcher overhead, batch 1")
def test_direct_infer(benchmark, record, unet_bundle_bench: Path, reference) -> None:
    images = frames(1)
    with dexrt.Engine(unet_bundle_bench) as engine:
        engine.infer(images[0])  # compile
        result = benchmark(engine.infer, images[0])
    check([result], reference[:1])
    record("infer")


@pytest.mark.benchmark(group="batcher overhead, batch 1")
def test_submit_batch1(benchmark, record, unet_bundle_bench: Path, reference) -> None:
    images = frames(1)
    with dexrt.Engine(unet_bundle_bench, max_batch=1, max_delay_us=0, workers=1) as engine:
        engine.submit(images[0]).result()
        result = benchmark(lambda: engine.submit(images[0]).result())
    check([result], reference[:1])
    record("submit(max_batch=1).result()")


def run_clients(engine: dexrt.Engine, images: list[np.ndarray], clients: int) -> list[tuple[np.ndarray, ...]]:
    """`clients` threads, each submitting its share of frames one at a time and waiting for each (a console)."""
    results: list[tuple[np.ndarray, ...] | None] = [None] * len(images)

    def client(k: int) -> None:
        for i in range(k, len(images), clients):
            results[i] = engine.submit(images[i]).result()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results  # type: ignore[return-value]


@pytest.mark.benchmark(group=f"throughput, {IMAGES_PER_ROUND} frames of 256x256")
def test_sequential(benchmark, record, unet_bundle_bench: Path, reference) -> None:
    images = frames(IMAGES_PER_ROUND)
    with dexrt.Engine(unet_bundle_bench) as engine:
        engine.infer(images[0])
        results = benchmark.pedantic(lambda: [engine.infer(x) for x in images], rounds=3, warmup_rounds=1)
    check(results, reference)
    benchmark.extra_info["images_per_s"] = IMAGES_PER_ROUND / benchmark.stats.stats.median
    record("sequential infer")


@pytest.mark.parametrize("clients", [1, 4, 8])
@pytest.mark.benchmark(group=f"throughput, {IMAGES_PER_ROUND} frames of 256x256")
def test_concurrent_clients(benchmark, record, unet_bundle_bench: Path, reference, clients: int) -> None:
    images = frames(IMAGES_PER_ROUND)
    with dexrt.Engine(unet_bundle_bench, max_batch=8, max_delay_us=2000) as engine:
        run_clients(engine, images, clients)  # compile every batch size that will occur
        results = benchmark.pedantic(lambda: run_clients(engine, images, clients), rounds=3, warmup_rounds=1)
        benchmark.extra_info["batch_sizes"] = engine.stats()["batch_sizes"]
    check(results, reference)
    benchmark.extra_info["images_per_s"] = IMAGES_PER_ROUND / benchmark.stats.stats.median
    record(f"{clients} clients, submit")
