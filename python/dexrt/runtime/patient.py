"""Patient engines: an engine fitted to one patient (`dexrt fit`) records whose CT it was made from, and inputs of
another patient are flagged before they are converted.

The engine manifest's ``patient`` block (inside the signed manifest)::

    "patient": {"patient_id": "...",            # DICOM PatientID of the CT (or given with --patient-id); may be null
                "study_instance_uid": "...", "series_instance_uid": "...", "frame_of_reference_uid": "...",
                "ct_sha256": "...",              # of the CT file(s) the engine was fitted on
                "ct_source": "ct.nii.gz"}

A model of the wrong patient is a clinical error, so `patient_problem` says, for one input, whether it can be
trusted to be the engine's patient: its DICOM PatientID differs (mismatch), or the input carries none to compare
(a PNG or TIFF, a DICOM file without PatientID). `dexrt infer` and `dexrt serve` warn; with ``strict`` they refuse.
An engine without a ``patient`` block (the default model, any general engine) is never checked.
"""

from __future__ import annotations

from typing import Any

from dexrt._errors import InputError

KEY = "patient"
FIELDS = ("patient_id", "study_instance_uid", "series_instance_uid", "frame_of_reference_uid", "ct_sha256",
          "ct_source")


class PatientMismatchError(InputError):
    """An input is not (or cannot be shown to be) of the patient a patient engine was fitted to; strict mode
    refuses it."""


def patient_block(**values: Any) -> dict[str, Any]:
    """The manifest's ``patient`` block: every field of `FIELDS`, None where unknown."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown patient fields: {', '.join(unknown)}")
    return {k: (None if values.get(k) in (None, "") else str(values[k])) for k in FIELDS}


def engine_patient(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The engine's ``patient`` block, or None for an engine not fitted to a patient."""
    block = manifest.get(KEY)
    return block if isinstance(block, dict) else None


def _id(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def patient_problem(manifest: dict[str, Any], dataset: Any) -> str | None:
    """Why an input (its pydicom `dataset`, or None for a file without a DICOM header) may not be of the patient
    of the engine whose manifest this is; None when it is, or when the engine is not a patient engine."""
    block = engine_patient(manifest)
    if block is None:
        return None
    expected = _id(block.get("patient_id"))
    if expected is None:
        return (f"the engine was fitted to a patient whose PatientID it does not record (CT "
                f"{block.get('ct_source')}, sha256 {str(block.get('ct_sha256'))[:12]}); the input cannot be checked")
    found = _id(dataset.get("PatientID")) if dataset is not None else None
    if found is None:
        what = "carries no PatientID" if dataset is not None else "has no DICOM header"
        return f"it {what}, so it cannot be checked against the engine's patient {expected!r}"
    if found != expected:
        return (f"its PatientID {found!r} is not the engine's patient {expected!r}: this engine is a model of "
                "another patient")
    return None
