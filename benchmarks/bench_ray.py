"""`dexrt infer --ray` on a local Ray cluster against the single-process `dexrt infer`, same folder, same engine.

A folder of 64 256x256 16-bit PNGs through the bundled default engine. Single process: load the engine, convert
with `dexrt.pipelines.convert.Converter` (what `dexrt infer` runs; OpenVINO uses every core). Ray: a local Ray instance
already running (like a long-lived cluster; its start is timed once on its own), then `RayConverter.run` with
one actor per CPU, each with one engine on one inference thread; each round includes the actors' start and
engine load, as a `dexrt infer --ray` command does. Rounds alternate, so load from elsewhere on the machine hits
both alike. Both runs must write identical files.

    python -m pytest benchmarks/bench_ray.py -s
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest

import dexrt
from dexrt.pipelines.convert import FOLDER_ENGINE_OPTIONS, Converter
from dexrt.io.layout import find_images
from dexrt.pipelines.distributed import DEFAULT_BATCH, RayConverter
from dexrt.models import DEFAULT_ENGINE

N_FILES = 64
SIZE = (256, 256)
ROUNDS = 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import write_random_pngs  # tests/helpers.py

    return write_random_pngs(tmp_path_factory.mktemp("pngs"), N_FILES, SIZE)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    print(f"\nRay local instance started in {time.perf_counter() - start:.1f} s")
    yield int(ray.cluster_resources()["CPU"])
    ray.shutdown()


def single_process(sources: list[Path], out: Path) -> list:
    with dexrt.Engine(DEFAULT_ENGINE, **FOLDER_ENGINE_OPTIONS) as engine:
        return list(Converter(engine, out, overwrite=True).run(sources))


def on_ray(sources: list[Path], out: Path, actors: int, arrivals: list[float]) -> list:
    outcomes = []
    for outcome in RayConverter(out, actors=actors, overwrite=True).run(sources):
        outcomes.append(outcome)
        arrivals.append(time.perf_counter())
    return outcomes


@pytest.mark.benchmark(group=f"folder of {N_FILES} PNG16 {SIZE[0]}x{SIZE[1]}, default engine")
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
def test_ray_vs_single_process(benchmark, folder: Path, ray_cluster: int, tmp_path: Path) -> None:
    sources = find_images(folder)
    times: dict[str, list[float]] = {"single": [], "ray": []}
    steady: list[float] = []  # Ray, once the actors run: files after the first batch / time to the last file

    def pair() -> None:
        start = time.perf_counter()
        single = single_process(sources, tmp_path / "single")
        middle = time.perf_counter()
        arrivals: list[float] = []
        distributed = on_ray(sources, tmp_path / "ray", ray_cluster, arrivals)
        times["single"].append(middle - start)
        times["ray"].append(time.perf_counter() - middle)
        # From the end of the first batch (the actors have started and loaded their engines) to the last file.
        steady.append((len(arrivals) - DEFAULT_BATCH) / (arrivals[-1] - arrivals[DEFAULT_BATCH - 1]))
        assert all(o.ok for o in single) and all(o.ok for o in distributed) and len(distributed) == N_FILES

    benchmark.pedantic(pair, rounds=ROUNDS, warmup_rounds=1)
    for source in sources:  # identical files
        for channel in ("bone", "soft"):
            name = f"{source.stem}_{channel}.png"
            assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
    rates = {k: N_FILES / statistics.median(v) for k, v in times.items()}
    benchmark.extra_info.update({f"{k}_images_per_s": round(r, 2) for k, r in rates.items()})
    benchmark.extra_info["ray_steady_images_per_s"] = round(statistics.median(steady), 2)
    benchmark.extra_info["ray_actors"] = ray_cluster
    print(f"\n{N_FILES} files: single process {statistics.median(times['single']):.1f} s "
          f"({rates['single']:.1f} images/s), Ray with {ray_cluster} actors {statistics.median(times['ray']):.1f} s "
          f"({rates['ray']:.1f} images/s; {statistics.median(steady):.1f} images/s once the actors run); "
          f"medians of {ROUNDS} alternating rounds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
