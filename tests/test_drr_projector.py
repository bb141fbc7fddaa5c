"""The Siddon projector against closed-form line integrals of analytic phantoms: slab, cylinder, sphere.

Phantom voxels hold their exact fractional occupancy (supersampled), so the only error left is the
voxelisation of a curved surface; tolerances below are in millimetres of path length.
"""

from __future__ import annotations

import numpy as np
import pytest

import dexrt
from dexrt import _core

VOXEL = 1.0  # mm
N = 96  # voxels per side; the grid is centred on the world origin
POSES = [  # (gantry, couch, tilt) degrees
    pytest.param(0.0, 0.0, 0.0, id="AP"),
    pytest.param(90.0, 0.0, 0.0, id="lateral"),
    pytest.param(33.0, 0.0, 12.0, id="oblique-tilt"),
    pytest.param(211.0, 17.0, -8.0, id="couch-tilt"),
]


def _affine() -> np.ndarray:
    a = np.eye(4) * VOXEL
    a[3, 3] = 1.0
    a[:3, 3] = -(N - 1) / 2.0 * VOXEL
    return a


def _centres() -> np.ndarray:
    return (np.arange(N) - (N - 1) / 2.0) * VOXEL


def _view(gantry: float, couch: float, tilt: float, rows: int = 40, cols: int = 48) -> _core.ConeBeam:
    return _core.ConeBeam(sid_mm=400.0, sdd_mm=700.0, rows=rows, cols=cols, pixel_row_mm=2.2, pixel_col_mm=2.0,
                          gantry_deg=gantry, couch_deg=couch, tilt_deg=tilt, iso_mm=[1.3, -0.7, 2.1])


def _rays(view: _core.ConeBeam) -> tuple[np.ndarray, np.ndarray]:
    f = view.frame()
    r, c = np.meshgrid(np.arange(view.rows), np.arange(view.cols), indexing="ij")
    pix = f["origin"] + c[..., None] * f["col_step"] + r[..., None] * f["row_step"]
    d = pix - f["source"]
    return f["source"], d / np.linalg.norm(d, axis=-1, keepdims=True)


def _occupancy_1d(lo: float, hi: float) -> np.ndarray:
    """Fraction of each voxel (along one axis) inside [lo, hi]."""
    c = _centres()
    return np.clip(np.minimum(c + VOXEL / 2, hi) - np.maximum(c - VOXEL / 2, lo), 0, None) / VOXEL


def _supersampled(inside, k: int = 6) -> np.ndarray:
    """(N, N, N) occupancy of the set `inside(x, y, z)`, by k^3 samples per voxel near its boundary."""
    c = _centres()
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    coarse = inside(x, y, z).astype(np.float32)
    # Voxels whose 27-neighbourhood is mixed sit on the boundary; only they are supersampled.
    from scipy import ndimage

    edge = ndimage.maximum_filter(coarse, 3) != ndimage.minimum_filter(coarse, 3)
    idx = np.argwhere(edge)
    off = (np.arange(k) + 0.5) / k - 0.5
    ox, oy, oz = (a.ravel() * VOXEL for a in np.meshgrid(off, off, off, indexing="ij"))
    px, py, pz = (c[idx[:, i]][:, None] for i in range(3))
    coarse[edge] = inside(px + ox, py + oy, pz + oz).mean(axis=1)
    return coarse


def _check_voxelised(err: np.ndarray, expected: np.ndarray, radius: float) -> None:
    """Voxelisation tolerances. A partial voxel holds the right volume but not the right chord for every ray
    through it, so rays crossing the surface obliquely err by up to a voxel or two, and a ray grazing the surface
runs through a band of partial voxels sqrt(2 r voxel) long (about 8 mm here); the error shrinks in
    proportion to the voxel size (measured: mean 0.29 mm at 1 mm voxels, 0.15 mm at 0.5 mm). Rays through
    the middle of the phantom must be right to 2 %, and the image as a whole to 0.5 %."""
    assert err.mean() < 0.35 * VOXEL, err.mean()
    assert np.percentile(err, 95) < 1.2 * VOXEL, np.percentile(err, 95)
    assert err.max() < 0.75 * np.sqrt(2.0 * radius * VOXEL), err.max()
    central = expected > 0.8 * expected.max()
    assert central.sum() > 50
    assert (err[central] / expected[central]).max() < 0.02


def _project(volume: np.ndarray, view: _core.ConeBeam, threads: int = 2) -> np.ndarray:
    return _core.drr_project(np.ascontiguousarray(volume, np.float32), _affine(), [view], threads)[0, 0]


@pytest.mark.parametrize("gantry, couch, tilt", POSES)
def test_slab_matches_closed_form(gantry: float, couch: float, tilt: float) -> None:
    # Slab -20 <= y <= 15 mm (voxel-aligned planes, so the phantom is exact), limited to |x|, |z| <= 40 mm.
    lo, hi = -20.0, 15.0
    vol = (_occupancy_1d(-40, 40)[:, None, None] * _occupancy_1d(lo, hi)[None, :, None]
           * _occupancy_1d(-40, 40)[None, None, :])
    view = _view(gantry, couch, tilt)
    src, d = _rays(view)
    # Closed form: the ray's parameter interval inside each pair of planes, intersected.
    t0, t1 = np.full(d.shape[:2], -np.inf), np.full(d.shape[:2], np.inf)
    for axis, (a, b) in enumerate(((-40.0, 40.0), (lo, hi), (-40.0, 40.0))):
        with np.errstate(divide="ignore"):
            ta, tb = (a - src[axis]) / d[..., axis], (b - src[axis]) / d[..., axis]
        t0, t1 = np.maximum(t0, np.minimum(ta, tb)), np.minimum(t1, np.maximum(ta, tb))
    expected = np.clip(t1 - t0, 0, None)
    got = _project(vol, view)
    assert expected.max() > 30.0  # the slab is in the beam
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("gantry, couch, tilt", POSES)
def test_cylinder_matches_closed_form(gantry: float, couch: float, tilt: float) -> None:
    # Cylinder along z: radius 30 mm, axis through (4, -3), capped at z = -35 and z = 30.
    r, cx, cy, z0, z1 = 30.0, 4.0, -3.0, -35.0, 30.0
    vol = _supersampled(lambda x, y, z: (((x - cx) ** 2 + (y - cy) ** 2) <= r * r) & (z >= z0) & (z <= z1))
    view = _view(gantry, couch, tilt)
    src, d = _rays(view)
    # Infinite cylinder: |(s + t d)_xy - c|^2 = r^2, then clip to the caps.
    q = src[:2] - np.array([cx, cy])
    a = d[..., 0] ** 2 + d[..., 1] ** 2
    b = d[..., 0] * q[0] + d[..., 1] * q[1]
    disc = b * b - a * (q @ q - r * r)
    root = np.sqrt(np.clip(disc, 0, None))
    ta, tb = (-b - root) / a, (-b + root) / a
    with np.errstate(divide="ignore"):
        za, zb = (z0 - src[2]) / d[..., 2], (z1 - src[2]) / d[..., 2]
    t0 = np.maximum(ta, np.minimum(za, zb))
    t1 = np.minimum(tb, np.maximum(za, zb))
    expected = np.where(disc > 0, np.clip(t1 - t0, 0, None), 0.0)
    got = _project(vol, view)
    err = np.abs(got - expected)
    assert abs(got.sum() / expected.sum() - 1.0) < 0.005
    assert expected.max() > 55.0
    _check_voxelised(err, expected, r)


@pytest.mark.parametrize("gantry, couch, tilt", POSES)
def test_sphere_matches_closed_form(gantry: float, couch: float, tilt: float) -> None:
    r, c = 33.0, np.array([-5.0, 6.0, 2.5])
    vol = _supersampled(lambda x, y, z: ((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) <= r * r)
    view = _view(gantry, couch, tilt)
    src, d = _rays(view)
    q = src - c
    b = d @ q
    disc = b * b - (q @ q - r * r)
    expected = 2.0 * np.sqrt(np.clip(disc, 0, None))
    got = _project(vol, view)
    err = np.abs(got - expected)
    assert abs(got.sum() / expected.sum() - 1.0) < 0.005
    assert expected.max() > 64.0
    _check_voxelised(err, expected, r)


def test_channels_threads_and_views_agree() -> None:
    rng = np.random.default_rng(3)
    vol = rng.uniform(0, 1, size=(N // 2, N // 2, N // 2, 3)).astype(np.float32)
    aff = _affine()
    aff[:3, :3] *= 2.0
    views = [_view(g, 0.0, t) for g, t in ((0.0, 0.0), (75.0, 5.0), (180.0, -3.0))]
    multi = _core.drr_project(vol, aff, views, 2)
    assert multi.shape == (3, 3, 40, 48) and multi.dtype == np.float32
    for ch in range(3):
        single = _core.drr_project(np.ascontiguousarray(vol[..., ch]), aff, views, 1)
        np.testing.assert_allclose(single[:, 0], multi[:, ch], rtol=1e-6, atol=1e-5)


def test_frame_conventions() -> None:
    v = _core.ConeBeam(sid_mm=1000, sdd_mm=1500, rows=3, cols=5, pixel_row_mm=1.0, pixel_col_mm=2.0)
    f = v.frame()
    np.testing.assert_allclose(f["source"], [0, 1000, 0])  # gantry 0: source anterior
    np.testing.assert_allclose(f["beam"], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(f["col_step"], [-2, 0, 0], atol=1e-12)  # columns towards the patient's left
    np.testing.assert_allclose(f["row_step"], [0, 0, -1], atol=1e-12)  # rows towards the feet
    np.testing.assert_allclose(f["origin"], [4, -500, 1], atol=1e-12)
    lat = _core.ConeBeam(sid_mm=1000, sdd_mm=1500, rows=3, cols=5, pixel_row_mm=1, pixel_col_mm=1, gantry_deg=90)
    np.testing.assert_allclose(lat.frame()["source"], [-1000, 0, 0], atol=1e-9)  # patient's left
    tilt = _core.ConeBeam(sid_mm=1000, sdd_mm=1500, rows=3, cols=5, pixel_row_mm=1, pixel_col_mm=1, tilt_deg=10)
    assert tilt.frame()["source"][2] > 100.0  # positive tilt: source towards the head


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({"sdd_mm": 900.0}, "source-detector distance", id="sdd-below-sid"),
        pytest.param({"sid_mm": -5.0}, "source-isocentre", id="negative-sid"),
        pytest.param({"rows": 0}, "rows and columns", id="no-rows"),
        pytest.param({"pixel_col_mm": 0.0}, "pixel spacing", id="zero-pixel"),
        pytest.param({"gantry_deg": float("nan")}, "finite", id="nan-angle"),
        pytest.param({"tilt_deg": 95.0}, "tilt", id="tilt-95"),
    ],
)
def test_absurd_geometry_is_refused(kwargs: dict, match: str) -> None:
    args = dict(sid_mm=1000.0, sdd_mm=1500.0, rows=8, cols=8, pixel_row_mm=1.0, pixel_col_mm=1.0)
    args.update(kwargs)
    with pytest.raises(dexrt.InputError, match=match):
        _core.ConeBeam(**args)


def test_volume_must_fit_between_source_and_detector() -> None:
    vol = np.ones((N, N, N), np.float32)
    near = _core.ConeBeam(sid_mm=40.0, sdd_mm=700.0, rows=4, cols=4, pixel_row_mm=1, pixel_col_mm=1)
    with pytest.raises(dexrt.InputError, match="behind the X-ray source"):
        _core.drr_project(vol, _affine(), [near])
    close = _core.ConeBeam(sid_mm=400.0, sdd_mm=430.0, rows=4, cols=4, pixel_row_mm=1, pixel_col_mm=1)
    with pytest.raises(dexrt.InputError, match="crosses the detector"):
        _core.drr_project(vol, _affine(), [close])


def test_bad_arrays_are_refused() -> None:
    view = _view(0, 0, 0)
    with pytest.raises(dexrt.InputError, match="float32"):
        _core.drr_project(np.ones((8, 8, 8)), _affine(), [view])
    with pytest.raises(dexrt.InputError, match="C-contiguous"):
        _core.drr_project(np.ones((8, 8, 16), np.float32)[:, :, ::2], _affine(), [view])
    with pytest.raises(dexrt.InputError, match="affine"):
        _core.drr_project(np.ones((8, 8, 8), np.float32), np.eye(3), [view])
    with pytest.raises(dexrt.InputError, match="singular"):
        _core.drr_project(np.ones((8, 8, 8), np.float32), np.zeros((4, 4)), [view])


def test_polyenergetic_sum_is_beer_lambert() -> None:
    rng = np.random.default_rng(0)
    line = rng.uniform(0, 30, size=(3, 7, 11)).astype(np.float32)
    mu = rng.uniform(0.1, 2.0, size=(3, 20))
    w = rng.uniform(0, 5, size=(2, 20))
    got = _core.drr_polyenergetic(line, mu, w, 2)
    expected = np.einsum("se,ehw->shw", w, np.exp(-np.einsum("ce,chw->ehw", mu, line.astype(np.float64))))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-300)
