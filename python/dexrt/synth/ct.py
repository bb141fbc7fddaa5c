"""CT input in Hounsfield units, with an index -> world (RAS+ mm) affine: NIfTI (nibabel), NRRD and MetaImage
(SimpleITK), DICOM series (pydicom, `dexrt.synth.ct_dicom`).

World coordinates everywhere in `dexrt.synth` are patient RAS+ millimetres, the NIfTI convention: +x towards
the patient's right, +y anterior, +z superior. ITK (NRRD, MetaImage) and DICOM give LPS+ patient coordinates;
they are flipped into RAS+ here, once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dexrt._errors import InputError

log = logging.getLogger(__name__)

_HU_MIN, _HU_MAX = -1024.0, 3071.0  # the range a CT scanner writes; values outside are padding or corrupt
_PADDING_HU = -1500.0  # below: outside the scanner's field of view (often -2048 or -3024), not air
_MAX_VOXELS = 1024**3
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
THICK_SLICE_MM = 3.0  # slices at least this thick are interpolated before rendering (`resample_axial`)


@dataclass
class CTVolume:
    """A CT in Hounsfield units. `hu[i, j, k]` sits at world point `affine @ (i, j, k, 1)` (RAS+ mm)."""

    hu: np.ndarray  # (n0, n1, n2) float32
    affine: np.ndarray  # (4, 4) float64
    labels: np.ndarray | None = None  # (n0, n1, n2) int32 label map on the same grid, or None
    path: str = ""
    labels_path: str | None = None
    sha256: str = ""
    meta: dict = field(default_factory=dict)  # reader, notes (resampling done on reading), ...

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


def check_hu(hu: np.ndarray, path: str) -> np.ndarray:
    """The volume as float32 HU clipped to the scanner's range, or InputError saying why it is not a CT in HU:
    air not near -1000 (a shifted volume, e.g. stored values without their -1024 intercept), a volume clipped to
    a display window, or something that is no CT at all."""
    if hu.ndim != 3:
        raise InputError(f"{path}: a CT must be a 3-D volume, got shape {hu.shape}")
    if min(hu.shape) < 2 or hu.size > _MAX_VOXELS:
        raise InputError(f"{path}: unusable volume shape {hu.shape}")
    if not np.all(np.isfinite(hu)):
        raise InputError(f"{path}: the volume contains NaN or infinite values")
    sample = hu[:: max(1, hu.shape[0] // 64)].astype(np.float32).ravel()
    lo, hi = float(hu.min()), float(hu.max())
    inside = sample[sample > _PADDING_HU]  # padding outside the reconstruction circle is no measurement
    if inside.size < 0.2 * sample.size:
        raise InputError(f"{path}: {100 * (1 - inside.size / sample.size):.0f} % of the voxels are below "
                         f"{_PADDING_HU:.0f} HU: not a CT in Hounsfield units (or only padding)")
    air, p50 = (float(v) for v in np.percentile(inside, [1, 50]))
    at_min = _pile(inside, float(inside.min()), +200.0)
    at_max = _pile(inside, float(inside.max()), -200.0)
    denser = inside[inside > air + 500.0]
    tissue = float(np.median(denser)) if denser.size else air
    if -200.0 <= air <= 200.0 and 850.0 <= tissue <= 1250.0:
        raise InputError(
            f"{path}: air is at {air:.0f} and soft tissue near {tissue:.0f}: the values look shifted by about +1024 "
            "(stored pixel values without their rescale intercept of -1024?); convert to Hounsfield units "
            "(air -1000, water 0) first")
    if inside.min() > -950.0 and at_min > 0.02:
        raise InputError(
            f"{path}: {100 * at_min:.0f} % of the voxels sit at the minimum, {inside.min():.0f} HU: the volume "
            "looks clipped to a display window (air must reach about -1000 HU); use the CT as reconstructed")
    if inside.max() < 1500.0 and at_max > 0.002 and air < -800.0:
        raise InputError(
            f"{path}: {100 * at_max:.1f} % of the voxels sit at the maximum, {inside.max():.0f} HU: the volume "
            "looks clipped to a display window (bone and contrast above it are lost); use the CT as reconstructed")
    # A CT in HU has air near -1000 and tissue near 0..100; anything else is some other image.
    if air > -800.0 or air < -1100.0 or hi < 0 or p50 > 1500 or lo < -10000 or hi > 40000:
        raise InputError(
            f"{path}: does not look like a CT in Hounsfield units (min {lo:.0f}, max {hi:.0f}, 1st percentile "
            f"{air:.0f}); expected air near -1000 HU and soft tissue near 0 HU")
    # Padding (often -2048 or -3024) becomes air; beyond 3071 HU is metal or clipping, kept at the scanner max.
    return np.clip(hu, _HU_MIN, _HU_MAX).astype(np.float32, copy=False)


def _pile(values: np.ndarray, edge: float, toward: float) -> float:
    """The share of voxels at exactly `edge` when they pile up there as a clipped measurement does: at least 50
    of them, with the next `toward` HU populated too (a continuous distribution cut off, not a phantom's flat
    value or a tiny volume of random numbers)."""
    n_edge = int(np.sum(values == edge))
    lo, hi = sorted((edge, edge + toward))
    n_near = int(np.sum((values > lo) & (values < hi)))
    return n_edge / values.size if n_edge >= 50 and n_near >= 0.05 * n_edge else 0.0


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


def load_itk(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """(data, RAS affine, files) of an NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) volume, read by SimpleITK.

    ITK gives origin, spacing and direction cosines in LPS+; the array it returns is indexed (k, j, i). Both
    are turned round here: `data[i, j, k]` sits at `LPS_TO_RAS @ (origin + direction @ (spacing * (i, j, k)))`.
    """
    import SimpleITK as sitk

    p = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        img = reader.Execute()
    except RuntimeError as exc:  # ITK's message: the first line names the cause
        first = str(exc).strip().splitlines()
        raise InputError(f"{p}: not a readable NRRD/MetaImage volume ({first[-1] if first else exc})") from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{p}: a CT must be a 3-D scalar volume, got {img.GetDimension()}-D with "
                         f"{img.GetNumberOfComponentsPerPixel()} values per voxel")
    if p.suffix.lower() in (".nrrd", ".nhdr") and not img.HasMetaDataKey("NRRD_space"):
        raise InputError(f"{p}: the NRRD header gives no 'space' (patient orientation unknown)")
    data = np.asarray(sitk.GetArrayViewFromImage(img), dtype=np.float32).transpose(2, 1, 0).copy()
    lps = np.eye(4)
    lps[:3, :3] = np.array(img.GetDirection(), float).reshape(3, 3) * np.array(img.GetSpacing(), float)
    lps[:3, 3] = img.GetOrigin()
    return data, LPS_TO_RAS @ lps, [p, *_detached_data(p)]


def _detached_data(p: Path) -> list[Path]:
    """The pixel-data file a detached header (.mhd, .nhdr) names, for the CT's checksum."""
    if p.suffix.lower() not in (".mhd", ".nhdr"):
        return []
    key = r"^\s*ElementDataFile\s*=\s*(\S+)" if p.suffix.lower() == ".mhd" else r"^\s*data ?file:\s*(\S+)"
    with open(p, "rb") as f:
        head = f.read(1 << 16).decode("latin-1")
    m = re.search(key, head, re.MULTILINE | re.IGNORECASE)
    if not m:
        return []
    target = p.parent / m.group(1)
    return [target] if target.is_file() else []


def _kind(p: Path) -> str:
    name = p.name.lower()
    if p.is_dir():
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    if _is_dicom(p):
        return "dicom"
    raise InputError(f"{p}: neither NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) nor DICOM")


def load_ct(path: str | os.PathLike[str], labels: str | os.PathLike[str] | None = None) -> CTVolume:
    """Read a CT (NIfTI, NRRD or MetaImage file, DICOM folder or one DICOM file of the series) and an optional
    label map (NIfTI, NRRD or MetaImage) on the same grid."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    kind = _kind(p)
    notes: list[str] = []
    if kind == "dicom":
        from dexrt.synth.ct_dicom import load_dicom_series

        hu, affine, files, notes = load_dicom_series(p)
    elif kind == "nifti":
        hu, affine = load_nifti(p)
        files = [p]
    else:
        hu, affine, files = load_itk(p)
    affine = _check_affine(affine, str(p))
    hu = check_hu(hu, str(p))
    for note in notes:
        log.warning("%s: %s", p, note)
    ct = CTVolume(hu=hu, affine=affine, path=str(p), sha256=_sha256(files),
                  meta={"reader": {"dicom": "pydicom", "nifti": "nibabel", "itk": "SimpleITK"}[kind],
                        "notes": notes})
    if labels is not None:
        lab, lab_affine = _load_labels(Path(labels))
        if lab.shape != hu.shape:
            raise InputError(f"{labels}: label map shape {lab.shape} differs from the CT's {hu.shape}")
        if not np.allclose(lab_affine, affine, atol=1e-3 * float(ct.spacing.min()) + 1e-4):
            raise InputError(f"{labels}: label map grid (affine) differs from the CT's")
        if np.any(lab < 0) or np.any(lab != np.round(lab)):
            raise InputError(f"{labels}: a label map must hold non-negative integers")
        ct.labels = lab.astype(np.int32)
        ct.labels_path = str(labels)
    return ct


def _load_labels(p: Path) -> tuple[np.ndarray, np.ndarray]:
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    name = p.name.lower()
    if name.endswith(ITK_SUFFIXES):
        data, affine, _ = load_itk(p)
        return data, affine
    return load_nifti(p)


def resample_axial(ct: CTVolume, spacing_mm: float) -> CTVolume:
    """The CT with its slices interpolated (linearly; labels: nearest) to at most `spacing_mm` along the axial
    index axis, when they are at least `THICK_SLICE_MM` thick; otherwise the CT itself.

    Thick slices traced as they are show every bone edge that crosses a slice boundary as a step in the DRR's
    head-feet direction. Interpolation turns the steps into ramps; it adds no resolution: detail thinner than a
    slice stays smeared over it. The first and last slice centres stay where they are (no extrapolation).
    """
    from dexrt.synth.volume import axial_axis

    ax = axial_axis(ct.affine)
    thick = float(ct.spacing[ax])
    if thick < THICK_SLICE_MM or spacing_mm <= 0 or thick <= spacing_mm:
        return ct
    n_sub = int(np.ceil(thick / spacing_mm - 1e-6))
    n = ct.hu.shape[ax]
    pos = np.arange((n - 1) * n_sub + 1) / n_sub  # new slice positions in old slice indices
    i0 = np.minimum(pos.astype(int), n - 2)
    w = (pos - i0).astype(np.float32)
    hu = np.moveaxis(ct.hu, ax, -1)
    out = hu[..., i0] * (1.0 - w) + hu[..., i0 + 1] * w
    affine = ct.affine.copy()
    affine[:3, ax] = ct.affine[:3, ax] / n_sub
    labels = None
    if ct.labels is not None:
        labels = np.moveaxis(np.moveaxis(ct.labels, ax, -1)[..., np.rint(pos).astype(int)], -1, ax)
    note = (f"slices of {thick:.2f} mm interpolated linearly to {thick / n_sub:.2f} mm along the patient's long axis "
            "(no stair-steps; no detail finer than a slice is created)")
    meta = {**ct.meta, "notes": [*ct.meta.get("notes", []), note],
            "slices": {"thickness_mm": round(thick, 4), "interpolated_to_mm": round(thick / n_sub, 4)}}
    return replace(ct, hu=np.ascontiguousarray(np.moveaxis(out.astype(np.float32), -1, ax)), affine=affine,
                   labels=labels, meta=meta)


def _is_dicom(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc})") from exc
    return len(head) == 132 and head[128:132] == b"DICM"
