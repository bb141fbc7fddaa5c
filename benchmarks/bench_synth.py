"""Synth throughput on the example chest CT (fetched once into the cache; skipped when it cannot be had):
views per second written to disk at 256^2 and 512^2, with the fixed protocol and with the randomised imaging
chain and anatomy variation of a training pool (`dexrt synth --pool`), peers in the same run.

    python -m pytest benchmarks/bench_synth.py --benchmark-columns=mean,rounds

DEXRT_BENCH_SYNTH_VIEWS (default 48) views per case. The rate excludes loading the CT and building the material
volume (setup_s) and computing every SE spectrum the chain can draw once per process (spectra_s: 36 tube
voltages x 7 copper filters); it includes rendering, the chain, anatomy volumes (one per 16 views), PNG encoding
and writing (extra_info: views_per_s, s_per_view).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nibabel")

from dexrt.synth.anatomy import AnatomyConfig  # noqa: E402
from dexrt.synth.chain import ChainConfig  # noqa: E402
from dexrt.synth.ct import load_ct  # noqa: E402
from dexrt.synth.writer import DatasetConfig, write_dataset  # noqa: E402
from dexrt.synth.physics import PhysicsConfig  # noqa: E402
from dexrt.synth.render import ImagingConfig, Renderer  # noqa: E402
from dexrt.synth.volume import EXAMPLE_RULES  # noqa: E402

_renderers: dict[int, tuple[Renderer, float]] = {}
_spectra_s: list[float] = []


def _warm_spectra(r: Renderer, cfg: ChainConfig) -> float:
    """Every (kVp, copper) pair the chain can draw, once per process (spekpy is the slow part of a first view)."""
    from dexrt.synth.chain import CU_STEP, KVP_STEP, unit_exposure

    if not _spectra_s:
        t0 = time.perf_counter()
        for kvp in np.arange(cfg.kvp[0], cfg.kvp[1] + 1e-9, KVP_STEP):
            for cu in np.arange(cfg.cu_mm[0], cfg.cu_mm[1] + 1e-9, CU_STEP):
                unit_exposure(float(kvp), r.config.physics.se.al_mm, round(float(cu), 4), r.config.physics.detector)
        _spectra_s.append(time.perf_counter() - t0)
    return _spectra_s[0]


@pytest.fixture(scope="module")
def example():
    from dexrt.synth.example import ExampleUnavailable, fetch_example

    try:
        return load_ct(*fetch_example())
    except ExampleUnavailable as exc:
        pytest.skip(f"example CT unavailable: {exc}")


def _renderer(ct, size: int) -> tuple[Renderer, float]:
    if size not in _renderers:
        t0 = time.perf_counter()
        r = Renderer(ct, ImagingConfig(size=(size, size), rules=EXAMPLE_RULES, physics=PhysicsConfig(noise=True)))
        _renderers[size] = (r, time.perf_counter() - t0)
    return _renderers[size]


@pytest.mark.parametrize("size", [256, 512])
@pytest.mark.parametrize("mode", ["fixed", "pool"])
@pytest.mark.benchmark(group="synth-throughput")
def test_synth_throughput(benchmark, example, tmp_path: Path, size: int, mode: str) -> None:
    views = int(os.environ.get("DEXRT_BENCH_SYNTH_VIEWS", "48"))
    r, setup_s = _renderer(example, size)
    cfg = DatasetConfig(views=views, seed=3, contact_views=0)
    spectra_s = 0.0
    if mode == "pool":
        cfg.pool, cfg.chain, cfg.anatomy = True, ChainConfig(), AnatomyConfig()
        spectra_s = _warm_spectra(r, cfg.chain)
    out = tmp_path / f"{mode}{size}"
    result: dict = {}

    def run() -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        result["manifest"] = write_dataset(r, cfg, out)
        result.update(wall=time.perf_counter() - t0, cpu=time.process_time() - c0)

    benchmark.pedantic(run, rounds=1, iterations=1)
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["views"]) == views and m["size"] == [size, size]
    assert all((out / f).is_file() for v in m["views"] for f in v["files"].values())
    if mode == "pool":
        assert {v["split"] for v in m["views"]} == {"train"} and "se_raw" in m["channels"]
        assert all(70 <= v["chain"]["kvp"] <= 140 for v in m["views"])
    clipped = {c: e["clipped_fraction"] for c, e in m["encoding"].items()}
    assert clipped["bone"] < 0.01 and clipped["soft"] < 0.01, clipped
    benchmark.extra_info.update(views=views, size=size, mode=mode, wall_s=round(result["wall"], 2),
                                cpu_s=round(result["cpu"], 2), views_per_s=round(views / result["wall"], 3),
                                s_per_view=round(result["wall"] / views, 3), setup_s=round(setup_s, 1),
                                spectra_s=round(spectra_s, 1),
                                clipped=clipped, load_average=round(os.getloadavg()[0], 2),
                                threads=os.cpu_count(), volume_shape=list(np.shape(r.volume.data)))
