"""A DICOM CT series as a volume (pydicom): one series per folder, slices sorted by ImagePositionPatient along
the slice normal, RescaleSlope/Intercept applied.

What real series do, and what happens:

* several series in the folder: refused, with a list of them; one file of a series picks that series;
* gantry tilt (slice positions that move within the slice plane from slice to slice): each slice is shifted
  back in its plane (linear interpolation), which puts the volume on a grid orthogonal to the slices; noted;
* uneven slice spacing (a series with two slice intervals, a skipped slice): resampled along the normal to the
  median interval by linear interpolation between neighbouring slices; noted. Gaps larger than 2.5 intervals
  (missing slices) and duplicated positions are refused.

Returned affines are RAS+ (DICOM's LPS+ flipped).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from dexrt._errors import InputError
from dexrt.synth.ct import LPS_TO_RAS

_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
_MAX_GAP = 2.5  # a slice interval this many times the median one is a hole in the series, not uneven spacing
_TILT_MIN_DEG = 0.05


def _headers(folder: Path) -> dict[str, list[tuple[Path, Any]]]:
    """SeriesInstanceUID -> [(file, header)] of the image slices in `folder` (other files are skipped)."""
    import pydicom

    series: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for f in sorted(x for x in folder.iterdir() if x.is_file()):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:  # not DICOM: skipped, the folder may hold other files
            continue
        if "ImagePositionPatient" in ds and "Rows" in ds:
            series[str(ds.get("SeriesInstanceUID", ""))].append((f, ds))
    return series


def describe_series(uid: str, items: list[tuple[Path, Any]]) -> str:
    ds = items[0][1]
    number = ds.get("SeriesNumber", "?")
    text = str(ds.get("SeriesDescription", "") or "").strip()
    modality = ds.get("Modality", "?")
    return (f"series {number} {modality} {text!r}: {len(items)} slices, UID {uid} (e.g. {items[0][0].name})")


def load_dicom_series(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, list[Path], list[str]]:
    """(HU volume, RAS affine, files, notes) of one DICOM CT series: a folder holding one series, or one file
    of a series (the series it belongs to is read from its folder)."""
    import pydicom

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    series = _headers(folder)
    if not series:
        raise InputError(f"{p}: no DICOM image slices with a position found")
    if p.is_file():
        try:
            uid = str(pydicom.dcmread(str(p), stop_before_pixels=True).get("SeriesInstanceUID", ""))
        except Exception as exc:
            raise InputError(f"{p}: not a readable DICOM file ({exc})") from None
        if uid not in series:
            raise InputError(f"{p}: not an image slice with a position (ImagePositionPatient)")
    elif len(series) > 1:
        listing = "; ".join(describe_series(u, items) for u, items in series.items())
        raise InputError(f"{p}: holds {len(series)} series ({listing}); give one file of the series to read "
                         "(its folder is searched for the rest) or a folder with one series")
    else:
        uid = next(iter(series))
    items = series[uid]
    ds0 = items[0][1]
    modality = ds0.get("Modality", "CT")
    if modality != "CT":
        raise InputError(f"{p}: DICOM modality is {modality!r}, not CT")
    if int(ds0.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError(f"{items[0][0]}: a multi-frame (enhanced) CT object; dexrt reads series of single-frame "
                         "CT slices (convert it, e.g. to NIfTI or NRRD)")
    for tag in ("ImageOrientationPatient", "PixelSpacing"):
        if tag not in ds0:
            raise InputError(f"{p}: DICOM series has no {tag} (spacing/orientation missing)")
    iop = np.array(ds0.ImageOrientationPatient, float)
    row_dir, col_dir = iop[:3], iop[3:]  # directions of increasing column index and of increasing row index
    normal = np.cross(row_dir, col_dir)
    dr, dc = (float(v) for v in ds0.PixelSpacing)  # row spacing, column spacing
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    for f, ds in items:
        if not np.allclose(np.array(ds.ImageOrientationPatient, float), iop, atol=1e-4):
            raise InputError(f"{f}: slice orientation differs from the series' (ImageOrientationPatient)")
        size = (int(ds.Rows), int(ds.Columns))
        if size != (rows, cols):
            raise InputError(f"{f}: slice size {size[0]}x{size[1]} differs from the series' {rows}x{cols}")
    if len(items) < 2:
        raise InputError(f"{p}: a CT series needs at least 2 slices, found {len(items)}")
    items.sort(key=lambda s: float(normal @ np.array(s[1].ImagePositionPatient, float)))
    positions = np.array([np.array(s[1].ImagePositionPatient, float) for s in items])
    depth = (positions - positions[0]) @ normal  # along the normal, mm
    steps = np.diff(depth)
    if np.any(steps <= 1e-3):
        k = int(np.argmin(steps))
        raise InputError(f"{p}: slices {items[k][0].name} and {items[k + 1][0].name} share a position (duplicated "
                         "slices, or two acquisitions in one series)")
    median = float(np.median(steps))
    if steps.max() > _MAX_GAP * median:
        k = int(np.argmax(steps))
        raise InputError(f"{p}: a gap of {steps[k]:.2f} mm between slices {items[k][0].name} and "
                         f"{items[k + 1][0].name}, where slices are {median:.2f} mm apart: missing slices")

    vol = np.empty((len(items), rows, cols), np.float32)
    for k, (f, _) in enumerate(items):
        ds = pydicom.dcmread(str(f))
        try:
            arr = ds.pixel_array.astype(np.float32)
        except Exception as exc:  # compressed syntaxes need optional decoders (pylibjpeg, gdcm)
            raise InputError(f"{f}: cannot decode the pixel data ({exc}); pip install 'dexrt[dicom]'") from exc
        slope, inter = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
        vol[k] = arr * slope + inter

    notes: list[str] = []
    # Gantry tilt: the in-plane part of each slice's offset from the first, undone slice by slice.
    drift = positions - positions[0] - depth[:, None] * normal
    shift_cols, shift_rows = drift @ row_dir / dc, drift @ col_dir / dr
    tilt_deg = float(np.degrees(np.arctan2(np.linalg.norm(drift[-1]), depth[-1])))
    if tilt_deg > _TILT_MIN_DEG and max(np.abs(shift_cols).max(), np.abs(shift_rows).max()) > 0.05:
        from scipy import ndimage

        air = float(vol.min())
        for k in range(len(items)):
            vol[k] = ndimage.shift(vol[k], (shift_rows[k], shift_cols[k]), order=1, mode="constant", cval=air)
        notes.append(f"gantry tilt of {tilt_deg:.2f} deg: slices shifted in their plane onto a grid orthogonal to "
                     "them (linear interpolation; the part of the field of view the tilt moves out is air)")
    # Uneven spacing: linear interpolation along the normal onto the median interval.
    if np.ptp(steps) > 0.01 * median + 1e-3:
        n = round(depth[-1] / median) + 1
        target = np.arange(n) * (depth[-1] / (n - 1))
        i1 = np.clip(np.searchsorted(depth, target, side="right"), 1, len(depth) - 1)
        w = ((target - depth[i1 - 1]) / (depth[i1] - depth[i1 - 1])).astype(np.float32)
        vol = vol[i1 - 1] * (1.0 - w)[:, None, None] + vol[i1] * w[:, None, None]
        notes.append(f"uneven slice spacing ({steps.min():.2f}-{steps.max():.2f} mm): resampled along the slice "
                     f"normal to {depth[-1] / (n - 1):.3f} mm by linear interpolation")
        step = depth[-1] / (n - 1)
    else:
        step = depth[-1] / (len(depth) - 1)

    # pixel_array is (rows, cols); index the volume as (col, row, slice) so axis 0 runs along row_dir.
    hu = np.ascontiguousarray(vol.transpose(2, 1, 0))
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dc
    lps[:3, 1] = col_dir * dr
    lps[:3, 2] = normal * step
    lps[:3, 3] = positions[0]
    return hu, LPS_TO_RAS @ lps, [f for f, _ in items], notes
