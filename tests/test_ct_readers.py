"""CT readers: NIfTI, NRRD, MetaImage and DICOM series agree on world coordinates (RAS+ mm); DICOM series with
several series, gantry tilt, uneven spacing or missing slices; the HU sanity check; thick-slice interpolation."""

from __future__ import annotations

from pathlib import Path

import dexrt
import numpy as np
import pytest
from dexrt.synth.ct import load_ct, resample_axial
from helpers import write_ct_series


def _volume() -> np.ndarray:
    """(x, y, z) = (20, 16, 12) voxels: air, a tissue block, and an asymmetric bright marker (no symmetry hides a
    flipped axis)."""
    hu = np.full((20, 16, 12), -1000.0, np.float32)
    hu[3:17, 2:14, 1:11] = 40.0
    hu[4:7, 3:5, 2:4] = 1200.0
    hu[12, 10, 8] = 600.0
    return hu


def _sitk_image(hu: np.ndarray):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(hu.transpose(2, 1, 0).astype(np.int16))  # ITK arrays are (z, y, x)
    img.SetSpacing((0.8, 1.1, 2.5))
    img.SetOrigin((-30.0, 12.0, 100.0))
    c, s = np.cos(0.3), np.sin(0.3)  # an oblique, left-handed-looking direction: rotation about z, then a flip
    direction = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, -1.0]])
    img.SetDirection(direction.ravel().tolist())
    return img


def _world_samples(ct, points: np.ndarray) -> np.ndarray:
    idx = np.rint((points - ct.affine[:3, 3]) @ np.linalg.inv(ct.affine[:3, :3]).T).astype(int)
    return ct.hu[idx[:, 0], idx[:, 1], idx[:, 2]]


def test_nifti_nrrd_and_metaimage_agree_on_world_coordinates(tmp_path: Path) -> None:
    import SimpleITK as sitk

    hu = _volume()
    img = _sitk_image(hu)
    paths = {}
    for ext in ("nii.gz", "nrrd", "mha", "mhd"):
        paths[ext] = tmp_path / f"ct.{ext}"
        sitk.WriteImage(img, str(paths[ext]))  # ITK writes NIfTI in RAS, NRRD/MetaImage in LPS
    cts = {ext: load_ct(p) for ext, p in paths.items()}
    assert cts["nii.gz"].meta["reader"] == "nibabel" and cts["nrrd"].meta["reader"] == "SimpleITK"
    ref = cts["nii.gz"]
    # every voxel centre of the NIfTI, looked up in the other files by world position
    grid = np.argwhere(np.ones(hu.shape, bool))
    points = grid @ ref.affine[:3, :3].T + ref.affine[:3, 3]
    for ext in ("nrrd", "mha", "mhd"):
        np.testing.assert_allclose(cts[ext].affine, ref.affine, atol=1e-4)
        np.testing.assert_array_equal(_world_samples(cts[ext], points), ref.hu.ravel())
    # Anatomy: the marker at ITK index (12, 10, 8) sits at LPS origin + D (s * idx); in RAS x and y flip sign.
    lps = np.array(img.TransformIndexToPhysicalPoint((12, 10, 8)))
    ras = lps * [-1, -1, 1]
    for ct in cts.values():
        assert _world_samples(ct, ras[None])[0] == 600.0
    # The detached MetaImage's checksum covers its pixel data file.
    raw = tmp_path / "ct.raw"
    data = bytearray(raw.read_bytes())
    data[100] ^= 1
    raw.write_bytes(bytes(data))
    assert load_ct(paths["mhd"]).sha256 != cts["mhd"].sha256


def test_nrrd_without_orientation_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ct.nrrd"
    data = _volume().astype(np.int16)
    header = (f"NRRD0004\ntype: short\ndimension: 3\nsizes: {' '.join(map(str, data.shape))}\n"
              "spacings: 1 1 1\nencoding: raw\nendian: little\n\n")
    path.write_bytes(header.encode() + data.transpose(2, 1, 0).tobytes())
    with pytest.raises(dexrt.InputError, match="no 'space'"):
        load_ct(path)


def _rod_slices(positions, iop, spacing=(1.0, 1.0), shape=(40, 40), centre=(4.0, 5.0), radius=6.0):
    """Slices of a rod along world z at LPS (x, y) = `centre`, sampled at each slice's pixel positions."""
    row, col = np.array(iop[:3]), np.array(iop[3:])
    r, c = np.mgrid[: shape[0], : shape[1]].astype(float)
    out = []
    for pos in positions:
        world = np.array(pos) + c[..., None] * spacing[1] * row + r[..., None] * spacing[0] * col
        d = np.hypot(world[..., 0] - centre[0], world[..., 1] - centre[1])
        out.append(np.where(d <= radius, 1600.0, np.where(d <= 18.0, 20.0, -1000.0)))
    return out


def _rod_centre_ras(ct) -> np.ndarray:
    """Per slice, the world (RAS) centroid of the rod (weighted by its HU above the 20 HU around it: linear
    interpolation keeps that first moment)."""
    out = []
    for k in range(ct.hu.shape[2]):
        w = np.clip(ct.hu[:, :, k] - 20.0, 0.0, None)
        idx = np.argwhere(w > 0)
        world = np.c_[idx, np.full(len(idx), k)] @ ct.affine[:3, :3].T + ct.affine[:3, 3]
        out.append((world * w[w > 0][:, None]).sum(0) / w.sum())
    return np.array(out)


def test_dicom_series_sorted_and_rescaled(tmp_path: Path) -> None:
    positions = [(-20.0, -15.0, 50.0 - 2.0 * k) for k in range(6)][::-1]  # written out of order
    iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    write_ct_series(tmp_path, _rod_slices(positions, iop), positions, iop=iop, slope=2.0, intercept=-1000.0)
    ct = load_ct(tmp_path)
    assert ct.meta["notes"] == [] and ct.hu.shape == (40, 40, 6)
    np.testing.assert_allclose(ct.spacing, [1.0, 1.0, 2.0])
    assert ct.hu.min() == -1000.0 and ct.hu.max() == 1600.0  # slope 2, intercept -1000 applied
    centre = _rod_centre_ras(ct)
    np.testing.assert_allclose(centre[:, :2], np.tile([-4.0, -5.0], (6, 1)), atol=0.05)  # LPS (4, 5) in RAS
    np.testing.assert_allclose(centre[:, 2], 40.0 + 2.0 * np.arange(6))


def test_dicom_gantry_tilt_is_resampled_onto_an_orthogonal_grid(tmp_path: Path) -> None:
    a = np.radians(15.0)
    iop = (1.0, 0.0, 0.0, 0.0, np.cos(a), np.sin(a))  # slices tilted about x; the table moves along z
    positions = [(-10.0, -20.0 / np.cos(a), 3.0 * k) for k in range(10)]
    write_ct_series(tmp_path, _rod_slices(positions, iop), positions, iop=iop)
    ct = load_ct(tmp_path)
    assert any("gantry tilt of 15.00 deg" in n for n in ct.meta["notes"])
    grid = ct.affine[:3, :3] / ct.spacing
    np.testing.assert_allclose(grid.T @ grid, np.eye(3), atol=1e-9)  # orthogonal axes
    # The rod along world z stays at world (x, y) in every slice: the tilt's shear is gone.
    centre = _rod_centre_ras(ct)[2:-2]  # the end slices lose part of the rod to the shifted field of view
    np.testing.assert_allclose(centre[:, 0], -4.0, atol=0.1)
    np.testing.assert_allclose(centre[:, 1], -5.0, atol=0.1)


def test_dicom_uneven_spacing_is_resampled_and_gaps_refused(tmp_path: Path) -> None:
    iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    zs = [0.0, 2.0, 4.0, 7.0, 9.0, 11.0, 13.0]  # one interval of 3 mm among 2 mm ones
    positions = [(0.0, 0.0, z) for z in zs]
    slices = [np.where(np.arange(8) < 4, -1000.0, 20.0 * z)[None, :].repeat(8, 0) for z in zs]  # air | HU = 20 z
    write_ct_series(tmp_path / "uneven", slices, positions, iop=iop)
    ct = load_ct(tmp_path / "uneven")
    assert any("uneven slice spacing" in n for n in ct.meta["notes"])
    assert ct.hu.shape[2] == 7 and ct.spacing[2] == pytest.approx(13.0 / 6.0)
    z = ct.affine[2, 3] + ct.affine[2, 2] * np.arange(7)
    np.testing.assert_allclose(ct.hu[6, 4, :], 20.0 * z, atol=0.51)  # linear stays linear
    gap = [0.0, 2.0, 4.0, 10.0, 12.0]
    write_ct_series(tmp_path / "gap", slices[: len(gap)], [(0.0, 0.0, z) for z in gap], iop=iop)
    with pytest.raises(dexrt.InputError, match="missing slices"):
        load_ct(tmp_path / "gap")


def test_several_series_in_one_folder_are_listed(tmp_path: Path) -> None:
    iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    pos = [(0.0, 0.0, 2.0 * k) for k in range(4)]
    first = write_ct_series(tmp_path, _rod_slices(pos, iop), pos, iop=iop, number=3)
    write_ct_series(tmp_path, _rod_slices(pos[:3], iop), pos[:3], iop=iop, number=7)
    with pytest.raises(dexrt.InputError, match="holds 2 series") as err:
        load_ct(tmp_path)
    assert "series 3 CT" in str(err.value) and "series 7 CT" in str(err.value)
    assert load_ct(first[1]).hu.shape[2] == 4  # one file picks its series


@pytest.mark.parametrize("case, match", [("shifted", "shifted by about \\+1024"), ("windowed", "clipped"),
                                         ("top-clipped", "clipped")])
def test_hu_check_names_shifted_and_clipped_volumes(tmp_path: Path, case: str, match: str) -> None:
    import nibabel as nib

    hu = _volume()
    rng = np.random.default_rng(0)
    hu[3:17, 2:14, 1:11] = rng.normal(-100.0, 30.0, (14, 12, 10))  # fat
    hu[5:15, 4:12, 3:9] = rng.normal(40.0, 20.0, (10, 8, 6))  # muscle
    hu[6:10, 5:9, :] = rng.normal(700.0, 300.0, (4, 4, 12))  # bone
    if case == "shifted":
        hu = hu + 1024.0
    elif case == "windowed":
        hu = np.clip(hu, -160.0, 240.0)
    else:
        hu = np.clip(hu, -1024.0, 400.0)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu.astype(np.int16), np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
    with pytest.raises(dexrt.InputError, match=match):
        load_ct(path)


def test_thick_slices_are_interpolated(tmp_path: Path) -> None:
    from dexrt.synth.ct import CTVolume

    hu = np.zeros((6, 6, 5), np.float32)
    hu[..., :] = np.arange(5) * 100.0
    labels = np.zeros((6, 6, 5), np.int32)
    labels[..., 3:] = 7
    ct = CTVolume(hu=hu, affine=np.diag([1.0, 1.0, 5.0, 1.0]), labels=labels, path="thick")
    fine = resample_axial(ct, 1.3)
    assert fine.hu.shape == (6, 6, 17) and fine.spacing[2] == pytest.approx(1.25)
    np.testing.assert_allclose(fine.hu[0, 0], np.arange(17) * 25.0)  # linear between the old slices
    assert fine.labels is not None and fine.labels[0, 0, 9] == 0 and fine.labels[0, 0, 11] == 7  # nearest
    assert fine.affine[2, 3] == ct.affine[2, 3]  # first slice centre kept
    assert any("interpolated" in n for n in fine.meta["notes"])
    thin = CTVolume(hu=hu, affine=np.diag([1.0, 1.0, 2.5, 1.0]), path="thin")
    assert resample_axial(thin, 1.0) is thin  # below 3 mm: as it is
