"""A tiny chest phantom CT and RT Plans built with pydicom, for the `dexrt fit` tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPACING_MM = 5.0
SHAPE = (64, 64, 64)


def phantom_hu() -> np.ndarray:
    """(x, y, z) HU: an elliptic body with two lungs, a spine, ribs every 25 mm and soft tissue under the lungs."""
    n = SHAPE[0]
    c = (np.arange(n) - (n - 1) / 2) * SPACING_MM  # mm from the centre
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    hu = np.full(SHAPE, -1000.0, np.float32)
    body = (x / 140) ** 2 + (y / 95) ** 2 <= 1
    hu[body] = 40.0
    for side in (-1, 1):
        lung = ((x - side * 60) / 45) ** 2 + ((y + 5) / 60) ** 2 + ((z - 30) / 100) ** 2 <= 1
        hu[lung] = -800.0
    ring = ((x / 128) ** 2 + (y / 85) ** 2 <= 1) & ((x / 118) ** 2 + (y / 76) ** 2 > 1)
    for rib_z in np.arange(-60, 130, 25):
        hu[ring & (np.abs(z - rib_z) <= 5) & (y < 40)] = 900.0
    spine = (x ** 2 + (y + 75) ** 2 <= 15 ** 2)
    hu[spine & body] = 700.0
    # scanner-like noise: no value is shared by a large share of the voxels (which a clipped CT would show)
    return hu + np.random.default_rng(0).normal(0.0, 10.0, SHAPE).astype(np.float32)


def write_phantom(path: Path) -> Path:
    """The phantom as NIfTI (RAS affine, 5 mm voxels centred on the origin)."""
    import nibabel as nib

    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    affine[:3, 3] = -(np.array(SHAPE) - 1) / 2 * SPACING_MM
    img = nib.Nifti1Image(phantom_hu(), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def write_plan(path: Path, beams: list[dict], *, patient_id: str = "FIT001", frame_uid: str | None = "1.2.3.4.5",
               position: str = "HFS") -> Path:
    """An RT Plan with the given beams: each {"iso": (x, y, z) LPS mm, "gantry": deg, "end": deg or None,
    "direction": "CW"|"CC"|"NONE", "couch": deg, "type": "TREATMENT"|"SETUP"}."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTPLAN"
    ds.PatientID = patient_id
    ds.RTPlanLabel = "SBRT"
    if frame_uid is not None:
        ds.FrameOfReferenceUID = frame_uid
    setup = Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = position
    ds.PatientSetupSequence = Sequence([setup])
    items = []
    for i, b in enumerate(beams, 1):
        beam = Dataset()
        beam.BeamNumber = i
        beam.BeamName = f"B{i}"
        beam.TreatmentDeliveryType = b.get("type", "TREATMENT")
        beam.ReferencedPatientSetupNumber = 1
        first = Dataset()
        first.ControlPointIndex = 0
        first.GantryAngle = b["gantry"]
        first.PatientSupportAngle = b.get("couch", 0.0)
        first.GantryRotationDirection = b.get("direction", "NONE")
        first.IsocenterPosition = list(b["iso"])
        cps = [first]
        if b.get("end") is not None:
            last = Dataset()
            last.ControlPointIndex = 1
            last.GantryAngle = b["end"]
            cps.append(last)
        beam.ControlPointSequence = Sequence(cps)
        beam.NumberOfControlPoints = len(cps)
        items.append(beam)
    ds.BeamSequence = Sequence(items)
    ds.save_as(str(path), enforce_file_format=True)
    return path
