"""Each input's pixel spacing at the patient, and where it came from: never silently wrong.

The model learned anatomy at one pixel spacing, measured in the patient's mid-plane (the isocentre of its
training views). An input's spacing is resolved in this order (docs/infer.md, "Pixel spacing"):

1. **The DICOM header**, by the rules of PS3.3 (C.7.6.2 Image Plane, C.8.11.4 DX Detector, 10.7.1.3 Pixel
   Spacing Calibration Macro):

   - ``PixelSpacing`` (0028,0030) is the spacing in the patient when it has been calibrated: a
     ``PixelSpacingCalibrationType`` (GEOMETRY, FIDUCIAL) says so, or it differs from ``ImagerPixelSpacing``
     (so something corrected it). Alone (no ``ImagerPixelSpacing`` to compare with, as in most CR files), it is
     taken as stated. Equal to ``ImagerPixelSpacing`` and uncalibrated, it is only the detector's spacing.
   - ``ImagerPixelSpacing`` (0018,1164) is measured at the detector's front plane; the anatomy is magnified by
     the diverging beam, so it is divided by ``EstimatedRadiographicMagnificationFactor`` (0018,1114) or, when
     that is absent, by ``DistanceSourceToDetector / DistanceSourceToPatient`` (0018,1110 / 0018,1111).

   Zero, negative, non-numeric or implausible values (outside `dexrt.runtime.pixel_spacing.PLAUSIBLE_MM`) are ignored,
   and say so.
2. **``--input-spacing MM``** (the user), for files whose header gives no usable spacing (PNG and TIFF never do:
   their resolution tags are display settings more often than not).
3. **An estimate**, always marked as one:

   - a detector spacing without magnification (``ImagerPixelSpacing``, or ``DetectorElementSpacing`` times
     ``DetectorBinning``, or the ``DetectorActiveDimensions`` or CR ``CassetteSize`` that the image fills)
     divided by `TYPICAL_MAGNIFICATION`;
   - otherwise the body's width: `TYPICAL_BODY_WIDTH_MM` over the width measured in the image
     (`dexrt.inputs.chest`).

The result says what was used (`InputSpacing.source`, `detail`) for the log, `--json`, and the derived files.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from dexrt.inputs.chest import Anatomy
from dexrt.runtime.pixel_spacing import plausible

# The mid-plane of an adult PA chest sits about 12-18 cm in front of the detector at 180 cm SID (180 / 165):
# 1.1 is a typical chest magnification; an AP bedside film at 100 cm is nearer 1.15-1.2 (docs/infer.md).
TYPICAL_MAGNIFICATION = 1.1
# Skin-to-skin width of an adult chest at the lower lung zones on a frontal radiograph: an assumption (adult
# thoracic widths spread about +-10 %; children are far smaller). The example CT's patient measures 299-305 mm.
TYPICAL_BODY_WIDTH_MM = 320.0
# A chest narrower or wider than this at a stated spacing means the spacing (or the image) is wrong.
PLAUSIBLE_BODY_WIDTH_MM = (120.0, 600.0)

# How each spacing was obtained: the keys of `InputSpacing.source`.
SOURCES = {
    "header": "the DICOM header's calibrated spacing at the patient",
    "header-magnification": "the detector spacing in the DICOM header, corrected for the recorded magnification",
    "user": "--input-spacing",
    "estimated-detector": "a detector spacing in the header divided by a typical chest magnification",
    "estimated-body-width": "a typical adult chest width over the body's width measured in the image",
}
_CASSETTE = re.compile(r"(\d+(?:\.\d+)?)(CM|IN)X(\d+(?:\.\d+)?)(CM|IN)")


@dataclass(frozen=True)
class InputSpacing:
    """An input's pixel spacing (row, col) in mm at the patient, and where it came from."""

    row_mm: float
    col_mm: float
    source: str  # a key of SOURCES
    detail: str  # one line: which tags and values, or which method with its numbers

    @property
    def estimated(self) -> bool:
        return self.source.startswith("estimated")

    @property
    def mm(self) -> tuple[float, float]:
        return (self.row_mm, self.col_mm)

    def as_dict(self) -> dict[str, Any]:
        return {"row_mm": round(self.row_mm, 5), "col_mm": round(self.col_mm, 5), "source": self.source,
                "estimated": self.estimated, "detail": self.detail}

    def describe(self) -> str:
        same = math.isclose(self.row_mm, self.col_mm, rel_tol=1e-3)
        value = f"{self.row_mm:.4g} mm" if same else f"{self.row_mm:.4g} x {self.col_mm:.4g} mm"
        return f"pixel spacing {value}, {'ESTIMATED: ' if self.estimated else ''}{self.detail}"


@dataclass(frozen=True)
class HeaderSpacing:
    """What a DICOM header says about spacing: a usable spacing at the patient, or only a detector spacing
    (no magnification known), plus notes on values that were ignored."""

    spacing: InputSpacing | None
    detector_mm: tuple[float, float] | None  # at the detector, magnification unknown
    detector_detail: str = ""
    notes: tuple[str, ...] = ()


def _pair(ds: Any, keyword: str, notes: list[str]) -> tuple[float, float] | None:
    value = ds.get(keyword)
    if value is None:
        return None
    items = value if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) else [value]
    try:
        values = [float(v) for v in items]
    except (TypeError, ValueError):
        notes.append(f"{keyword} {value!r} is not numeric, ignored")
        return None
    if len(values) != 2:
        notes.append(f"{keyword} has {len(values)} values, not 2, ignored")
        return None
    if not all(plausible(v) for v in values):
        notes.append(f"{keyword} {values[0]:g}\\{values[1]:g} is not a usable spacing, ignored")
        return None
    return values[0], values[1]


def _number(ds: Any, keyword: str) -> float | None:
    try:
        value = float(ds.get(keyword))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def header_spacing(ds: Any, shape: tuple[int, int] | None = None) -> HeaderSpacing:
    """Read a DICOM dataset's spacing tags by the PS3.3 rules (module docstring). `shape` (rows, cols) lets a
    CR cassette size give a detector spacing."""
    notes: list[str] = []
    pixel = _pair(ds, "PixelSpacing", notes)
    imager = _pair(ds, "ImagerPixelSpacing", notes)
    calibration = str(ds.get("PixelSpacingCalibrationType", "") or "").upper()
    if pixel is not None:
        if calibration:
            return HeaderSpacing(InputSpacing(*pixel, "header", f"PixelSpacing, calibrated ({calibration})"),
                                 None, notes=tuple(notes))
        if imager is None:
            return HeaderSpacing(InputSpacing(*pixel, "header", "PixelSpacing"), None, notes=tuple(notes))
        if not all(math.isclose(p, i, rel_tol=1e-4) for p, i in zip(pixel, imager)):
            return HeaderSpacing(InputSpacing(*pixel, "header", "PixelSpacing (corrected from ImagerPixelSpacing "
                                              f"{imager[0]:g}\\{imager[1]:g})"), None, notes=tuple(notes))
        notes.append("PixelSpacing equals ImagerPixelSpacing without a calibration type: a detector spacing")
    detector, what = None, ""
    if imager is not None:
        detector, what = imager, f"ImagerPixelSpacing {imager[0]:g}\\{imager[1]:g}"
    if detector is None:
        element = _pair(ds, "DetectorElementSpacing", notes)
        if element is not None:
            binning = _pair_raw(ds, "DetectorBinning") or (1.0, 1.0)
            detector = (element[0] * binning[0], element[1] * binning[1])
            what = f"DetectorElementSpacing {element[0]:g}\\{element[1]:g} x binning {binning[0]:g}\\{binning[1]:g}"
    if detector is None and shape is not None:
        detector, what = _whole_detector(ds, shape, notes)
    if detector is None:
        return HeaderSpacing(None, None, notes=tuple(notes))
    ermf = _number(ds, "EstimatedRadiographicMagnificationFactor")
    if ermf is not None and not 1.0 <= ermf <= 3.0:
        notes.append(f"EstimatedRadiographicMagnificationFactor {ermf:g} is not a magnification (1 to 3), ignored")
        ermf = None
    if ermf is not None:
        row, col = detector[0] / ermf, detector[1] / ermf
        return HeaderSpacing(InputSpacing(row, col, "header-magnification",
                                          f"{what} / EstimatedRadiographicMagnificationFactor {ermf:g}"),
                             None, notes=tuple(notes))
    sid, sod = _number(ds, "DistanceSourceToDetector"), _number(ds, "DistanceSourceToPatient")
    if sid is not None and sod is not None and sod <= sid <= 3 * sod:
        magnification = sid / sod
        row, col = detector[0] / magnification, detector[1] / magnification
        return HeaderSpacing(InputSpacing(row, col, "header-magnification",
                                          f"{what} / magnification {magnification:.4g} (DistanceSourceToDetector "
                                          f"{sid:g} / DistanceSourceToPatient {sod:g})"), None, notes=tuple(notes))
    return HeaderSpacing(None, detector, what, tuple(notes))


def _pair_raw(ds: Any, keyword: str, upper: float = 16.0) -> tuple[float, float] | None:
    """Two positive numbers up to `upper` (binning factors, detector sizes in mm), or None."""
    try:
        a, b = (float(v) for v in ds.get(keyword))
    except (TypeError, ValueError):
        return None
    return (a, b) if all(math.isfinite(v) and 0 < v <= upper for v in (a, b)) else None


def _whole_detector(ds: Any, shape: tuple[int, int], notes: list[str]) -> tuple[tuple[float, float] | None, str]:
    """A detector spacing from the size of the whole detector, when the image has its aspect ratio (within 5 %,
    so it is not a crop): ``DetectorActiveDimensions`` of a DX panel, or a CR ``CassetteSize`` (18CMX24CM ...),
    since a CR plate is read whole."""
    dims = _pair_raw(ds, "DetectorActiveDimensions", upper=2000.0)
    if dims is not None:
        found, what = dims, f"DetectorActiveDimensions {dims[0]:g}\\{dims[1]:g} mm"
    else:
        text = str(ds.get("CassetteSize", "") or "").upper().replace(" ", "")
        match = _CASSETTE.fullmatch(text)
        if not match:
            return None, ""
        a, b = (float(match[i]) * (10.0 if match[i + 1] == "CM" else 25.4) for i in (1, 3))
        found, what = (a, b), f"CassetteSize {text}"
    rows, cols = shape
    long_mm, short_mm = max(found), min(found)
    long_px, short_px = max(rows, cols), min(rows, cols)
    if abs((long_mm / short_mm) / (long_px / short_px) - 1) > 0.05:
        notes.append(f"{what} does not match the image's aspect ratio (cropped?), not used")
        return None, ""
    spacing = long_mm / long_px
    return (spacing, spacing), f"{what} over {rows}x{cols} pixels"


def resolve(header: HeaderSpacing | None, anatomy: Anatomy | None, shape: tuple[int, int],
            user_mm: float | None = None) -> InputSpacing | None:
    """The spacing to use for one image (module docstring's order); None only when nothing at all is known
    (no header spacing, no option, and no body found in the image)."""
    if header is not None and header.spacing is not None:
        return header.spacing
    ignored = "; ".join(header.notes) if header is not None and header.notes else ""
    suffix = f"; {ignored}" if ignored else ""
    if user_mm is not None:
        return InputSpacing(user_mm, user_mm, "user", f"--input-spacing {user_mm:g}{suffix}")
    if header is not None and header.detector_mm is not None:
        row, col = (v / TYPICAL_MAGNIFICATION for v in header.detector_mm)
        return InputSpacing(row, col, "estimated-detector",
                            f"{header.detector_detail} / typical chest magnification {TYPICAL_MAGNIFICATION:g} "
                            f"(no magnification in the header){suffix}")
    if anatomy is not None and anatomy.body_width_px:
        spacing = TYPICAL_BODY_WIDTH_MM / anatomy.body_width_px
        if plausible(spacing):
            bound = "; the body reaches the image edge, so it may be smaller" if anatomy.cut else ""
            return InputSpacing(spacing, spacing, "estimated-body-width",
                                f"a typical adult chest width of {TYPICAL_BODY_WIDTH_MM:g} mm over the body's "
                                f"{anatomy.body_width_px:.0f}-pixel width{bound}{suffix}")
    return None


def body_width_doubt(spacing: InputSpacing, anatomy: Anatomy) -> str | None:
    """A sentence when a spacing from the header or the user makes the chest implausibly narrow or wide."""
    if spacing.source == "estimated-body-width" or not anatomy.body_width_px or anatomy.cut:
        return None
    width = anatomy.body_width_px * spacing.col_mm
    low, high = PLAUSIBLE_BODY_WIDTH_MM
    if low <= width <= high:
        return None
    return (f"at {spacing.col_mm:.4g} mm per pixel ({spacing.detail}) the body is {width:.0f} mm wide, outside "
            f"{low:g}-{high:g} mm for a chest: check the spacing")
