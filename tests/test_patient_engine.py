"""Patient engines (`dexrt fit`): an input of another patient, or one that cannot be checked, is flagged by
`dexrt infer` (and `dexrt serve`, through the same converter) and refused with --strict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset

from dexrt.cli import cli
from dexrt.io.images import write_image
from dexrt.runtime.bundle import read_bundle, write_bundle
from dexrt.runtime.patient import PatientMismatchError, engine_patient, patient_block, patient_problem
from infer_helpers import chest_phantom, make_dicom, to_stored

SHAPE = (200, 240)


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _dataset(**tags: str) -> Dataset:
    ds = Dataset()
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


PATIENT = {"patient": patient_block(patient_id="FIT001", ct_sha256="ab" * 32, ct_source="ct.nii.gz")}


def test_patient_problem() -> None:
    assert patient_problem({}, _dataset(PatientID="ANY")) is None  # not a patient engine: never checked
    assert engine_patient({}) is None and engine_patient(PATIENT)["patient_id"] == "FIT001"
    assert patient_problem(PATIENT, _dataset(PatientID="FIT001")) is None
    assert patient_problem(PATIENT, _dataset(PatientID=" FIT001 ")) is None
    assert "PatientID 'OTHER' is not the engine's patient 'FIT001'" in patient_problem(PATIENT, _dataset(
        PatientID="OTHER"))
    assert "carries no PatientID" in patient_problem(PATIENT, _dataset(Modality="DX"))
    assert "has no DICOM header" in patient_problem(PATIENT, None)
    unknown = {"patient": patient_block(ct_sha256="cd" * 32, ct_source="ct.nrrd")}
    assert "does not record" in patient_problem(unknown, _dataset(PatientID="FIT001"))
    with pytest.raises(ValueError, match="unknown patient fields"):
        patient_block(name="x")


@pytest.fixture(scope="module")
def patient_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small engine whose manifest names patient FIT001 (as `dexrt fit` writes it)."""
    from helpers import build_bundle, make_plain_onnx

    folder = tmp_path_factory.mktemp("patient")
    plain = build_bundle(make_plain_onnx(folder / "p.onnx", metadata=json.dumps({"size_multiple": 16})),
                         folder / "plain.dexrt")
    bundle = read_bundle(plain)
    write_bundle(folder / "patient.dexrt", {**bundle.manifest, **PATIENT}, bundle.payload)
    return folder / "patient.dexrt"


def _inputs(folder: Path) -> Path:
    folder.mkdir()
    pixels = to_stored(chest_phantom(SHAPE))
    make_dicom(folder / "a_same.dcm", pixels, bits=12, spacing=(2.0, 2.0), extra={"PatientID": "FIT001"})
    make_dicom(folder / "b_other.dcm", pixels, bits=12, spacing=(2.0, 2.0), extra={"PatientID": "OTHER"})
    write_image(folder / "c_plain.png", to_stored(chest_phantom(SHAPE), high=65535).astype(np.uint16))
    return folder


def test_infer_warns_and_strict_refuses(patient_engine: Path, tmp_path: Path) -> None:
    folder = _inputs(tmp_path / "in")
    result = run("infer", folder, "-o", tmp_path / "warn", "--engine", patient_engine, "--json")
    assert result.exit_code == 0, result.output
    files = {Path(f["source"]).name: f for f in json.loads(result.stdout)["files"]}
    assert not any("patient" in w for w in files["a_same.dcm"]["warnings"])
    assert any("PatientID 'OTHER' is not the engine's patient 'FIT001'" in w for w in files["b_other.dcm"]["warnings"])
    assert any("has no DICOM header" in w for w in files["c_plain.png"]["warnings"])
    assert "b_other.dcm" in result.stderr and "another patient" in result.stderr

    result = run("infer", folder, "-o", tmp_path / "strict", "--engine", patient_engine, "--json", "--strict")
    assert result.exit_code == 1
    files = {Path(f["source"]).name: f for f in json.loads(result.stdout)["files"]}
    assert files["a_same.dcm"]["status"] == "converted"
    for name in ("b_other.dcm", "c_plain.png"):
        assert files[name]["status"] == "failed" and "refused (strict)" in files[name]["error"]
    assert not (tmp_path / "strict" / "b_other_bone.dcm").exists()
    assert (tmp_path / "strict" / "a_same_bone.dcm").exists()


def test_strict_refusal_is_a_typed_input_error(patient_engine: Path, tmp_path: Path) -> None:
    """The converter `dexrt serve` runs raises it too (its workers then set the instance aside)."""
    import dexrt
    from dexrt.io.images import read_radiograph
    from dexrt.pipelines.convert import Converter, Outcome

    path = make_dicom(tmp_path / "x.dcm", to_stored(chest_phantom(SHAPE)), bits=12, extra={"PatientID": "OTHER"})
    with dexrt.Engine(patient_engine) as engine:
        with pytest.raises(PatientMismatchError, match="x.dcm: refused .strict.: its PatientID 'OTHER'") as caught:
            Converter(engine, tmp_path / "out", strict=True)._assess(path, read_radiograph(path), Outcome(path))
        assert isinstance(caught.value, dexrt.InputError)
        outcome = Converter(engine, tmp_path / "out2", strict=True).convert(path)
        assert not outcome.ok and "another patient" in (outcome.error or "")
