"""Closing a batched engine under pressure: waiters of cancelled futures are woken, and close() is idempotent from
any number of threads at once and from a future's done-callback (no stuck join, no hung process)."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import CancelledError, as_completed, wait
from pathlib import Path

import numpy as np
import pytest

import dexrt

TIMEOUT = 60  # generous for a shared 2-core machine; a regression hangs forever, so any finite bound tells


def image(seed: int, shape=(256, 256)) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 60000).astype(np.uint16)


def test_close_cancel_notifies_wait_and_as_completed(plain_engine_path: Path) -> None:
    engine = dexrt.Engine(plain_engine_path, max_batch=1, max_delay_us=0, workers=1)
    futures = [engine.submit(image(i)) for i in range(200)]
    engine.close(cancel=True)
    done, not_done = wait(futures, timeout=TIMEOUT)
    assert not not_done, f"{len(not_done)} futures never reported finished to concurrent.futures.wait"
    assert len(list(as_completed(futures, timeout=TIMEOUT))) == 200
    cancelled = [f for f in futures if f.cancelled()]
    assert cancelled, "requests queued behind one worker must have been cancelled"
    with pytest.raises(CancelledError):
        cancelled[-1].result(timeout=0)


def test_waiter_installed_before_close_is_woken(plain_engine_path: Path) -> None:
    # wait() registers its waiter on the futures first; the cancel must then reach that waiter, not only the
    # futures' own condition.
    engine = dexrt.Engine(plain_engine_path, max_batch=1, max_delay_us=0, workers=1)
    futures = [engine.submit(image(i)) for i in range(100)]
    result: list[set] = []
    waiter = threading.Thread(target=lambda: result.append(wait(futures, timeout=TIMEOUT).not_done))
    waiter.start()
    engine.close(cancel=True)
    waiter.join(TIMEOUT + 5)
    assert result == [set()]


def test_future_cancelled_by_its_caller_reaches_wait(plain_engine_path: Path) -> None:
    with dexrt.Engine(plain_engine_path, max_batch=1, max_delay_us=0, workers=1) as engine:
        futures = [engine.submit(image(i)) for i in range(30)]
        assert futures[-1].cancel()  # still queued behind 29 others
        _, not_done = wait(futures, timeout=TIMEOUT)
        assert not not_done
        assert futures[-1].cancelled() and not futures[0].cancelled()


@pytest.mark.parametrize("cancel", [False, True], ids=["drain", "cancel"])
def test_close_from_many_threads_at_once(plain_engine_path: Path, cancel: bool) -> None:
    engine = dexrt.Engine(plain_engine_path, max_batch=2, max_delay_us=0, workers=2)
    futures = [engine.submit(image(i)) for i in range(60)]
    start = threading.Barrier(8)

    def closer() -> None:
        start.wait()
        engine.close(cancel=cancel)

    threads = [threading.Thread(target=closer, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a close() call never returned"
    assert all(f.done() for f in futures)  # every closer returns only once the work is settled
    if not cancel:
        assert not any(f.cancelled() for f in futures)
    engine.close()  # and once more, after all of them


@pytest.mark.parametrize("cancel", [False, True], ids=["drain", "cancel"])
def test_close_from_a_done_callback(plain_engine_path: Path, cancel: bool) -> None:
    engine = dexrt.Engine(plain_engine_path, max_batch=1, max_delay_us=0, workers=2)
    closed_in_callback = threading.Event()
    errors: list[BaseException] = []

    def on_done(_future) -> None:
        try:
            engine.close(cancel=cancel)  # runs on a batcher worker thread
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        closed_in_callback.set()

    futures = [engine.submit(image(i)) for i in range(40)]
    futures[0].add_done_callback(on_done)
    assert closed_in_callback.wait(TIMEOUT)
    assert errors == []
    _, not_done = wait(futures, timeout=TIMEOUT)
    assert not not_done
    with pytest.raises(dexrt.EngineError, match="closed"):
        engine.submit(image(0))
    closer = threading.Thread(target=engine.close, daemon=True)  # the join left for a caller outside the workers
    closer.start()
    closer.join(TIMEOUT)
    assert not closer.is_alive()


def test_process_with_racing_closers_exits(plain_engine_path: Path) -> None:
    # Non-daemon threads stuck joining a worker kept the interpreter from ever exiting.
    script = f"""
import threading, numpy as np, dexrt
engine = dexrt.Engine({str(plain_engine_path)!r}, max_batch=1, max_delay_us=0, workers=2)
futures = [engine.submit(np.zeros((256, 256), np.uint16)) for _ in range(40)]
futures[3].add_done_callback(lambda f: engine.close(cancel=True))
threads = [threading.Thread(target=engine.close, args=(i % 2 == 0,)) for i in range(6)]
[t.start() for t in threads]
print("started")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT * 2)
    assert done.returncode == 0, done.stderr
    assert "started" in done.stdout


@pytest.mark.parametrize("which", ["normalised", "default"])
def test_normalised_engines_follow_the_executor_protocol(normalised_engine_path: Path, which: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Issue 31, row 7: the default (normalised) engine's futures are the batcher's own, one per request, so
    close(cancel=True) and a caller's cancel reach concurrent.futures.wait, and no done-callback meets
    InvalidStateError (once, an outer future was only .cancel()ed while an inner one raced it)."""
    path = normalised_engine_path if which == "normalised" else None
    n = 200 if which == "normalised" else 40
    engine = dexrt.Engine(path, max_batch=1, max_delay_us=0, workers=1)
    called: list[object] = []
    futures = [engine.submit(image(i, (64, 64))) for i in range(n)]
    for f in futures:
        f.add_done_callback(called.append)
    assert futures[-1].cancel()  # its caller gives up while it is queued
    futures[0].result(timeout=TIMEOUT)  # the first has run (on a loaded machine close could otherwise beat it)
    with caplog.at_level("ERROR", logger="concurrent.futures"):
        engine.close(cancel=True)
        _, not_done = wait(futures, timeout=TIMEOUT)
    assert not not_done, f"{len(not_done)} futures never reported finished to concurrent.futures.wait"
    assert len(called) == n  # every callback ran, once
    assert not [r for r in caplog.records if "exception calling callback" in r.getMessage()]
    assert futures[0].result(timeout=0)[0].shape == (64, 64)  # the first ran
    assert futures[-1].cancelled() and sum(f.cancelled() for f in futures) > 1
