"""DRR benchmarks on the example chest CT (fetched once into the cache; skipped when it cannot be had).

    python -m pytest benchmarks/bench_drr.py --benchmark-columns=mean,stddev,rounds

  * end to end: `dexrt synth` of DEXRT_BENCH_VIEWS views (default 700) at 256x256, written to disk; the
    extrapolated time for 700 views is reported when fewer are timed (extra_info: extrapolated_700_s);
  * the projector alone (one 256x256 view, three material channels) and the polyenergetic sum;
  * DiffDRR (diffdrr==0.6.1, when importable) on the same rays: correlation >= 0.99 asserted, speed ratio
    reported. diffdrr pulls in pyvista[all] and more; the renderer needs only
    `pip install --no-deps diffdrr==0.6.1 fastcore einops torchio pandas` (and torch).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nibabel")

from dexrt.synth.ct import load_ct  # noqa: E402
from dexrt.synth.physics import PhysicsConfig  # noqa: E402
from dexrt.synth.render import ImagingConfig, Renderer, View  # noqa: E402
from dexrt.synth.volume import EXAMPLE_RULES  # noqa: E402

SIZE = 256


@pytest.fixture(scope="module")
def example():
    from dexrt.synth.example import ExampleUnavailable, fetch_example

    try:
        return fetch_example()
    except ExampleUnavailable as exc:
        pytest.skip(f"example CT unavailable: {exc}")


@pytest.fixture(scope="module")
def renderer(example):
    return Renderer(load_ct(*example), ImagingConfig(size=(SIZE, SIZE), rules=EXAMPLE_RULES,
                                                     physics=PhysicsConfig(noise=True)))


@pytest.mark.benchmark(group="synth-end-to-end")
def test_synth_700_views(benchmark, example, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dexrt.cli import cli

    views = int(os.environ.get("DEXRT_BENCH_VIEWS", "700"))
    out = tmp_path / "ds"
    result = {}

    def run() -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        res = CliRunner().invoke(cli, ["synth", "--ct", "example", "--views", str(views), "--size", str(SIZE),
                                       "-o", str(out), "--json"])
        assert res.exit_code == 0, res.output
        result.update(wall=time.perf_counter() - t0, cpu=time.process_time() - c0)

    benchmark.pedantic(run, rounds=1, iterations=1)
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["views"]) == views and m["size"] == [SIZE, SIZE]
    assert all((out / f).is_file() for v in m["views"][:: max(1, views // 20)] for f in v["files"].values())
    write_s = m["generator"]["seconds"]  # rendering + writing, without loading the CT and building the volume
    setup_s = result["wall"] - write_s
    benchmark.extra_info.update(views=views, wall_s=round(result["wall"], 1), cpu_s=round(result["cpu"], 1),
                                setup_s=round(setup_s, 1), per_view_s=round(write_s / views, 4),
                                extrapolated_700_s=round(setup_s + write_s * 700 / views, 1),
                                load_average=os.getloadavg()[0])


@pytest.mark.benchmark(group="projector")
def test_projector_one_view(benchmark, renderer) -> None:
    cb = renderer.cone_beam(View("v", 30.0, tilt_deg=3.0))
    line = benchmark(renderer.volume.line_integrals, [cb])
    assert line.shape == (1, 3, SIZE, SIZE) and np.isfinite(line).all()
    assert 5.0 < line[0].sum(axis=0).max() < 60.0  # g/cm^2 through a chest


@pytest.mark.benchmark(group="projector")
def test_polyenergetic_one_view(benchmark, renderer) -> None:
    line = renderer.volume.line_integrals([renderer.cone_beam(View("v", 30.0))])[0]
    mean, var = benchmark(renderer.physics.signals, line)
    assert mean.shape == (3, SIZE, SIZE) and np.all(mean > 0) and np.all(var > 0)


def _diffdrr_render(volume: np.ndarray, affine: np.ndarray, frame: dict, rows: int, cols: int):
    """DiffDRR's Siddon renderer on a density volume and the given rays; returns (image, seconds)."""
    import torch
    from diffdrr.drr import DRR
    from torchio import ScalarImage, Subject

    img = ScalarImage(tensor=torch.from_numpy(volume[None].copy()), affine=affine)
    subject = Subject(volume=img, density=img, mask=None, reorient=torch.eye(4), orientation=None, fiducials=None)
    drr = DRR(subject, sdd=1.0, height=rows, width=cols, delx=1.0, renderer="siddon")
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    target = frame["origin"] + c[..., None] * frame["col_step"] + r[..., None] * frame["row_step"]
    source = torch.tensor(frame["source"], dtype=torch.float32).reshape(1, 1, 3)
    target = torch.tensor(target.reshape(1, -1, 3), dtype=torch.float32)
    with torch.no_grad():
        t0 = time.perf_counter()
        out = drr.render(drr.density, source, target)
        seconds = time.perf_counter() - t0
    return out.reshape(rows, cols).numpy(), seconds


@pytest.mark.benchmark(group="diffdrr")
def test_line_integrals_agree_with_diffdrr(benchmark, renderer) -> None:
    pytest.importorskip("diffdrr", reason="diffdrr==0.6.1 not installed (see the module docstring)")
    vol = renderer.volume
    density = np.ascontiguousarray(vol.data.sum(axis=-1))  # (n0, n1, n2) total density, g/cm^3
    cb = renderer.cone_beam(View("v", 30.0, tilt_deg=3.0))
    frame = cb.frame()
    from dexrt import _core

    ours = benchmark(_core.drr_project, density, vol.affine, [cb])[0, 0]
    theirs, diffdrr_s = _diffdrr_render(density, vol.affine, frame, cb.rows, cb.cols)
    corr = float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1])
    ours_s = benchmark.stats.stats.mean
    benchmark.extra_info.update(correlation=round(corr, 6), diffdrr_s=round(diffdrr_s, 3),
                                dexrt_s=round(ours_s, 4), speedup=round(diffdrr_s / ours_s, 1),
                                max_rel_diff=float(np.abs(ours - theirs).max() / ours.max()))
    assert corr >= 0.99
