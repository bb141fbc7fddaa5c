"""The randomised SE imaging chain, anatomy variation and training pools: each randomisation measured on a
rendered phantom against what was asked (docs/synth.md, "Imaging-chain randomisation"), and bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from dexrt import _core
from dexrt.synth.anatomy import AnatomyConfig, deform, draw_anatomy
from dexrt.synth.chain import GRID_PRIMARY_T, GRID_SCATTER_T, ChainConfig, draw_chain, se_image, unit_exposure
from dexrt.synth.ct import CTVolume
from dexrt.synth.writer import quantity_of
from dexrt.synth.processing import MARKER_TRANSMISSION, post_process
from dexrt.synth.render import Renderer, View
from test_synth import _imaging, _nifti, phantom

OFF = ChainConfig(kvp=None, cu_mm=None, dose_ugy=None, spr=None, grid_prob=0.0, blur_mm=None, electronic=None,
                  heel=None, collimation_prob=0.0, marker_prob=0.0, annotation_prob=0.0, processing_prob=0.0,
                  magnification=None, offset_mm=0.0)


def slab(half: bool = False) -> CTVolume:
    """A 120 mm water slab (along y, the AP beam at gantry 0) wider than the field; `half`: only x > 0."""
    shape = (140, 60, 140)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = -(np.array(shape) - 1) / 2.0 * 2.0
    hu = np.zeros(shape, np.float32)
    if half:
        hu[:70] = -1000.0
    return CTVolume(hu=hu, affine=aff, path="slab")


@pytest.fixture(scope="module")
def slab_r() -> Renderer:
    return Renderer(slab(), _imaging(size=64, noise=True))


@pytest.fixture(scope="module")
def edge_r() -> Renderer:
    return Renderer(slab(half=True), _imaging(size=128, noise=False))


def chain(r: Renderer, **changes):
    ch = draw_chain(OFF, r.config.physics.se, r.config.sid_mm, r.config.sdd_mm, r.body_radius_mm, seed=1)
    return dataclasses.replace(ch, **changes)


def se(r: Renderer, ch, noise_seed: int | None = None, gantry: float = 0.0) -> dict:
    line, _ = r.line_integrals(View("v", gantry, chain=ch))
    rng = None if noise_seed is None else np.random.default_rng(noise_seed)
    return se_image(line, ch, r.config.physics.detector, r.pixel_mm, rng, parts=True)


def test_neutral_chain_is_the_fixed_protocol(slab_r: Renderer) -> None:
    ch = chain(slab_r)
    assert (ch.kvp, ch.cu_mm, ch.dose_ugy) == (120.0, 0.1, 100.0) and ch.processing is None
    fixed = slab_r.render(View("v", 0.0), noise=False)["se"]
    np.testing.assert_allclose(se(slab_r, ch)["se_raw"], fixed, atol=2e-5)


def test_de_targets_do_not_see_the_se_chain() -> None:
    r = Renderer(phantom(rod_hu=1000.0, lungs=True), _imaging(size=48, noise=True))
    plain = r.render(View("v", 20.0, noise_seed=5), noise=False)
    cfg = dataclasses.replace(ChainConfig(), magnification=None, offset_mm=0.0, processing_prob=1.0)
    for seed in range(3):
        ch = draw_chain(cfg, r.config.physics.se, r.config.sid_mm, r.config.sdd_mm, r.body_radius_mm, seed)
        out = r.render(View("v", 20.0, noise_seed=5, chain=ch))
        assert not np.allclose(out["se"], plain["se"], atol=1e-3)  # the SE went through the chain ...
        for k in ("bone", "soft", "bone_ideal", "soft_ideal"):  # ... the targets did not
            np.testing.assert_array_equal(out[k], plain[k])


def test_kvp_and_copper_draws_and_their_effect(slab_r: Renderer) -> None:
    cfg = ChainConfig()
    draws = [draw_chain(cfg, slab_r.config.physics.se, 1000.0, 1500.0, 150.0, s) for s in range(300)]
    kvp = np.array([d.kvp for d in draws])
    assert kvp.min() == 70.0 and kvp.max() == 140.0 and np.all(kvp % 2 == 0) and 95 < kvp.mean() < 115
    cu = np.array([d.cu_mm for d in draws])
    assert cu.min() == 0.0 and cu.max() == 0.3
    assert draws[7].record() == draw_chain(cfg, slab_r.config.physics.se, 1000.0, 1500.0, 150.0, 7).record()
    # 12 cm of water: the attenuation falls with tube voltage and with copper (beam hardening).
    mid = (slice(24, 40), slice(24, 40))
    att = [float(se(slab_r, chain(slab_r, kvp=k, cu_mm=c))["se_raw"][mid].mean())
           for k, c in ((70.0, 0.0), (100.0, 0.0), (140.0, 0.0), (140.0, 0.3))]
    assert att[0] > att[1] > att[2] > att[3] > 1.5, att


def test_quantum_noise_follows_the_dose(slab_r: Renderer) -> None:
    mid = (slice(8, 56), slice(8, 56))
    measured, predicted = [], []
    for dose in (20.0, 200.0):
        ch = chain(slab_r, dose_ugy=dose)
        clean = se(slab_r, ch)["se_raw"][mid].astype(np.float64)
        measured.append(float(np.mean([np.var(se(slab_r, ch, noise_seed=s)["se_raw"][mid] - clean)
                                       for s in range(3, 7)])))
        # Predicted: var(-ln S) = var(S) / S^2 = 1 / N_eff, from the spectrum's absorbed-energy moments.
        line, _ = slab_r.line_integrals(View("v", 0.0))
        mu, w = unit_exposure(ch.kvp, ch.al_mm, ch.cu_mm, slab_r.config.physics.detector)
        m, v = _core.drr_polyenergetic(line, mu, w) * dose * (ch.sid_mm / ch.sdd_mm) ** 2 * slab_r.pixel_mm**2
        predicted.append(float(np.mean(v[mid] / m[mid] ** 2)))
    np.testing.assert_allclose(measured, predicted, rtol=0.06)  # 4 x 2304 pixels: the estimate's sd is 1.5 %
    assert 8.5 < measured[0] / measured[1] < 11.5  # a decade of dose, a decade of variance


@pytest.mark.parametrize("grid", [False, True], ids=["no-grid", "grid"])
def test_scatter_to_primary_behind_a_slab(slab_r: Renderer, grid: bool) -> None:
    mid = (slice(20, 44), slice(20, 44))
    ch = chain(slab_r, spr=0.8, scatter_sigma_mm=60.0, grid=grid)
    with_scatter = se(slab_r, ch)
    primary_only = se(slab_r, chain(slab_r, grid=grid))
    # The image itself: signal = P (1 + SPR), so the SPR is exp(difference of the logs) - 1.
    spr = np.exp(primary_only["se_raw"][mid].astype(np.float64) - with_scatter["se_raw"][mid]) - 1.0
    asked = 0.8 * (GRID_SCATTER_T / GRID_PRIMARY_T if grid else 1.0)
    np.testing.assert_allclose(spr.mean(), asked, rtol=0.03)
    assert ch.measured["spr_body"] == pytest.approx(asked, rel=1e-3)
    assert ch.record()["spr_with_grid"] == pytest.approx(asked, rel=1e-5)


def _edge_sigma_px(signal: np.ndarray) -> float:
    esf = signal[40:88].mean(axis=0)
    lsf = np.abs(np.diff(esf))
    c = int(np.argmax(lsf))
    lsf = lsf[c - 20:c + 21]
    x = np.arange(lsf.size)
    mu = (x * lsf).sum() / lsf.sum()
    return float(np.sqrt(((x - mu) ** 2 * lsf).sum() / lsf.sum()))


def test_detector_blur_measured_on_an_edge(edge_r: Renderer) -> None:
    sharp = _edge_sigma_px(se(edge_r, chain(edge_r))["signal"])
    for asked_mm in (4.0, 8.0):
        blurred = _edge_sigma_px(se(edge_r, chain(edge_r, blur_mm=asked_mm))["signal"])
        measured_mm = np.sqrt(blurred**2 - sharp**2) * edge_r.pixel_mm
        assert measured_mm == pytest.approx(asked_mm, rel=0.1), (measured_mm, asked_mm, sharp)


def test_electronic_noise_behind_the_collimator(slab_r: Renderer) -> None:
    ch = chain(slab_r, electronic=0.03, collimation={"margins": [0.35, 0.0, 0.0, 0.0], "rotation_deg": 0.0})
    out = se(slab_r, ch, noise_seed=4)
    dark = out["signal"][:12]  # rows the collimator shuts, beyond its penumbra
    assert np.all(out["fluence"][:12] == 0.0)
    assert float(dark.std() / np.sqrt(out["open_var"])) == pytest.approx(0.03, rel=0.06)


def test_heel_effect_profile(slab_r: Renderer) -> None:
    plain = se(slab_r, chain(slab_r))["se_raw"].astype(np.float64)
    heel = se(slab_r, chain(slab_r, heel={"anode_edge": 0.75, "axis": "rows+"}))["se_raw"]
    profile = np.exp(plain - heel).mean(axis=1)  # relative fluence per row
    assert np.all(np.diff(profile) < 0)  # falls towards the anode (the last row)
    assert profile[31:33].mean() == pytest.approx(1.0, abs=0.01)
    assert profile[-1] == pytest.approx(0.75, abs=0.015) and profile[0] > 1.0
    np.testing.assert_allclose(np.exp(plain - heel), np.tile(profile[:, None], (1, 64)), rtol=1e-5)


def test_collimation_fraction_and_markers(slab_r: Renderer) -> None:
    margins = [0.1, 0.2, 0.05, 0.15]
    ch = chain(slab_r, collimation={"margins": margins, "rotation_deg": 0.0},
               marker={"text": "L", "height_mm": 80.0, "corner": [0.5, 0.5]})
    out = se(slab_r, ch)
    asked = 1.0 - (1 - margins[0] - margins[1]) * (1 - margins[2] - margins[3])
    shut = float((out["fluence"] < 0.5).mean())
    assert shut == pytest.approx(asked, abs=1.5 * 4 / 64)  # within about a pixel per edge
    open_raw = se(slab_r, chain(slab_r))["se_raw"]
    glyph = np.isclose(out["fluence"], MARKER_TRANSMISSION)
    assert glyph.sum() > 12  # the lead letter, near the image centre where it was asked
    assert np.all(np.abs(np.argwhere(glyph).mean(axis=0) - 31.5) < 12)
    np.testing.assert_allclose((out["se_raw"] - open_raw)[glyph], -np.log(MARKER_TRANSMISSION), atol=1e-3)


def test_processing_luts_and_detail_gains() -> None:
    rows, cols = 64, 128
    ramp = np.tile(np.linspace(0.0, 4.0, cols), (rows, 1))
    field = np.ones((rows, cols), bool)
    base = {"window_pct": [0.0, 100.0], "lut": "gamma", "lut_param": 0.7, "equalise": None, "unsharp": None,
            "multiscale": None}
    out, win = post_process(ramp, field, base, 1.0)
    assert (win["lo"], win["hi"]) == (0.0, 4.0)
    u, v = ramp[0, 1:-1] / 4.0, out[0, 1:-1] / 4.0
    assert np.polyfit(np.log(u), np.log(v), 1)[0] == pytest.approx(0.7, abs=1e-6)  # the gamma asked
    # Unsharp masking multiplies fine detail by 1 + gain.
    x = np.arange(cols)
    detail = 2.0 + 0.1 * np.sin(2 * np.pi * x / 4.0)[None].repeat(rows, 0)
    detail[0], detail[-1] = 0.0, 4.0  # the window spans 0..4, so the enhanced detail is not clipped by the LUT
    p = {**base, "window_pct": [0.0, 100.0], "lut": "linear", "unsharp": {"sigma_mm": 12.0, "gain": 0.8}}
    sharp, win = post_process(detail, field, p, 1.0)
    amp = lambda a: float(np.abs(np.fft.rfft(a[32] - a[32].mean()))[cols // 4])  # noqa: E731
    assert amp(sharp) / amp(detail) == pytest.approx(1.8, rel=0.02)
    # Equalisation compresses large areas by its strength and keeps fine detail.
    scene = 0.2 + 2.0 * (x >= cols // 2)[None].repeat(rows, 0) + 0.1 * np.sin(2 * np.pi * x / 4.0)[None]
    scene[0], scene[-1] = 0.0, 2.6
    eq, _ = post_process(scene, field, {**base, "lut": "linear", "equalise": {"sigma_mm": 8.0, "strength": 0.5}},
                         1.0)
    step = lambda a: float(a[32, 96:112].mean() - a[32, 16:32].mean())  # noqa: E731
    assert step(eq) / step(scene) == pytest.approx(0.5, rel=0.05)
    fine = lambda a: float(np.std(a[32, 16:32]))  # noqa: E731  the detail on a plateau
    assert fine(eq) / fine(scene) == pytest.approx(1.0, rel=0.05)
    ms, _ = post_process(detail, field, {**base, "lut": "linear", "window_pct": [0.0, 100.0],
                                         "multiscale": {"base_mm": 2.0, "gains": [1.0, 1.0, 1.0, 1.0]}}, 1.0)
    np.testing.assert_allclose(ms, detail, atol=1e-9)


def test_processing_like_another_image_reuses_its_mapping() -> None:
    rng = np.random.default_rng(3)
    image = 1.0 + np.cumsum(rng.normal(0, 0.05, (48, 64)), axis=1)
    field = np.ones(image.shape, bool)
    p = {"window_pct": [1.0, 99.0], "lut": "sigmoid", "lut_param": 5.0, "equalise": {"sigma_mm": 6.0, "strength": 0.5},
         "unsharp": {"sigma_mm": 3.0, "gain": 1.0}, "multiscale": None}
    out, used = post_process(image, field, p, 1.0)
    np.testing.assert_array_equal(post_process(image, field, p, 1.0, like=used)[0], out)
    shifted = image + 0.3  # on its own histogram a uniform shift is windowed away; like the first, it is not
    np.testing.assert_allclose(post_process(shifted, field, p, 1.0)[0] - 0.3, out, atol=1e-9)
    assert not np.allclose(post_process(shifted, field, p, 1.0, like=used)[0], out, atol=1e-2)


def test_processed_targets_are_the_exact_parts_of_the_processed_se() -> None:
    """Through the whole chain (scatter, grid, markers, collimation, processing, annotation) the SE image is
    a + kb bone_processed + ks soft_processed to storage precision; the bone-free image keeps the SE's noise and is
    rib-free: where no ray crosses bone the two are the same image."""
    from dexrt.runtime.contract import decomposition

    r = Renderer(phantom(rod_hu=1000.0, lungs=True), _imaging(size=48, noise=True))
    everything = dataclasses.replace(ChainConfig(), magnification=None, offset_mm=0.0, processing_prob=1.0,
                                     annotation_prob=1.0, collimation_prob=1.0, marker_prob=1.0)
    # without collimator and text, which can hide the small rod
    open_field = dataclasses.replace(everything, annotation_prob=0.0, collimation_prob=0.0)
    for cfg, seed in ((everything, 0), (everything, 1), (everything, 2), (open_field, 3), (open_field, 4)):
        ch = draw_chain(cfg, r.config.physics.se, r.config.sid_mm, r.config.sdd_mm, r.body_radius_mm, seed)
        out = r.render(View("v", 20.0, noise_seed=5, chain=ch))
        bone, soft = out["bone_processed"], out["soft_processed"]
        a, kb, ks = decomposition(out["se"], bone, soft)
        assert kb > 0 and ks > 0
        np.testing.assert_allclose(a + kb * bone + ks * soft, out["se"], atol=1e-4)
        if cfg is open_field:
            # Far from the rod the bone image is almost empty: what is left is the rod's share of the scatter and
            # of the equalisation's wide low-pass, both of which the rod changes
            rod = out["bone_ideal"] > 0
            far = ~ndimage.binary_dilation(rod, iterations=8)
            assert np.abs(bone[far]).mean() < 0.05 * np.abs(bone[rod]).mean()
    plain = r.render(View("v", 20.0, noise_seed=5))
    np.testing.assert_array_equal(plain["bone_processed"], plain["bone"])  # no chain: the ideal pair


def test_processed_view_records_its_window_and_annotation(slab_r: Renderer) -> None:
    proc = {"window_pct": [1.0, 99.0], "lut": "sigmoid", "lut_param": 6.0, "equalise": None, "unsharp": None,
            "multiscale": None}
    ch = chain(slab_r, processing=proc, annotation={"text": "AB12", "height_mm": 60.0, "corner": [0.03, 0.5]})
    out = se(slab_r, ch, noise_seed=2)
    w = ch.measured["window"]
    assert w["lo"] < w["hi"] and ch.record()["se_stored"] == "processed"
    assert out["se"].min() >= w["lo"] - 1e-4 and out["se"].max() <= w["hi"] + 1e-4
    plain = se(slab_r, chain(slab_r, processing=proc), noise_seed=2)["se"]
    text = out["se"] != plain
    assert text.sum() > 20 and np.all(out["se"][text] == np.float32(w["hi"]))  # burnt-in, white, near the top
    assert np.argwhere(text)[:, 0].max() < 20
    assert not np.array_equal(out["se"], out["se_raw"])
    # Collimated views: the shut area ends at the window's bottom with a black shutter (top with a white one).
    coll = {"margins": [0.0, 0.0, 0.3, 0.0], "rotation_deg": 0.0}
    for shutter, edge in (("black", "lo"), ("white", "hi")):
        ch = chain(slab_r, processing={**proc, "shutter": shutter}, collimation=coll)
        out = se(slab_r, ch, noise_seed=2)
        shut = out["fluence"] < 0.5
        assert 0.25 < shut.mean() < 0.35
        np.testing.assert_allclose(out["se"][shut], ch.measured["window"][edge], atol=1e-4)  # recorded to 1e-5


def test_magnification_and_offset_move_the_shadow() -> None:
    r = Renderer(phantom(), _imaging(size=128, noise=False))  # a 160 mm water cylinder

    def shadow(ch) -> tuple[float, float]:
        cols = np.nonzero(se(r, ch)["se_raw"][64] > 0.5)[0]
        return float(cols.max() - cols.min() + 1), float(cols.mean())

    w12, c12 = shadow(chain(r, sid_mm=1250.0, sdd_mm=1500.0))
    w15, c15 = shadow(chain(r, sid_mm=1000.0, sdd_mm=1500.0))
    assert w15 / w12 == pytest.approx(1.5 / 1.2, rel=0.03)
    assert w15 * r.pixel_mm == pytest.approx(160.0 * 1.5, rel=0.05)
    _, c_off = shadow(chain(r, sid_mm=1000.0, sdd_mm=1500.0, offset_mm=(0.0, 20.0)))
    assert abs(c_off - c15) == pytest.approx(20.0 * 1.5 / r.pixel_mm, abs=0.6)
    cfg = dataclasses.replace(OFF, magnification=(1.0, 1.05), sdd_mm=(1500.0, 1500.0))
    floor = draw_chain(cfg, r.config.physics.se, 1000.0, 1500.0, r.body_radius_mm, 0)
    assert floor.sdd_mm - floor.sid_mm >= r.body_radius_mm + 10.0 - 1e-6  # the body still fits


def test_anatomy_scaling_and_bone_density() -> None:
    r = Renderer(phantom(rod_hu=1559.0), _imaging(size=96, noise=False))
    base = r.render(View("v", 0.0))
    an = dataclasses.replace(draw_anatomy(AnatomyConfig(elastic_mm=0.0), 0, 0, r.iso),
                             matrix=((1.1, 0.0, 0.0), (0.0, 0.9, 0.0), (0.0, 0.0, 1.0)), bone_density=1.2)
    big = r.render(View("v", 0.0, anatomy=an))
    # AP path through the centre shrinks with the depth factor; the shadow widens with the width factor.
    centre = (slice(40, 56), slice(46, 50))
    assert float(big["soft_ideal"][centre].mean() / base["soft_ideal"][centre].mean()) == pytest.approx(0.9, rel=0.02)
    width = [float((im["soft_ideal"][48] > 1.0).sum()) for im in (base, big)]
    assert width[1] / width[0] == pytest.approx(1.1, rel=0.04)
    # Bone density scales the bone line integrals exactly (the rod is too narrow for its sum to follow the
    # shape change at this ray spacing, so it is checked on the undeformed anatomy).
    dense = r.render(View("v", 0.0, anatomy=dataclasses.replace(an, matrix=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
                                                                            (0.0, 0.0, 1.0)))))
    np.testing.assert_allclose(dense["bone_ideal"], 1.2 * base["bone_ideal"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dense["soft_ideal"], base["soft_ideal"], rtol=1e-5, atol=1e-5)


def test_elastic_deformation_keeps_mass_and_moves_tissue() -> None:
    r = Renderer(phantom(rod_hu=1000.0, lungs=True), _imaging(size=48, noise=False))
    an = draw_anatomy(AnatomyConfig(scale=None, proportions=0.0, shear=0.0, elastic_mm=4.0), 3, 0, r.iso)
    vol = deform(r.volume, an)
    assert float(vol.data.sum() / r.volume.data.sum()) == pytest.approx(1.0, abs=0.03)
    changed = np.abs(vol.data - r.volume.data).max(axis=-1) > 0.05
    assert 0.005 < changed.mean() < 0.5
    np.testing.assert_array_equal(deform(r.volume, an).data, vol.data)  # drawn from the anatomy's seed


def test_pool_angles_stay_in_train_ranges() -> None:
    from dexrt.synth.pool import in_ranges, pool_angles
    from dexrt.synth.splits import SplitPlan

    plan = SplitPlan()
    angles = np.array(pool_angles(plan, 5000, np.random.default_rng(0), 0.3))
    ranges = plan.ranges()
    assert all(in_ranges(a, ranges["train"]) for a in angles)
    for split in ("val", "test"):  # never inside, never within the guard gap
        for a, b in ranges[split]:
            assert not np.any((angles - a) % 360.0 < (b - a))
            gap = np.minimum(np.abs((angles - a + 180) % 360 - 180), np.abs((angles - b + 180) % 360 - 180))
            assert gap.min() >= plan.guard_deg - 1e-6
    frontal = np.minimum(np.abs((angles + 180) % 360 - 180), np.abs(angles - 180)) <= 5.0
    assert 0.3 < frontal.mean() < 0.4  # the AP/PA share asked, plus the train arc's own frontal views


def test_cli_pool_and_fixed_encoding(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dexrt.cli import cli
    from dexrt.runtime.contract import fixed_encoding

    ct = phantom(lungs=True)
    path = _nifti(tmp_path / "ct.nii.gz", ct.hu, ct.affine)
    manifests = []
    for seed, extra in ((1, ["--pool", "12", "--anatomy-views", "4"]), (2, ["--views", "6", "--chain"])):
        out = tmp_path / f"o{seed}"
        res = CliRunner().invoke(cli, ["synth", "--ct", str(path), "--size", "32", "--detector-mm", "350", "-o",
                                       str(out), "--seed", str(seed), "--json", *extra])
        assert res.exit_code == 0, res.output
        manifests.append(json.loads((out / "manifest.json").read_text()))
    pool, plain = manifests
    assert pool["channels"] == ["se", "bone", "soft", "se_raw", "bone_processed", "soft_processed"]
    assert len(pool["views"]) == 12
    assert {v["split"] for v in pool["views"]} == {"train"} and pool["splits"]["val"]["views"] == 0
    assert len({v["anatomy"]["id"] for v in pool["views"]}) == 3 and "anatomy" not in plain["views"][0]
    for m in manifests:
        for c in m["channels"]:  # the same fixed window whatever the seed, views or chain
            want = fixed_encoding(quantity_of(c)).as_manifest()
            assert {k: m["encoding"][c][k] for k in ("offset", "scale")} == want
        for v in m["views"]:
            assert v["chain"]["kvp"] == v["protocol"]["se_kvp"] and 70 <= v["chain"]["kvp"] <= 140
            g = v["geometry"]
            assert g["pixel_at_iso_mm"] == pytest.approx(g["pixel_mm"] * g["sid_mm"] / g["sdd_mm"], rel=1e-4)
            assert v["files"]["se_raw"].startswith("se_raw/")


@pytest.mark.parametrize(
    "args, match",
    [
        pytest.param(["--chain", "--chain-kvp", "20,300"], "kVp range", id="kvp-range"),
        pytest.param(["--chain", "--chain-dose-ugy", "a,b"], "LO,HI or off", id="not-a-range"),
        pytest.param(["--chain", "--chain-spr", "2,1"], "LO <= HI", id="reversed"),
        pytest.param(["--chain", "--chain-grid-prob", "1.5"], "grid prob", id="probability"),
        pytest.param(["--chain", "--chain-prob", "-0.1"], "chain prob must", id="chain-share"),
        pytest.param(["--chain", "--chain-gamma", "off"], "needs LO,HI", id="gamma-off"),
        pytest.param(["--pool", "0"], "at least 1 view", id="empty-pool"),
        pytest.param(["--anatomy", "--anatomy-scale", "3,4"], "anatomy scale", id="scale"),
        pytest.param(["--pool", "4", "--ap-pa-prob", "2"], "AP/PA share", id="ap-pa"),
    ],
)
def test_cli_bad_chain_options(tmp_path: Path, args: list[str], match: str) -> None:
    from click.testing import CliRunner

    from dexrt.cli import cli

    ct = phantom(shape=(40, 40, 20))
    path = _nifti(tmp_path / "ct.nii.gz", ct.hu, ct.affine)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["synth", "--ct", str(path), "--views", "2", "--size", "32", "-o", str(out), *args])
    assert res.exit_code != 0 and match in res.output, res.output
    assert not out.exists()


def test_iter_views_renders_a_pool_on_the_fly() -> None:
    from dexrt.synth.writer import DatasetConfig, iter_views
    from dexrt.synth.pool import in_ranges

    r = Renderer(phantom(lungs=True), _imaging(size=32, noise=True))
    cfg = DatasetConfig(views=5, pool=True, chain=ChainConfig(), anatomy=AnatomyConfig(views_per_anatomy=2), seed=4)
    got = list(iter_views(r, cfg))
    assert len(got) == 5
    for rec, im in got:
        assert rec["split"] == "train" and in_ranges(rec["geometry"]["gantry_deg"], cfg.splits.ranges()["train"])
        assert set(im) >= {"se", "se_raw", "bone", "soft"} and all(np.isfinite(im[k]).all() for k in ("se", "bone"))
        assert rec["chain"]["measured"] is not None and rec["anatomy"]["id"] in (0, 1, 2)
    again = next(iter(iter_views(r, cfg)))[1]
    np.testing.assert_array_equal(again["se"], got[0][1]["se"])  # re-rendered bit for bit from the seed


def test_chain_leaves_the_plain_plan_alone() -> None:
    """Turning the chain on changes nothing else a view is planned with (angles, jitter, seeds, lesions)."""
    from dexrt.synth.writer import DatasetConfig, plan_views

    r = Renderer(phantom(lungs=True), _imaging(size=32, noise=True))
    plain, splits = plan_views(r, DatasetConfig(views=30, seed=9, tilt_jitter_deg=5.0, couch_jitter_deg=3.0))
    chained, splits2 = plan_views(r, DatasetConfig(views=30, seed=9, tilt_jitter_deg=5.0, couch_jitter_deg=3.0,
                                                   chain=ChainConfig(), anatomy=AnatomyConfig()))
    assert splits == splits2
    for a, b in zip(plain, chained):
        assert (a.gantry_deg, a.tilt_deg, a.couch_deg, a.noise_seed) == (b.gantry_deg, b.tilt_deg, b.couch_deg,
                                                                         b.noise_seed)
        assert a.chain is None and b.chain is not None and b.chain.seed == b.noise_seed


def test_chain_on_a_share_of_the_views() -> None:
    """--chain-prob P: about P of the views go through the chain, drawn per view from its own seed; the others are
    the plain plan's views and render as the fixed protocol, with se_raw the same image as se."""
    from dexrt.synth.writer import DatasetConfig, plan_views

    r = Renderer(phantom(lungs=True), _imaging(size=32, noise=True))
    plain, _ = plan_views(r, DatasetConfig(views=200, seed=3))
    full, _ = plan_views(r, DatasetConfig(views=200, seed=3, chain=ChainConfig()))
    part, _ = plan_views(r, DatasetConfig(views=200, seed=3, chain=ChainConfig(prob=0.3)))
    chained = [v.chain is not None for v in part]
    assert 0.2 < np.mean(chained) < 0.4
    for a, f, b in zip(plain, full, part):
        assert (a.gantry_deg, a.tilt_deg, a.noise_seed) == (b.gantry_deg, b.tilt_deg, b.noise_seed)
        assert b.chain is None or b.chain == f.chain  # a chained view draws the chain a full chain would
    unchained = next(i for i, c in enumerate(chained) if not c)
    im, ref = r.render(part[unchained]), r.render(plain[unchained])
    np.testing.assert_array_equal(im["se"], ref["se"])
    np.testing.assert_array_equal(im["se_raw"], im["se"])
    assert [v.chain is not None for v in plan_views(r, DatasetConfig(views=200, seed=3,
                                                                     chain=ChainConfig(prob=0.3)))[0]] == chained


def test_elastic_displacement_has_the_asked_size() -> None:
    """Deform a volume whose channels are its own coordinates (mm): trilinear resampling is exact on linear
    ramps, so the deformed values minus the originals are the displacement field itself."""
    from dexrt.synth.anatomy import _elastic

    shape, spacing = (60, 50, 40), np.array([3.0, 3.0, 3.0])
    ramps = np.stack(np.indices(shape, dtype=np.float32), axis=-1) * np.float32(3.0) + np.float32(1000.0)
    an = draw_anatomy(AnatomyConfig(elastic_mm=5.0, elastic_grid_mm=40.0), 1, 0, np.zeros(3))
    moved = _elastic(ramps, spacing, an)
    inner = (slice(12, -12),) * 3
    disp = (moved - ramps)[inner]  # (..., 3) mm
    rms = float(np.sqrt(np.mean(disp**2)))
    assert 0.6 * 5.0 < rms < 1.1 * 5.0, rms  # control points have sd 5 mm; the spline between them a little less
    # Smooth: the strain between neighbouring voxels (3 mm apart) stays below 1 (median about 0.13).
    assert float(np.abs(np.diff(disp, axis=0)).max()) < 3.0


def test_a_scale_free_model_trains_and_scores_on_the_processed_pair(tmp_path: Path) -> None:
    """Readers asked for the processed pair (the trainer and `dexrt eval` of a normalised model) get it from a
    chained dataset, and the normalised targets then add up to the normalised SE image exactly."""
    from click.testing import CliRunner

    from dexrt.cli import cli
    from dexrt.io.dataset import open_dataset
    from dexrt_train.data import PairedDataset, dataset_encodings, find_views

    ct = phantom(rod_hu=1000.0, lungs=True)
    path = _nifti(tmp_path / "ct.nii.gz", ct.hu, ct.affine)
    out = tmp_path / "chained"
    res = CliRunner().invoke(cli, ["synth", "--ct", str(path), "--size", "32", "--detector-mm", "350", "-o", str(out),
                                   "--views", "8", "--chain", "--chain-processing-prob", "1", "--json"])
    assert res.exit_code == 0, res.output
    ideal, processed = open_dataset(out), open_dataset(out, processed=True)
    view = ideal.views[0]
    assert view.files["bone"].parent.name == "bone" and view.files["se"] == processed.views[0].files["se"]
    assert processed.views[0].files["bone"].parent.name == "bone_processed"
    assert processed.views[0].files["soft"].parent.name == "soft_processed"
    assert not np.allclose(processed.physical(processed.views[0], "bone"), ideal.physical(view, "bone"))

    views, enc = find_views(out, "train", processed=True), dataset_encodings(out, processed=True)
    assert enc is not None
    ds = PairedDataset(views, [(-0.25, 1.25)] * 3, [enc[c] for c in ("se", "bone", "soft")], normalise=True)
    for i in range(len(views)):
        sample = ds[i]
        se, de = sample["se"][0].numpy().astype(np.float64), sample["de"].numpy().astype(np.float64)
        # on [-1, 1] windows of (-0.25, 1.25): bone's window has no offset, so bone + soft = se reads as below
        unit = (de + 1) / 2 * 1.5 - 0.25
        np.testing.assert_allclose(unit[0] + unit[1], (se + 1) / 2 * 1.5 - 0.25, atol=2e-3)

    plain = tmp_path / "plain"
    res = CliRunner().invoke(cli, ["synth", "--ct", str(path), "--size", "32", "--detector-mm", "350", "-o", str(plain),
                                   "--views", "3", "--json"])
    assert res.exit_code == 0, res.output
    assert open_dataset(plain, processed=True).views == open_dataset(plain).views  # nothing else to read
