"""CT input: NIfTI files and DICOM series, in Hounsfield units, with an index -> world (RAS+ mm) affine.

World coordinates everywhere in `dexrt.synth` are patient RAS+ millimetres, the NIfTI convention: +x towards
the patient's right, +y anterior, +z superior. DICOM's LPS+ patient coordinates are flipped into it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dexrt._errors import InputError

_HU_MIN, _HU_MAX = -1024.0, 3071.0  # the range a CT scanner writes; values outside are padding or corrupt
_MAX_VOXELS = 1024**3


@dataclass
class CTVolume:
    """A CT in Hounsfield units. `hu[i, j, k]` sits at world point `affine @ (i, j, k, 1)` (RAS+ mm)."""

    hu: np.ndarray  # (n0, n1, n2) float32
    affine: np.ndarray  # (4, 4) float64
    labels: np.ndarray | None = None  # (n0, n1, n2) int32 label map on the same grid, or None
    path: str = ""
    labels_path: str | None = None
    sha256: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel spacing along the three index axes, mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def world_bounds(self, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper world corners of the box around `mask` (default: the whole grid), mm."""
        if mask is None:
            lo_idx, hi_idx = np.zeros(3), np.array(self.hu.shape, float) - 1
        else:
            idx = np.argwhere(mask)
            if idx.size == 0:
                raise InputError(f"{self.path}: the CT contains no body voxels (is it really a CT in HU?)")
            lo_idx, hi_idx = idx.min(0).astype(float), idx.max(0).astype(float)
        corners = np.array([[a, b, c, 1.0] for a in (lo_idx[0] - 0.5, hi_idx[0] + 0.5)
                            for b in (lo_idx[1] - 0.5, hi_idx[1] + 0.5) for c in (lo_idx[2] - 0.5, hi_idx[2] + 0.5)])
        world = corners @ self.affine.T
        return world[:, :3].min(0), world[:, :3].max(0)


def _sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _check_hu(hu: np.ndarray, path: str) -> np.ndarray:
    if hu.ndim != 3:
        raise InputError(f"{path}: a CT must be a 3-D volume, got shape {hu.shape}")
    if min(hu.shape) < 2 or hu.size > _MAX_VOXELS:
        raise InputError(f"{path}: unusable volume shape {hu.shape}")
    if not np.all(np.isfinite(hu)):
        raise InputError(f"{path}: the volume contains NaN or infinite values")
    lo, hi = float(hu.min()), float(hu.max())
    # A CT in HU has air near -1000 and tissue near 0..100; anything else is some other image.
    p5, p50 = np.percentile(hu[:: max(1, hu.shape[0] // 64)], [5, 50])
    if lo > -500 or hi < 0 or p5 > -300 or p50 > 1500 or lo < -10000 or hi > 40000:
        raise InputError(
            f"{path}: does not look like a CT in Hounsfield units (min {lo:.0f}, max {hi:.0f}, 5th percentile "
            f"{p5:.0f}); expected air near -1000 HU and soft tissue near 0 HU"
        )
    # Padding (often -2048 or -3024) becomes air; beyond 3071 HU is metal or clipping, kept at the scanner max.
    return np.clip(hu, _HU_MIN, _HU_MAX).astype(np.float32, copy=False)


def _check_affine(affine: np.ndarray, path: str) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: the voxel-to-world transform is missing or not finite")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing < 0.05) or np.any(spacing > 20.0) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(
            f"{path}: voxel spacing {np.round(spacing, 4).tolist()} mm is missing or implausible for a CT "
            "(expected 0.05..20 mm on every axis)"
        )
    return affine


def load_nifti(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) of a NIfTI file; scaling (scl_slope/inter) applied. No HU check."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    p = Path(path)
    try:
        img = nib.load(str(p))
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except Exception as exc:  # nibabel raises a zoo of types for a file that is not NIfTI
        raise InputError(f"{p}: not a readable NIfTI/Analyze image ({exc})") from exc
    if not hasattr(img, "affine") or img.affine is None:
        raise InputError(f"{p}: the image has no voxel-to-world transform (spacing/orientation missing)")
    # nibabel quietly turns a zero pixdim into 1 mm when it loads; the raw header tells the truth.
    with ImageOpener(str(p)) as f:
        raw = type(img.header).from_fileobj(f, check=False)
    zooms = [float(z) for z in raw["pixdim"][1:4]]
    if any(not np.isfinite(z) or z <= 0 for z in zooms):
        raise InputError(f"{p}: voxel spacing is missing from the header (pixdim {zooms})")
    if "qform_code" in raw and int(raw["qform_code"]) == 0 and int(raw["sform_code"]) == 0:
        raise InputError(f"{p}: the header gives no orientation (qform_code and sform_code are both 0)")
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return data, np.asarray(img.affine, dtype=np.float64)


def load_dicom_series(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """(HU volume, RAS affine, files) of one DICOM CT series: a folder of slices, or one slice of the folder."""
    import pydicom

    p = Path(path)
    files = sorted(f for f in (p.iterdir() if p.is_dir() else p.parent.iterdir()) if f.is_file())
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=False)
        except Exception:  # not DICOM: skipped, the folder may hold other files
            continue
        if "PixelData" in ds and "ImagePositionPatient" in ds:
            slices.append((f, ds))
    if not slices:
        raise InputError(f"{p}: no DICOM image slices with a position found")
    uid = slices[0][1].get("SeriesInstanceUID")
    slices = [s for s in slices if s[1].get("SeriesInstanceUID") == uid]
    ds0 = slices[0][1]
    if ds0.get("Modality", "CT") != "CT":
        raise InputError(f"{p}: DICOM modality is {ds0.get('Modality')!r}, not CT")
    for tag in ("ImageOrientationPatient", "PixelSpacing"):
        if tag not in ds0:
            raise InputError(f"{p}: DICOM series has no {tag} (spacing/orientation missing)")
    row_dir = np.array(ds0.ImageOrientationPatient[:3], float)  # direction of increasing column index
    col_dir = np.array(ds0.ImageOrientationPatient[3:], float)  # direction of increasing row index
    normal = np.cross(row_dir, col_dir)
    slices.sort(key=lambda s: float(np.dot(normal, np.array(s[1].ImagePositionPatient, float))))
    positions = np.array([np.array(s[1].ImagePositionPatient, float) for s in slices])
    if len(slices) < 2:
        raise InputError(f"{p}: a CT series needs at least 2 slices, found {len(slices)}")
    steps = np.diff(positions @ normal)
    if np.any(steps <= 1e-3) or np.ptp(steps) > 0.01 * np.mean(steps) + 1e-3:
        raise InputError(f"{p}: slices are duplicated or unevenly spaced (steps {np.round(steps, 3).tolist()} mm)")
    dr, dc = (float(v) for v in ds0.PixelSpacing)  # row spacing, column spacing
    vol = []
    for f, ds in slices:
        try:
            arr = ds.pixel_array.astype(np.float32)
        except Exception as exc:  # compressed syntaxes need optional decoders (pylibjpeg, gdcm)
            raise InputError(f"{f}: cannot decode the pixel data ({exc})") from exc
        if arr.shape != (int(ds0.Rows), int(ds0.Columns)):
            raise InputError(f"{f}: slice size {arr.shape} differs from the series' {ds0.Rows}x{ds0.Columns}")
        slope, inter = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
        vol.append(arr * slope + inter)
    # pixel_array is (rows, cols); index the volume as (col, row, slice) so axis 0 runs along row_dir.
    hu = np.stack([v.T for v in vol], axis=-1)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dc
    lps[:3, 1] = col_dir * dr
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(slices) - 1)
    lps[:3, 3] = positions[0]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return hu, ras, [s[0] for s in slices]


def load_ct(path: str | os.PathLike[str], labels: str | os.PathLike[str] | None = None) -> CTVolume:
    """Read a CT (NIfTI file, DICOM folder or one DICOM file of the series) and an optional NIfTI label map."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    name = p.name.lower()
    if p.is_dir() or name.endswith(".dcm") or not (name.endswith(".nii") or name.endswith(".nii.gz")):
        if not p.is_dir() and not _is_dicom(p):
            raise InputError(f"{p}: neither NIfTI (.nii, .nii.gz) nor DICOM")
        hu, affine, files = load_dicom_series(p)
    else:
        hu, affine = load_nifti(p)
        files = [p]
    affine = _check_affine(affine, str(p))
    hu = _check_hu(hu, str(p))
    ct = CTVolume(hu=hu, affine=affine, path=str(p), sha256=_sha256(files))
    if labels is not None:
        lab, lab_affine = load_nifti(labels)
        if lab.shape != hu.shape:
            raise InputError(f"{labels}: label map shape {lab.shape} differs from the CT's {hu.shape}")
        if not np.allclose(lab_affine, affine, atol=1e-3 * float(ct.spacing.min()) + 1e-4):
            raise InputError(f"{labels}: label map grid (affine) differs from the CT's")
        if np.any(lab < 0) or np.any(lab != np.round(lab)):
            raise InputError(f"{labels}: a label map must hold non-negative integers")
        ct.labels = lab.astype(np.int32)
        ct.labels_path = str(labels)
    return ct


def _is_dicom(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc})") from exc
    return len(head) == 132 and head[128:132] == b"DICM"
