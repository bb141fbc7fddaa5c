"""Which CT `dexrt fit` works from, and whose: the CT argument resolved (a file or folder, `example`, or a name of
the CT catalogue), and its identity for the engine manifest (DICOM PatientID, Study/Series Instance UIDs, frame of
reference, patient position, and always the SHA-256 of the CT file(s))."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dexrt._errors import InputError
from dexrt.runtime.patient import patient_block


@dataclass
class CTSource:
    """A CT to load: its path, label map and label rules (for the catalogue's and the example's CTs), and where
    it came from."""

    path: str
    labels: str | None = None
    rules: Any = None  # dexrt.synth.volume.LabelRules
    provenance: dict[str, Any] = field(default_factory=dict)


def resolve_ct(spec: str) -> CTSource:
    """A name of the CT catalogue (`dexrt.synth.catalogue`: `example`, `pyradiomics-lung2`, ...; fetched into the
    cache on first use, with its label map and label rules when it has them), or a path."""
    from dexrt.synth.catalogue import CATALOGUE, fetch

    if spec in CATALOGUE and not Path(spec).exists():
        from dexrt.synth.volume import RULE_PRESETS, LabelRules

        found = fetch(spec)
        rules = RULE_PRESETS.get(found.entry.label_rules or "", LabelRules()) if found.labels is not None else None
        return CTSource(str(found.ct), str(found.labels) if found.labels is not None else None, rules,
                        found.provenance())
    if not Path(spec).exists():
        raise InputError(f"{spec}: no such CT file or folder, nor a name of the CT catalogue "
                         f"({', '.join(CATALOGUE)})")
    return CTSource(spec)


def _first_dicom(path: Path) -> Any:
    """The header of the first CT slice of a DICOM series (a folder or one of its files), or None."""
    import pydicom

    files = sorted(f for f in (path.iterdir() if path.is_dir() else path.parent.iterdir()) if f.is_file())
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:  # not DICOM: the folder may hold other files
            continue
        if "ImagePositionPatient" in ds and str(ds.get("Modality", "CT")) == "CT":
            return ds
    return None


@dataclass(frozen=True)
class CTIdentity:
    patient_id: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    frame_of_reference_uid: str | None
    patient_position: str | None
    sha256: str
    source: str

    def block(self) -> dict[str, Any]:
        """The engine manifest's `patient` block (dexrt.runtime.patient)."""
        return patient_block(patient_id=self.patient_id, study_instance_uid=self.study_instance_uid,
                             series_instance_uid=self.series_instance_uid,
                             frame_of_reference_uid=self.frame_of_reference_uid, ct_sha256=self.sha256,
                             ct_source=self.source)


def ct_identity(path: str, sha256: str, meta: dict[str, Any] | None = None, patient_id: str | None = None
                ) -> CTIdentity:
    """The CT's identity: from its DICOM header when it is a DICOM series, else from the loader's `meta` (readers
    that keep patient fields) and `patient_id` (given by the user)."""
    p = Path(path)
    found: dict[str, str | None] = {k: None for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                                                       "FrameOfReferenceUID", "PatientPosition")}
    ds = _first_dicom(p) if p.exists() and (p.is_dir() or p.suffix.lower() == ".dcm") else None
    if ds is not None:
        for key in found:
            value = ds.get(key)
            found[key] = str(value).strip() or None if value is not None else None
    for key, alias in (("PatientID", "patient_id"), ("StudyInstanceUID", "study_instance_uid"),
                       ("SeriesInstanceUID", "series_instance_uid"),
                       ("FrameOfReferenceUID", "frame_of_reference_uid"), ("PatientPosition", "patient_position")):
        if found[key] is None and meta and meta.get(alias):
            found[key] = str(meta[alias])
    if patient_id is not None:
        if found["PatientID"] is not None and found["PatientID"] != patient_id:
            raise InputError(f"{path}: the CT's PatientID is {found['PatientID']!r}, not {patient_id!r} "
                             "(--patient-id)")
        found["PatientID"] = patient_id
    return CTIdentity(found["PatientID"], found["StudyInstanceUID"], found["SeriesInstanceUID"],
                      found["FrameOfReferenceUID"], (found["PatientPosition"] or "").upper() or None, sha256, p.name)
