"""How the examples were made: frontal single-energy radiographs of the example chest CT, rendered by `dexrt synth`'s
physics (the fixed 120 kVp protocol, quantum noise), stored as DX DICOM files with their pixel spacing as a
detector sends them (ImagerPixelSpacing at the detector, with the source distances that give the spacing at the
patient).

- chest_ap.dcm, chest_pa.dcm: 256 x 256, the geometry the default model was trained on (1.47 mm at the patient);
- chest_ap_detector.dcm: 2048 x 2048 of 0.2 mm on a 41 cm detector 1.85 m from the source, the patient 15 cm in
  front of it (0.184 mm at the patient), as a DR chest frame: `dexrt infer` runs it at the model's spacing (255 x
  255, one 256 x 256 network input) and writes bone and soft at 2048 x 2048 (docs/runtime.md, the clinical call).

    python examples/make_examples.py examples     # needs the synth extra; about a minute on one core
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

VIEWS = {  # file: (gantry deg, view position, size, detector mm or None (fit the body), SID mm, SDD mm)
    "chest_ap.dcm": (0.0, "AP", 256, None, 1000.0, 1500.0),
    "chest_pa.dcm": (180.0, "PA", 256, None, 1000.0, 1500.0),
    "chest_ap_detector.dcm": (0.0, "AP", 2048, 409.6, 1700.0, 1850.0),
}


def render(gantry: float, size: int, detector_mm: float | None, sid: float, sdd: float) -> tuple[np.ndarray, float]:
    """The SE image (attenuation) of one view and its detector pixel pitch in mm."""
    from dexrt.cli.synth import load_patients
    from dexrt.synth.render import ImagingConfig, View

    imaging = ImagingConfig(size=(size, size), detector_mm=detector_mm, sid_mm=sid, sdd_mm=sdd)
    [patient] = load_patients(("example",), (), {}, imaging, ())
    renderer = patient.renderer() if callable(patient.renderer) else patient.renderer
    images = renderer.render(View(id=f"g{gantry:g}", gantry_deg=gantry, noise_seed=1))
    return images["se"], renderer.pixel_mm


def write_dx(path: Path, se: np.ndarray, pitch_mm: float, sid: float, sdd: float, view: str) -> None:
    """A DX For Presentation instance: 16-bit MONOCHROME2 (bright = attenuating) in the SE quantity's fixed
    encoding, ImagerPixelSpacing and the distances that put the spacing at the patient."""
    from pydicom import uid
    from pydicom.dataset import Dataset, FileMetaDataset

    from dexrt.runtime.contract import fixed_encoding

    stored, _ = fixed_encoding("se").stored(se)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid.generate_uid()
    ds.Modality, ds.PresentationIntentType = "DX", "FOR PRESENTATION"
    ds.PatientName, ds.PatientID = "Example^Chest CT", "DEXRT-EXAMPLE"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", view
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImagerPixelSpacing = [f"{pitch_mm:.6g}", f"{pitch_mm:.6g}"]
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = f"{sdd:g}", f"{sid:g}"
    ds.KVP = "120"
    ds.set_pixel_data(stored, "MONOCHROME2", 16, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    for name, (gantry, view, size, detector_mm, sid, sdd) in VIEWS.items():
        se, pitch = render(gantry, size, detector_mm, sid, sdd)
        write_dx(args.folder / name, se, pitch, sid, sdd, view)
        print(f"{args.folder / name}: {size}x{size}, {pitch:.4g} mm at the detector, {pitch * sid / sdd:.4g} mm at "
              "the patient")


if __name__ == "__main__":
    main()
