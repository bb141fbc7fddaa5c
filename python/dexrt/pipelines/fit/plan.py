"""The treatment plan's side of `dexrt fit`: isocentres and beam angles from a DICOM RT Plan, and how a beam's
gantry angle becomes the angle the kV imager looks from, in the patient's frame.

An RT Plan (RT Plan Storage or RT Ion Plan Storage) lists beams; the first control point of each gives its
``IsocenterPosition`` (DICOM patient coordinates, LPS+ mm, in the plan's frame of reference), ``GantryAngle`` and
``PatientSupportAngle``, and ``GantryRotationDirection`` (CW/CC) marks an arc whose last control point holds its
end angle. Only ``TREATMENT`` beams count (``SETUP`` fields are positioning aids). A plan whose
``FrameOfReferenceUID`` differs from the CT's was planned on another image: refused. Isocentres closer than
`SAME_ISOCENTRE_MM` are one.

Angles (docs/fit.md, "From beam angles to kV angles"): IEC 61217 gantry angles are the room's. The kV source sits at
the MV gantry angle plus the imager's offset (the geometry preset's ``kv_offset_deg``). A room angle becomes a
patient-frame angle (dexrt's renderer: 0 = source anterior, 90 = source at the patient's left) through the patient
position: HFS keeps it, FFS negates it, HFP adds 180, FFP is 180 minus it. A couch (patient support) rotation turns
the patient about the vertical axis: +angle for a supine patient, -angle for a prone one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dexrt._errors import InputError

RT_PLAN_CLASSES = {"1.2.840.10008.5.1.4.1.1.481.5": "RT Plan", "1.2.840.10008.5.1.4.1.1.481.8": "RT Ion Plan"}
SAME_ISOCENTRE_MM = 0.5
POSITIONS = ("HFS", "FFS", "HFP", "FFP")


@dataclass(frozen=True)
class Beam:
    """One treatment beam: where it aims, the gantry angles it covers, the couch angle and patient position."""

    number: int
    name: str
    isocentre_lps_mm: tuple[float, float, float]
    gantry_deg: float  # start angle, IEC 61217
    arc_end_deg: float | None  # None: a static beam
    direction: str  # "CW", "CC" or "NONE"
    couch_deg: float
    position: str  # HFS, FFS, HFP or FFP

    def gantry_range(self) -> tuple[float, float]:
        """(start, extent) in degrees, extent >= 0 in the increasing-angle (CW) sense; a static beam has 0."""
        if self.arc_end_deg is None or self.direction == "NONE":
            return self.gantry_deg % 360.0, 0.0
        if self.direction == "CW":
            return self.gantry_deg % 360.0, (self.arc_end_deg - self.gantry_deg) % 360.0
        return self.arc_end_deg % 360.0, (self.gantry_deg - self.arc_end_deg) % 360.0


@dataclass(frozen=True)
class Plan:
    path: str
    patient_id: str | None
    frame_of_reference_uid: str | None
    sop_instance_uid: str | None
    label: str | None
    beams: tuple[Beam, ...]
    skipped: tuple[str, ...] = field(default_factory=tuple)  # beams left out, with why

    def isocentres(self) -> list[tuple[float, float, float]]:
        """The distinct isocentres, in the order of their first beam (LPS mm)."""
        out: list[tuple[float, float, float]] = []
        for b in self.beams:
            if all(np.linalg.norm(np.subtract(b.isocentre_lps_mm, p)) > SAME_ISOCENTRE_MM for p in out):
                out.append(b.isocentre_lps_mm)
        return out

    def beams_at(self, isocentre: tuple[float, float, float]) -> list[Beam]:
        return [b for b in self.beams
                if np.linalg.norm(np.subtract(b.isocentre_lps_mm, isocentre)) <= SAME_ISOCENTRE_MM]

    def record(self) -> dict[str, Any]:
        return {"file": Path(self.path).name, "sop_instance_uid": self.sop_instance_uid, "label": self.label,
                "frame_of_reference_uid": self.frame_of_reference_uid,
                "isocentres_lps_mm": [list(p) for p in self.isocentres()],
                "beams": [{"number": b.number, "name": b.name, "gantry_deg": b.gantry_deg,
                           "arc_end_deg": b.arc_end_deg, "direction": b.direction, "couch_deg": b.couch_deg,
                           "position": b.position, "isocentre_lps_mm": list(b.isocentre_lps_mm)}
                          for b in self.beams],
                "skipped": list(self.skipped)}


def _float(ds: Any, keyword: str, where: str) -> float:
    value = ds.get(keyword)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {keyword} is missing or not a number ({value!r})") from None
    if not np.isfinite(out):
        raise InputError(f"{where}: {keyword} is not finite ({value!r})")
    return out


def _setup_positions(ds: Any, path: Path) -> dict[int, str]:
    out = {}
    for item in ds.get("PatientSetupSequence") or []:
        number, position = item.get("PatientSetupNumber"), str(item.get("PatientPosition") or "").upper()
        if number is not None and position:
            out[int(number)] = position
    return out


def read_plan(path: str | os.PathLike[str]) -> Plan:
    """The treatment beams of an RT Plan file; InputError naming the file and what is wrong."""
    import pydicom

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such RT Plan file")
    try:
        ds = pydicom.dcmread(str(p), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises InvalidDicomError and others for files that are not DICOM
        raise InputError(f"{p}: not a readable DICOM file ({exc})") from exc
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in RT_PLAN_CLASSES and str(ds.get("Modality", "")) != "RTPLAN":
        raise InputError(f"{p}: not an RT Plan (SOP class {sop_class or 'missing'}, modality "
                         f"{ds.get('Modality', 'missing')})")
    beams_seq = ds.get("BeamSequence") or ds.get("IonBeamSequence")
    if not beams_seq:
        raise InputError(f"{p}: the RT Plan has no beams (no BeamSequence or IonBeamSequence)")
    positions = _setup_positions(ds, p)
    beams, skipped = [], []
    for i, beam in enumerate(beams_seq):
        number = int(beam.get("BeamNumber", i + 1))
        name = str(beam.get("BeamName") or beam.get("BeamDescription") or f"beam {number}")
        where = f"{p}: beam {number} ({name})"
        delivery = str(beam.get("TreatmentDeliveryType") or "TREATMENT").upper()
        if delivery != "TREATMENT":
            skipped.append(f"{name}: {delivery.lower()} beam")
            continue
        cps = beam.get("ControlPointSequence") or beam.get("IonControlPointSequence")
        if not cps:
            raise InputError(f"{where}: no control points")
        first = cps[0]
        if "IsocenterPosition" not in first:
            raise InputError(f"{where}: its first control point has no IsocenterPosition")
        iso = [float(v) for v in first.IsocenterPosition]
        if len(iso) != 3 or not np.all(np.isfinite(iso)):
            raise InputError(f"{where}: IsocenterPosition {iso} is not three finite numbers (mm)")
        gantry = _float(first, "GantryAngle", where)
        couch = _float(first, "PatientSupportAngle", where) if "PatientSupportAngle" in first else 0.0
        direction = str(first.get("GantryRotationDirection") or "NONE").upper()
        if direction not in ("CW", "CC", "NONE"):
            raise InputError(f"{where}: GantryRotationDirection {direction!r} is not CW, CC or NONE")
        end = None
        if direction != "NONE":
            angles = [float(cp.GantryAngle) for cp in cps if "GantryAngle" in cp]
            end = angles[-1]
        setup = beam.get("ReferencedPatientSetupNumber")
        position = positions.get(int(setup)) if setup is not None else None
        position = position or (next(iter(positions.values())) if len(set(positions.values())) == 1 else "HFS")
        if position not in POSITIONS:
            raise InputError(f"{where}: patient position {position!r} is not one of {', '.join(POSITIONS)} "
                             "(decubitus positions are not supported)")
        beams.append(Beam(number, name, (iso[0], iso[1], iso[2]), gantry % 360.0, None if end is None else end % 360.0,
                          direction, couch % 360.0, position))
    if not beams:
        raise InputError(f"{p}: the RT Plan has no treatment beams ({'; '.join(skipped)})")
    uid = ds.get("FrameOfReferenceUID")
    return Plan(str(p), str(ds.PatientID) if "PatientID" in ds else None, str(uid) if uid else None,
                str(ds.get("SOPInstanceUID")) if "SOPInstanceUID" in ds else None,
                str(ds.get("RTPlanLabel")) if "RTPlanLabel" in ds else None, tuple(beams), tuple(skipped))


def check_plan_against_ct(plan: Plan, ct_frame_uid: str | None, ct_patient_id: str | None) -> list[str]:
    """Refuse a plan made on another image or for another patient; returns warnings for what cannot be checked."""
    warnings = []
    if plan.frame_of_reference_uid and ct_frame_uid:
        if plan.frame_of_reference_uid != ct_frame_uid:
            raise InputError(f"{plan.path}: the plan's FrameOfReferenceUID {plan.frame_of_reference_uid} is not the "
                             f"CT's ({ct_frame_uid}): it was planned on another image, its isocentre coordinates do "
                             "not apply to this CT")
    else:
        missing = "the plan" if not plan.frame_of_reference_uid else "the CT"
        warnings.append(f"{plan.path}: frame of reference not checked ({missing} carries no FrameOfReferenceUID); "
                        "the isocentre is taken in the CT's patient coordinates")
    if plan.patient_id and ct_patient_id and plan.patient_id != ct_patient_id:
        raise InputError(f"{plan.path}: the plan is for PatientID {plan.patient_id!r}, the CT is of "
                         f"{ct_patient_id!r}")
    return warnings


def lps_to_ras(point: Sequence[float]) -> tuple[float, float, float]:
    """DICOM patient coordinates (LPS+) -> dexrt's world (RAS+), mm."""
    return (-float(point[0]), -float(point[1]), float(point[2]))


def patient_angle(room_deg: float, position: str) -> float:
    """A source angle in the room (IEC 61217 gantry convention) -> the renderer's patient-frame gantry angle."""
    if position not in POSITIONS:
        raise ValueError(f"patient position must be one of {POSITIONS}, got {position!r}")
    angle = {"HFS": room_deg, "FFS": -room_deg, "HFP": 180.0 + room_deg, "FFP": 180.0 - room_deg}[position]
    return angle % 360.0


def patient_couch(couch_deg: float, position: str) -> float:
    """IEC patient support angle -> the renderer's couch angle (a turn about the patient's anterior axis), in
    (-180, 180]."""
    if position not in POSITIONS:
        raise ValueError(f"patient position must be one of {POSITIONS}, got {position!r}")
    angle = couch_deg if position in ("HFS", "FFS") else -couch_deg
    angle = (angle + 180.0) % 360.0 - 180.0
    return 180.0 if angle == -180.0 else angle
