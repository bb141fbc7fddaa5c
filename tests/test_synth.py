"""dexrt synth: dual-energy cancellation on phantoms, lesions, the dataset writer, the CLI, bad inputs.

Tolerances (also in docs/synth.md):
  water phantom -> bone image flat: |bone| <= 0.005 g/cm^2 everywhere (a rib is ~0.3-1 g/cm^2);
  bone rod      -> soft image: the rod's mean residual <= 10 % of its water-equivalent contrast at high kVp.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dexrt
from dexrt.synth.ct import CTVolume, load_ct
from dexrt.synth.materials import MaterialModel
from dexrt.synth.physics import PhysicsConfig
from dexrt.synth.render import ImagingConfig, Renderer, View
from helpers import write_ct_series

SPACING = 2.0  # mm


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    aff = np.diag([SPACING, SPACING, SPACING, 1.0])
    aff[:3, 3] = -(np.array(shape) - 1) / 2.0 * SPACING
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2.0) * SPACING for n in shape], indexing="ij")
    return aff, x, y, z


def phantom(rod_hu: float | None = None, lungs: bool = False, shape=(100, 100, 60)) -> CTVolume:
    """Water cylinder (radius 80 mm, along z; smaller in a small grid) in air; optional rod (radius 8 mm) at
    x = 30 mm; optional 'lungs' (two -850 HU cylinders of radius 25 mm)."""
    aff, x, y, z = _grid(shape)
    hu = np.full(shape, -1000.0, np.float32)
    radius = min(80.0, 0.4 * SPACING * min(shape[:2]))
    body = (x**2 + y**2 <= radius**2) & (np.abs(z) <= min(50.0, 0.4 * SPACING * shape[2]))
    hu[body] = 0.0
    if rod_hu is not None:
        hu[((x - 30.0) ** 2 + y**2 <= 8.0**2) & body] = rod_hu
    if lungs:
        for cx in (-35.0, 35.0):
            hu[((x - cx) ** 2 + (y - 5.0) ** 2 <= 25.0**2) & (np.abs(z) <= 40.0)] = -850.0
    return CTVolume(hu=hu, affine=aff, path="phantom")


def _imaging(size: int = 64, noise: bool = False) -> ImagingConfig:
    # 350 mm detector at magnification 1.5: 3.6 mm pixels at the isocentre for 64 px.
    return ImagingConfig(size=(size, size), detector_mm=350.0, physics=PhysicsConfig(noise=noise), threads=2)


def test_water_phantom_gives_flat_bone_image() -> None:
    r = Renderer(phantom(), _imaging())
    for gantry in (0.0, 90.0):
        im = r.render(View("v", gantry, tilt_deg=4.0))
        soft = im["soft"]
        assert soft.max() > 14.0  # ~16 cm of water on the central rays
        assert np.abs(im["bone"]).max() <= 0.005, np.abs(im["bone"]).max()
        np.testing.assert_allclose(soft, im["soft_ideal"] * 1.0, atol=0.25)  # water-equivalent ~ water


def test_bone_rod_vanishes_from_soft_image() -> None:
    bone_hu = MaterialModel().tissue_hu("bone")
    with_rod = Renderer(phantom(rod_hu=bone_hu), _imaging())
    with_hole = Renderer(phantom(rod_hu=-1000.0), _imaging())
    view = View("v", 0.0)
    a, b = with_hole.render(view), with_rod.render(view)
    rod = (b["bone_ideal"] > 1.0)  # rays through the middle of the rod: > 1 g/cm^2 cortical bone
    assert rod.sum() >= 8
    # Contrast the rod adds to the high-kVp image, in water-equivalent g/cm^2 (linearised).
    line_a, _ = with_hole.line_integrals(view)
    line_b, _ = with_rod.line_integrals(view)
    pa, pb = with_hole.physics.attenuation(line_a), with_rod.physics.attenuation(line_b)
    high_contrast = with_rod.physics.linearize(pb[1], pb[2])[1] - with_hole.physics.linearize(pa[1], pa[2])[1]
    residual = float(np.mean((b["soft"] - a["soft"])[rod]))
    contrast = float(np.mean(high_contrast[rod]))
    assert contrast > 1.0
    assert abs(residual) <= 0.10 * contrast, (residual, contrast)
    # ... while the bone image measures the rod: within 10 % of its cortical-bone areal density.
    np.testing.assert_allclose(np.mean((b["bone"] - a["bone"])[rod]), np.mean(b["bone_ideal"][rod]), rtol=0.1)


def test_noise_follows_the_dose() -> None:
    lo_dose = _imaging(noise=True)
    hi_dose = _imaging(noise=True)
    hi_dose.physics.se = type(hi_dose.physics.se)("se", 120.0, al_mm=3.0, cu_mm=0.1, kerma_ugy=400.0)
    ct = phantom()
    sd = []
    for cfg in (lo_dose, hi_dose):
        r = Renderer(ct, cfg)
        a = r.render(View("v", 0.0, noise_seed=1))["se"]
        b = r.render(View("v", 0.0, noise_seed=2))["se"]
        sd.append(float(np.std((a - b)[24:40, 24:40]) / np.sqrt(2)))
        assert not np.array_equal(a, b)
        np.testing.assert_array_equal(a, r.render(View("v", 0.0, noise_seed=1))["se"])  # seeded: repeatable
    # Quantum noise in a log image scales as 1/sqrt(dose): 4x the dose halves it.
    assert 1.6 < sd[0] / sd[1] < 2.5, sd


def test_lesions_are_projected_and_soft_tissue() -> None:
    from dexrt.synth.lesions import contrast_to_noise, project_lesions

    r = Renderer(phantom(lungs=True), _imaging())
    sampler = r.lesion_sampler((20.0, 20.0))
    lesion = sampler.sample(np.random.default_rng(0))
    assert r.volume.lung[tuple(np.round(np.linalg.solve(r.volume.affine[:3, :3],
                                                        lesion.centre_mm - r.volume.affine[:3, 3])).astype(int))]
    plain, with_lesion = r.render(View("v", 0.0)), r.render(View("v", 0.0, lesions=[lesion]))
    mask = with_lesion["mask"]
    assert 6 <= mask.sum() <= 60
    d_soft = (with_lesion["soft"] - plain["soft"])[mask]
    d_bone = (with_lesion["bone"] - plain["bone"])[mask]
    assert d_soft.max() > 1.0  # ~2 cm of tissue replacing lung
    assert (with_lesion["se"] - plain["se"])[mask].mean() > 0.05
    assert abs(d_bone.mean()) < 0.05 * d_soft.mean()  # a soft-tissue lesion does not show as bone
    # contrast_to_noise on a known image: a disc 3 sigma above unit noise.
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 <= 36
    img = np.random.default_rng(1).normal(size=(64, 64)) + 3.0 * disc
    assert 2.5 < contrast_to_noise(img, disc) < 3.5
    # The analytic chord: an ellipsoid with equal axes is a sphere.
    sphere = type(lesion)(lesion.centre_mm, np.full(3, 10.0), np.eye(3), np.array([0.0, 1.0, 0.0]))
    cb = r.cone_beam(View("v", 0.0))
    f = cb.frame()
    delta, m = project_lesions([sphere], f, cb.rows, cb.cols)
    rr, cc = np.meshgrid(np.arange(cb.rows), np.arange(cb.cols), indexing="ij")
    d = f["origin"] + cc[..., None] * f["col_step"] + rr[..., None] * f["row_step"] - f["source"]
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    q = f["source"] - sphere.centre_mm
    b = d @ q
    chord_cm = 2.0 * np.sqrt(np.clip(b * b - (q @ q - 100.0), 0, None)) / 10.0
    np.testing.assert_allclose(delta[1], chord_cm, atol=1e-5)
    np.testing.assert_array_equal(m, chord_cm > 0)


def _write_small_dataset(tmp_path: Path, **kw):
    from dexrt.synth.writer import DatasetConfig, write_dataset

    imaging = _imaging(size=32, noise=True)
    imaging.bin = (2, 2, 2)  # finer than the 7 mm pixels, so the lungs are deep enough for 15 mm lesions
    r = Renderer(phantom(lungs=True), imaging)
    cfg = DatasetConfig(views=40, lesion_prob=0.5, lesion_diameter_mm=(15.0, 30.0), ideal=True, seed=7, **kw)
    out = tmp_path / "ds"
    return r, cfg, out, write_dataset(r, cfg, out, provenance={"test": True})


def test_dataset_writer_manifest_and_splits(tmp_path: Path) -> None:
    from PIL import Image

    from dexrt.synth.writer import plan_views

    r, cfg, out, manifest = _write_small_dataset(tmp_path)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    from dexrt.io.dataset import FORMAT, FORMAT_VERSION

    assert on_disk["format"] == FORMAT and on_disk["format_version"] == FORMAT_VERSION
    assert {v["patient"] for v in on_disk["views"]} == {"phantom"} and list(on_disk["patients"]) == ["phantom"]
    assert on_disk["image_format"] == "png" and on_disk["size"] == [32, 32]
    assert set(on_disk["encoding"]) == {"se", "bone", "soft", "bone_ideal", "soft_ideal"}
    assert len(on_disk["views"]) == 40 and (out / "contact_sheet.png").is_file()
    assert Image.open(out / "contact_sheet.png").mode == "RGB"
    assert not list(tmp_path.glob(".ds.partial-*"))  # the build folder was renamed into place

    views, _ = plan_views(r, cfg)
    ranges = on_disk["splits"]
    clipped = dict.fromkeys(on_disk["encoding"], 0)
    for rec, view in zip(on_disk["views"], views):
        assert rec["split"] in ("train", "val", "test")
        g = rec["geometry"]["gantry_deg"]
        assert any((g - a) % 360.0 <= (b - a) for a, b in ranges[rec["split"]]["gantry_ranges_deg"])
        # Stored uint16 -> physical values reproduce the render (same seed) to the quantisation step.
        im = r.render(view)
        for ch, rel in rec["files"].items():
            png = Image.open(out / rel)
            assert png.mode.startswith("I;16")
            stored = np.asarray(png, dtype=np.float64)
            enc = on_disk["encoding"][ch]
            top = enc["offset"] + 65535 * enc["scale"]
            inside = (im[ch] >= enc["offset"] - enc["scale"] / 2) & (im[ch] <= top + enc["scale"] / 2)
            assert inside.mean() > 0.97  # the rest was clipped, and counted in the manifest
            clipped[ch] += int((~inside).sum())
            np.testing.assert_allclose((enc["offset"] + enc["scale"] * stored)[inside], im[ch][inside],
                                       atol=enc["scale"] * 0.51 + 1e-6)
        if rec["mask"]:
            mask = np.asarray(Image.open(out / rec["mask"]))
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255} and mask.any()
            np.testing.assert_array_equal(mask > 0, im["mask"])
        else:
            assert not im["mask"].any()
    assert 0 < sum(1 for v in on_disk["views"] if v["mask"]) < 40
    for ch, n in clipped.items():
        assert round(on_disk["encoding"][ch]["clipped_fraction"] * 40 * 32 * 32) == n
    # No view of one split lies within the guard gap of a view of another.
    angle = np.array([v["geometry"]["gantry_deg"] for v in on_disk["views"]])
    split = np.array([v["split"] for v in on_disk["views"]])
    for s in ("val", "test"):
        assert (split == s).any()
        other = angle[split != s]
        for a in angle[split == s]:
            assert np.min(np.abs((other - a + 180.0) % 360.0 - 180.0)) >= cfg.splits.guard_deg

    with pytest.raises(dexrt.InputError, match="not an empty folder"):
        from dexrt.synth.writer import write_dataset

        write_dataset(r, cfg, out)


def _nifti(path: Path, hu: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), str(path))
    return path


def test_cli_writes_a_dataset(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dexrt.cli import cli

    ct = phantom(lungs=True)
    path = _nifti(tmp_path / "ct.nii.gz", ct.hu, ct.affine)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["synth", "--ct", str(path), "--views", "12", "--size", "32", "-o", str(out),
                                   "--lesion-prob", "1", "--lesion-mm", "8,15", "--detector-mm", "350", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["views"] == 12 and summary["lesion_views"] == 12
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"]["sha256"] and len(m["views"]) == 12
    assert all((out / f).is_file() for v in m["views"] for f in v["files"].values())


def test_dicom_series_loads_like_nifti(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    hu = rng.integers(-1000, 1500, size=(5, 12, 10)).astype(np.int16)  # (slices, rows, cols)
    # written out of order on purpose; PixelSpacing is (row spacing, column spacing)
    write_ct_series(tmp_path, list(hu), [(-50.0, -40.0, 100.0 - 3.0 * k) for k in range(hu.shape[0])],
                    spacing=(0.8, 0.9))
    ct = load_ct(tmp_path)
    assert ct.hu.shape == (10, 12, 5)  # (columns, rows, slices)
    np.testing.assert_allclose(ct.spacing, [0.9, 0.8, 3.0])
    # Slices sorted along the normal: k = 4 (z = 88) comes first; LPS -> RAS flips x and y.
    np.testing.assert_allclose(ct.affine[:3, 3], [50.0, 40.0, 88.0])
    np.testing.assert_array_equal(ct.hu[:, :, 0], hu[4].T)
    assert np.diag(ct.affine)[:3].tolist() == [-0.9, -0.8, 3.0]


@pytest.mark.parametrize("case", ["text-file", "photo-values", "no-spacing", "missing", "label-mismatch"])
def test_bad_ct_inputs_are_clear_errors(tmp_path: Path, case: str) -> None:
    import nibabel as nib

    ct = phantom(shape=(20, 20, 10))
    labels = None
    if case == "text-file":
        path = tmp_path / "ct.nii.gz"
        path.write_text("not an image")
        match = "not a readable NIfTI"
    elif case == "photo-values":
        path = _nifti(tmp_path / "ct.nii", np.random.default_rng(0).integers(0, 255, (20, 20, 10)), ct.affine)
        match = "does not look like a CT"
    elif case == "no-spacing":
        img = nib.Nifti1Image(ct.hu.astype(np.int16), ct.affine)
        img.header.set_zooms((0.0, 0.0, 0.0))
        path = tmp_path / "ct.nii"
        nib.save(img, str(path))
        match = "spacing is missing"
    elif case == "missing":
        path = tmp_path / "nope.nii.gz"
        match = "no such file"
    else:
        path = _nifti(tmp_path / "ct.nii", ct.hu, ct.affine)
        labels = _nifti(tmp_path / "lab.nii", np.zeros((20, 20, 9)), ct.affine)
        match = "label map shape"
    with pytest.raises(dexrt.InputError, match=match):
        load_ct(path, labels)


@pytest.mark.parametrize(
    "args, match",
    [
        pytest.param(["--sid", "1000", "--sdd", "800"], "source-isocentre", id="sdd-below-sid"),
        pytest.param(["--sid", "30", "--sdd", "900"], "behind the X-ray source", id="source-inside-patient"),
        pytest.param(["--size", "4"], "image size", id="tiny-image"),
        pytest.param(["--split", "0.5,0.5,0.5"], "fractions", id="bad-split"),
        pytest.param(["--low-kvp", "20"], "40..150 kVp", id="kvp"),
    ],
)
def test_cli_bad_arguments_are_clear_errors(tmp_path: Path, args: list[str], match: str) -> None:
    from click.testing import CliRunner

    from dexrt.cli import cli

    ct = phantom(shape=(40, 40, 20))
    path = _nifti(tmp_path / "ct.nii.gz", ct.hu, ct.affine)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["synth", "--ct", str(path), "--views", "2", "--size", "32", "-o", str(out), *args])
    assert res.exit_code == 1, res.output
    assert "Error:" in res.output and match in res.output
    assert not out.exists()


def test_cli_refuses_a_non_ct(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dexrt.cli import cli

    path = tmp_path / "notes.txt"
    path.write_text("hello")
    res = CliRunner().invoke(cli, ["synth", "--ct", str(path), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "neither NIfTI" in res.output and str(path) in res.output


def _example_or_skip():
    from dexrt.synth.example import ExampleUnavailable, fetch_example

    try:
        return fetch_example(timeout_s=300)
    except ExampleUnavailable as exc:
        pytest.skip(f"example CT unavailable: {exc}")


def test_example_ct_renders_a_chest() -> None:
    from dexrt.synth.volume import EXAMPLE_RULES

    ct_path, labels = _example_or_skip()
    ct = load_ct(ct_path, labels)
    r = Renderer(ct, ImagingConfig(size=(48, 48), rules=EXAMPLE_RULES, physics=PhysicsConfig(noise=True)))
    im = r.render(View("v", 0.0, noise_seed=3))
    for k in ("se", "bone", "soft"):
        assert np.all(np.isfinite(im[k]))
    assert 3.0 < im["se"].max() < 9.0  # spine + mediastinum + abdomen at 120 kVp
    # The lungs are darker than the mediastinum; the spine (central columns) is bright in the bone image.
    lung = r.volume.line_integrals([r.cone_beam(View("v", 0.0))])[0]
    assert im["bone"][:, 22:26].mean() > im["bone"][:, 5:12].mean() + 0.1
    assert lung.shape == (3, 48, 48)


def test_import_dexrt_does_not_import_synth() -> None:
    import subprocess
    import sys

    code = ("import sys, dexrt; heavy = [m for m in ('dexrt.synth', 'nibabel', 'pydicom', 'xraydb', 'spekpy', 'torch') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_voxel_axis_order_does_not_change_the_image() -> None:
    """The same patient stored (z, x, y) instead of (x, y, z), with the affine saying so, images identically."""
    ct = phantom(rod_hu=800.0, lungs=True)
    swapped = CTVolume(hu=np.ascontiguousarray(ct.hu.transpose(2, 0, 1)), affine=ct.affine[:, [2, 0, 1, 3]],
                       path="swapped")
    view = View("v", 37.0, tilt_deg=6.0)
    a = Renderer(ct, _imaging()).render(view)
    b = Renderer(swapped, _imaging()).render(view)
    for k in ("se", "bone", "soft"):
        np.testing.assert_allclose(a[k], b[k], atol=1e-4)
