"""Batched runtime: futures from many threads, each result its own, errors isolated, closing with work queued."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Future
from pathlib import Path

import numpy as np
import pytest

import dexrt


def image(seed: int, shape=(64, 64), dtype=np.uint16) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 60000).astype(dtype)


def submit_from_threads(engine: dexrt.Engine, images: list[np.ndarray], threads: int) -> list[Future]:
    futures: list[Future | None] = [None] * len(images)

    def client(k: int) -> None:
        for i in range(k, len(images), threads):
            futures[i] = engine.submit(images[i])

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return futures  # type: ignore[return-value]


def test_8_threads_x_1000_submits_each_get_their_own_result(plain_engine_path: Path) -> None:
    # Distinct images; several sizes and both dtypes, so batches must be formed from compatible requests only.
    shapes = [(64, 64), (64, 64), (48, 80), (64, 64)]
    images = [image(i, shapes[i % 4], np.float32 if i % 7 == 0 else np.uint16) for i in range(8000)]
    with dexrt.Engine(plain_engine_path, max_batch=8, max_delay_us=500) as direct:
        expected = [direct.infer(x) for x in images]
    with dexrt.Engine(plain_engine_path, max_batch=8, max_delay_us=500) as engine:
        futures = submit_from_threads(engine, images, threads=8)
        results = [f.result(timeout=120) for f in futures]
        stats = engine.stats()
    for got, want in zip(results, expected):  # bitwise, CPU FP32
        assert len(got) == 2
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[0].dtype == want[0].dtype and got[0].shape == want[0].shape
    assert stats["requests"] == 8000  # none lost, none duplicated
    assert sum(size * count for size, count in stats["batch_sizes"].items()) == 8000
    assert max(stats["batch_sizes"]) <= 8
    assert max(stats["batch_sizes"]) > 1  # batching happened
    assert all(size & (size - 1) == 0 for size in stats["batch_sizes"])  # 1, 2, 4, 8 only


def test_unet_batched_results_equal_single_requests(unet_engine_path: Path) -> None:
    images = [image(100 + i, (256, 256), np.float32) for i in range(24)]
    with dexrt.Engine(unet_engine_path, max_batch=4, max_delay_us=20000) as engine:
        expected = [engine.infer(x) for x in images]
        engine.reset_stats()
        results = [f.result(timeout=120) for f in submit_from_threads(engine, images, threads=8)]
        sizes = engine.stats()["batch_sizes"]
    assert max(sizes) > 1
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_invalid_input_fails_only_its_own_future(plain_engine_path: Path) -> None:
    with dexrt.Engine(plain_engine_path, max_delay_us=5000) as engine:
        good = [image(i) for i in range(6)]
        futures = [engine.submit(x) for x in good[:3]]
        bad = [engine.submit(np.zeros((64, 64), np.int32)), engine.submit(np.zeros((2, 64, 64), np.uint16)),
               engine.submit(np.full((64, 64), np.inf, np.float32))]
        futures += [engine.submit(x) for x in good[3:]]
        for f in bad:
            assert isinstance(f.exception(timeout=10), dexrt.InputError)
        for f, x in zip(futures, good):
            np.testing.assert_array_equal(f.result(timeout=10)[0], engine.infer(x)[0])


def test_close_drains_pending_work(plain_engine_path: Path) -> None:
    engine = dexrt.Engine(plain_engine_path, max_batch=2, max_delay_us=0, workers=1)
    futures = [engine.submit(image(i, (256, 256))) for i in range(40)]
    engine.close()
    assert all(f.done() and not f.cancelled() for f in futures)
    assert all(f.result()[0].shape == (256, 256) for f in futures)
    with pytest.raises(dexrt.EngineError, match="closed"):
        engine.submit(image(0))
    with pytest.raises(dexrt.EngineError, match="closed"):
        engine.infer(image(0))
    engine.close()  # idempotent


def test_close_with_cancel(plain_engine_path: Path) -> None:
    engine = dexrt.Engine(plain_engine_path, max_batch=1, max_delay_us=0, workers=1)
    futures = [engine.submit(image(i, (512, 512))) for i in range(200)]
    engine.close(cancel=True)
    cancelled = [f for f in futures if f.cancelled()]
    finished = [f for f in futures if not f.cancelled()]
    assert cancelled, "some queued requests should have been cancelled"
    assert all(f.done() for f in futures)
    for f in finished:
        assert f.result()[0].shape == (512, 512)
    with pytest.raises(CancelledError):
        cancelled[0].result()


def test_caller_cancelled_future_does_not_disturb_others(plain_engine_path: Path) -> None:
    with dexrt.Engine(plain_engine_path, max_batch=4, max_delay_us=50000, workers=1) as engine:
        futures = [engine.submit(image(i)) for i in range(4)]
        futures[1].cancel()
        for i in (0, 2, 3):
            assert futures[i].result(timeout=10)[0].shape == (64, 64)


def test_context_manager_and_callbacks(plain_engine_path: Path) -> None:
    seen: list[int] = []
    done = threading.Event()
    with dexrt.Engine(plain_engine_path) as engine:
        future = engine.submit(image(1))
        future.add_done_callback(lambda f: (seen.append(f.result()[0].shape[0]), done.set()))
        assert done.wait(10)
    assert seen == [64]


def test_stats_report_stages_and_batch_sizes(plain_engine_path: Path) -> None:
    with dexrt.Engine(plain_engine_path, max_batch=4, max_delay_us=100000, workers=1) as engine:
        for f in [engine.submit(image(i)) for i in range(8)]:
            f.result(timeout=10)
        s = engine.stats()
    assert s["requests"] == 8
    assert set(s["batch_sizes"]) <= {1, 2, 4}  # powers of two only (OpenVINO compiles one model per size)
    for stage in ("queue_us", "pre_us", "infer_us", "post_us", "total_us"):
        assert s[stage]["count"] > 0
        assert 0 <= s[stage]["p50"] <= s[stage]["p99"] <= s[stage]["max"]
    assert s["total_us"]["p50"] >= s["infer_us"]["p50"] / 4  # a request's latency includes its batch's inference


def test_bad_batcher_options(plain_engine_path: Path) -> None:
    with pytest.raises(ValueError):
        dexrt.Engine(plain_engine_path, max_batch=0)
    with pytest.raises(ValueError):
        dexrt.Engine(plain_engine_path, max_delay_us=-1)
