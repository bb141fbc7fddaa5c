"""`dexrt infer` on a folder of 256x256 16-bit PNGs against the engine's own throughput on the same images.

The engine's own throughput: the decoded frames already in memory, all submitted at once to the batched
runtime (nothing read, nothing written). The folder run: `dexrt.pipelines.convert.Converter`, the machinery behind
`dexrt infer` (find files, decode, submit, write two PNG outputs per file atomically), with the same engine
settings. Target: the folder run converts at >= 85% of the engine's throughput.

    python -m pytest benchmarks/bench_infer_folder.py
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import wait
from pathlib import Path

import numpy as np
import pytest

import dexrt
from dexrt.pipelines.convert import FOLDER_ENGINE_OPTIONS, Converter
from dexrt.io.layout import find_images
from dexrt.io.images import read_image

N_FILES = 32
SIZE = (256, 256)
GROUP = f"folder of {N_FILES} PNG16 {SIZE[0]}x{SIZE[1]}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import write_random_pngs  # tests/helpers.py

    return write_random_pngs(tmp_path_factory.mktemp("pngs"), N_FILES, SIZE)


@pytest.fixture(scope="module")
def engine(unet_bundle_bench: Path):
    with dexrt.Engine(unet_bundle_bench, **FOLDER_ENGINE_OPTIONS) as engine:
        yield engine


@pytest.fixture(scope="module")
def frames(folder: Path) -> list[np.ndarray]:
    return [read_image(p) for p in find_images(folder)]


@pytest.fixture(scope="module")
def reference(engine: dexrt.Engine, frames: list[np.ndarray]) -> list[tuple[np.ndarray, ...]]:
    return [engine.infer(x) for x in frames]


def engine_round(engine: dexrt.Engine, frames: list[np.ndarray]) -> list[tuple[np.ndarray, ...]]:
    futures = [engine.submit(x) for x in frames]
    wait(futures)
    return [f.result() for f in futures]


def folder_round(converter: Converter, folder: Path) -> list:
    return list(converter.run(find_images(folder)))


def check_outputs(out: Path, folder: Path, reference: list[tuple[np.ndarray, ...]]) -> None:
    for source, (bone, soft) in zip(find_images(folder), reference):
        np.testing.assert_array_equal(read_image(out / f"{source.stem}_bone.png"), bone)
        np.testing.assert_array_equal(read_image(out / f"{source.stem}_soft.png"), soft)


@pytest.mark.benchmark(group=GROUP)
def test_engine_throughput(benchmark, record, engine: dexrt.Engine, frames, reference) -> None:
    engine_round(engine, frames)  # compile every batch size that occurs
    results = benchmark.pedantic(engine_round, args=(engine, frames), rounds=5, warmup_rounds=1)
    for got, want in zip(results, reference):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    benchmark.extra_info["images_per_s"] = N_FILES / benchmark.stats.stats.median
    record("engine, frames in memory")


@pytest.mark.benchmark(group=GROUP)
def test_folder_conversion(benchmark, record, engine: dexrt.Engine, folder: Path, reference,
                           tmp_path: Path) -> None:
    converter = Converter(engine, tmp_path, overwrite=True)
    folder_round(converter, folder)
    outcomes = benchmark.pedantic(folder_round, args=(converter, folder), rounds=5, warmup_rounds=1)
    assert all(o.ok for o in outcomes) and len(outcomes) == N_FILES
    check_outputs(tmp_path, folder, reference)
    benchmark.extra_info["images_per_s"] = N_FILES / benchmark.stats.stats.median
    record("dexrt infer machinery, folder")


@pytest.mark.benchmark(group=GROUP)
def test_folder_vs_engine_interleaved(benchmark, engine: dexrt.Engine, folder: Path, frames, reference,
                                      tmp_path: Path) -> None:
    """Rounds alternate engine and folder runs, so load from elsewhere on the machine hits both alike; the
    median of the per-pair throughput ratios is the number to read."""
    converter = Converter(engine, tmp_path, overwrite=True)
    folder_round(converter, folder)
    ratios: list[float] = []

    def pair() -> None:
        start = time.perf_counter()
        engine_round(engine, frames)
        middle = time.perf_counter()
        folder_round(converter, folder)
        ratios.append((middle - start) / (time.perf_counter() - middle))

    benchmark.pedantic(pair, rounds=7, warmup_rounds=0)
    check_outputs(tmp_path, folder, reference)
    ratio = statistics.median(ratios)
    benchmark.extra_info["folder_vs_engine_throughput"] = round(ratio, 3)
    benchmark.extra_info["ratios"] = [round(r, 3) for r in ratios]
    print(f"\nfolder throughput / engine throughput: median {ratio:.3f} over {len(ratios)} pairs "
          f"({', '.join(f'{r:.2f}' for r in ratios)})")
    assert ratio >= 0.85, f"the folder run reached {ratio:.0%} of the engine's throughput (target 85%)"
