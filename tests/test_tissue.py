"""Tissue from HU alone (dexrt.synth.tissue): the couch is removed from the body, contrast-enhanced blood is found
and replaced without eating bone, and thick slices leave no stair-steps in the DRR."""

from __future__ import annotations

import numpy as np
import pytest
from dexrt.synth.ct import CTVolume
from dexrt.synth.physics import PhysicsConfig
from dexrt.synth.render import ImagingConfig, Renderer, View
from dexrt.synth.tissue import RIM_CORTEX_FRACTION, body_mask

SPACING = 2.0


def chest(couch: bool = False, enhanced: float = 0.0, blanket: bool = False, seed: int = 0,
          smooth_marrow: bool = False) -> CTVolume:
    """A chest-like phantom, 2 mm voxels: a body whose width changes along z (muscle, lungs), a vertebra (cortical
    ring around a textured trabecular core, 230 +- 60 HU) with the aorta against it, a heart; blood at 40 HU plus
    `enhanced`. `couch`: a 22 mm tabletop in contact below the back and a 3 mm shell under a foam gap.
    `smooth_marrow`: the vertebra as a smooth reconstruction kernel shows it (the platipy CT): a core as homogeneous
    as blood (215 +- 15 HU) in a thin cortex blurred to 380 HU."""
    rng = np.random.default_rng(seed)
    shape = (160, 120, 40)
    x = (np.arange(shape[0]) - 79.5) * SPACING
    y = -140.0 + SPACING * np.arange(shape[1])
    z = (np.arange(shape[2]) - 19.5) * SPACING
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    hu = np.full(shape, -1000.0, np.float32)
    a = 130.0 + 15.0 * np.sin(Z / 25.0)  # the body's half width changes from slice to slice
    body = (X / a) ** 2 + (Y / 90.0) ** 2 <= 1.0
    hu[body] = rng.normal(40.0, 15.0, body.sum())
    for cx in (-75.0, 75.0):
        lung = ((X - cx) / 35.0) ** 2 + ((Y - 10.0) / 55.0) ** 2 <= 1.0
        hu[lung] = rng.normal(-850.0, 30.0, lung.sum())
    blood = 40.0 + enhanced
    heart = (X / 35.0) ** 2 + ((Y - 20.0) / 30.0) ** 2 <= 1.0
    aorta = np.hypot(X - 18.0, Y + 32.0) <= 12.0
    hu[heart | aorta] = rng.normal(blood, 15.0, (heart | aorta).sum())
    r = np.hypot(X, Y + 50.0)
    hu[r <= 15.0] = rng.normal(1000.0, 100.0, (r <= 15.0).sum())  # cortex
    core = r <= 12.0
    hu[core] = rng.normal(230.0, 60.0, core.sum())  # trabecular bone: textured
    if smooth_marrow:
        hu[(r > 12.0) & (r <= 15.0)] = rng.normal(380.0, 20.0, ((r > 12.0) & (r <= 15.0)).sum())
        hu[core] = rng.normal(215.0, 15.0, core.sum())
    spinous = (np.abs(X) <= 4.0) & (Y <= -65.0) & (Y >= -80.0)
    hu[spinous] = rng.normal(900.0, 100.0, spinous.sum())
    if couch:
        top = (np.abs(X) <= 150.0) & (Y < -90.0) & (Y >= -112.0)
        hu[top] = rng.normal(100.0, 20.0, top.sum())
        shell = (np.abs(X) <= 160.0) & (Y >= -130.0) & (Y < -127.0)
        hu[shell] = 300.0
    if blanket:
        sheet = (np.abs(X) <= 100.0) & (Y >= 90.0) & (Y < 92.0)
        hu[sheet] = -200.0
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = [x[0], y[0], z[0]]
    return CTVolume(hu=hu, affine=affine, path="chest")


def _imaging(**kw) -> ImagingConfig:
    return ImagingConfig(size=(64, 64), detector_mm=480.0, physics=PhysicsConfig(noise=False), threads=2, **kw)


def test_body_mask_removes_the_couch_and_the_blanket() -> None:
    ct = chest(couch=True, blanket=True)
    mask = body_mask(ct.hu, ct.affine)
    y = ct.affine[1, 3] + SPACING * np.arange(ct.hu.shape[1])
    truth = body_mask(chest().hu, ct.affine)
    assert not mask[:, y < -93.0, :].any()  # tabletop and shell gone (the skin keeps one voxel)
    assert not mask[:, y > 93.0, :].any()  # so is the blanket
    assert np.sum(mask & truth) >= 0.99 * truth.sum()


def test_couch_is_not_in_the_drr() -> None:
    view = View("v", 0.0)
    plain = Renderer(chest(), _imaging()).render(view)
    on_couch = Renderer(chest(couch=True), _imaging()).render(view)
    kept = Renderer(chest(couch=True), _imaging(keep_outside_body=True)).render(view)
    body = plain["soft"] > 1.0
    assert np.abs(kept["soft"] - plain["soft"])[body].max() > 2.0  # the 22 mm tabletop, when it is kept
    assert np.abs(on_couch["soft"] - plain["soft"])[body].max() < 0.3  # at most the skin voxel of contact
    assert np.abs(on_couch["bone"] - plain["bone"]).max() < 0.02


def test_contrast_enhancement_is_removed_without_eating_bone() -> None:
    views = [View("ap", 0.0), View("lat", 90.0)]
    plain_r = Renderer(chest(), _imaging())
    enhanced_r = Renderer(chest(enhanced=300.0), _imaging())
    kept_r = Renderer(chest(enhanced=300.0), _imaging(contrast="keep"))
    assert plain_r.volume.info["contrast"]["detected"] is False
    info = enhanced_r.volume.info["contrast"]
    assert info["detected"] is True and info["action"] == "set to blood, 40 HU"
    assert 250.0 <= info["enhanced_ml"] <= 420.0  # heart (~264 ml) and aorta (~36 ml), with their rims
    for view in views:
        plain, enhanced, kept = plain_r.render(view), enhanced_r.render(view), kept_r.render(view)
        # The iodine is in neither the bone target nor the SE image (300 HU over the aorta's 24 mm would be about
        # 0.9 g/cm^2 of bone) ...
        assert np.abs(enhanced["bone"] - plain["bone"]).max() < 0.05
        assert np.abs(enhanced["se"] - plain["se"]).max() < 0.02
        # ... and the vertebra's trabecular core, against the aorta, is still bone (the contact costs at most a
        # few hundredths of a g/cm^2, where voxels of the enhanced range next to blood are taken for blood).
        np.testing.assert_allclose(enhanced["bone_ideal"], plain["bone_ideal"], atol=0.05)
        assert plain["bone_ideal"].max() > 2.0
        # Kept, the iodine stays in the SE image as dense soft tissue, never as bone.
        assert (kept["se"] - plain["se"]).max() > 0.2
        assert np.abs(kept["bone_ideal"] - plain["bone_ideal"]).max() < 0.05


def test_smooth_vertebral_marrow_is_not_taken_for_contrast() -> None:
    """A vertebral core as homogeneous as blood, 215 HU, and 80 mm of it (a column, as long as a vessel): its rim is
    its cortex, brighter than the core, where blood's rim falls off. Plain, nothing is found; enhanced, the heart and
    aorta are found and the vertebra stays bone."""
    plain = Renderer(chest(smooth_marrow=True), _imaging())
    assert plain.volume.info["contrast"]["detected"] is False
    assert plain.volume.info["contrast"]["regions"][0]["rim_cortex_fraction"] > RIM_CORTEX_FRACTION
    enhanced = Renderer(chest(smooth_marrow=True, enhanced=300.0), _imaging())
    info = enhanced.volume.info["contrast"]
    assert info["detected"] is True and 250.0 <= info["enhanced_ml"] <= 420.0
    # The vertebra stays bone but for the contact with the enhanced aorta, which lies against it over its whole
    # length here: voxels of the enhanced range within two binned voxels of blood are taken for blood (it took
    # up to 0.85 g/cm^2 when the core itself was taken for blood).
    for view in (View("ap", 0.0), View("lat", 90.0)):
        with_iodine, without = enhanced.render(view)["bone_ideal"], plain.render(view)["bone_ideal"]
        assert without.max() > 0.9
        assert np.abs(with_iodine - without).max() < 0.25
        assert abs(with_iodine.sum() - without.sum()) < 0.08 * without.sum()


@pytest.mark.parametrize("seed", [1, 2])
def test_no_enhancement_found_in_a_plain_ct(seed: int) -> None:
    r = Renderer(chest(seed=seed), _imaging())
    assert r.volume.info["contrast"]["detected"] is False and r.volume.info["contrast"]["enhanced_ml"] == 0.0


def _plate(slice_mm: float) -> CTVolume:
    """A bone plate tilted 30 deg to the axial plane in water, reconstructed with `slice_mm` slices (the mean of
    1 mm sub-slices, as a thick-slice reconstruction is)."""
    fine_z = np.arange(-40.0, 40.0, 1.0) + 0.5
    x = (np.arange(100) - 49.5) * SPACING
    X, Y, Z = np.meshgrid(x, x, fine_z, indexing="ij")
    hu = np.full(X.shape, -1000.0, np.float32)
    body = X**2 + Y**2 <= 80.0**2
    hu[body] = 0.0
    plate = body & (np.abs((Z - 0.5 * X) * np.cos(np.radians(30.0))) <= 3.0) & (np.abs(Y) <= 30.0)
    hu[plate] = 1500.0
    k = int(slice_mm)
    hu = hu.reshape(100, 100, -1, k).mean(-1)
    affine = np.diag([SPACING, SPACING, float(k), 1.0])
    affine[:3, 3] = [x[0], x[0], fine_z[0] + (k - 1) / 2.0]
    return CTVolume(hu=hu, affine=affine, path=f"plate{k}")


def test_thick_slices_leave_no_stair_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    from dexrt.synth import render

    cfg = ImagingConfig(size=(128, 128), detector_mm=300.0, physics=PhysicsConfig(noise=False), threads=2)
    view = View("v", 0.0)
    reference = Renderer(_plate(1.0), cfg).render(view)["bone_ideal"]
    interpolated_r = Renderer(_plate(5.0), cfg)
    assert interpolated_r.ct.meta["slices"]["interpolated_to_mm"] == pytest.approx(1.25)  # ~ the 1.56 mm pixel
    interpolated = interpolated_r.render(view)["bone_ideal"]
    monkeypatch.setattr(render, "resample_axial", lambda ct, spacing: ct)
    stepped = Renderer(_plate(5.0), cfg).render(view)["bone_ideal"]

    def steps(img: np.ndarray) -> float:  # second differences along the head-feet (row) direction
        return float(np.abs(np.diff(img, 2, axis=0)).sum())

    assert steps(interpolated) < 0.6 * steps(stepped)
    err_i = float(np.sqrt(np.mean((interpolated - reference) ** 2)))
    err_s = float(np.sqrt(np.mean((stepped - reference) ** 2)))
    assert err_i < err_s
