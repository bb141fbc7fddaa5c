"""Pixel spacing never silently wrong, and out-of-domain inputs flagged: dexrt.inputs.spacing, dexrt.inputs.domain,
dexrt.inputs.chest, and `dexrt infer --input-spacing/--model-spacing/--strict` end to end."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset

from dexrt.inputs.chest import measure
from dexrt.cli import cli
from dexrt.inputs.domain import MIN_LUNG_CONTRAST, check
from dexrt.io.images import write_image
from dexrt.inputs.spacing import TYPICAL_BODY_WIDTH_MM, TYPICAL_MAGNIFICATION, header_spacing, resolve
from infer_helpers import chest_phantom, make_dicom, to_stored

MODEL_MM = 1.2
SHAPE = (200, 240)
BODY_PX = 180.0  # at 2 mm per pixel a 360 mm chest; the estimate is 320 / 180 = 1.78 mm


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def spaced_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An engine whose model records a training pixel spacing of 0.4 mm."""
    from helpers import build_bundle, make_plain_onnx

    folder = tmp_path_factory.mktemp("spaced")
    meta = json.dumps({"model": {"pixel_spacing_mm": MODEL_MM}, "size_multiple": 16})
    return build_bundle(make_plain_onnx(folder / "s.onnx", metadata=meta), folder / "s.dexrt")


def chest_dicom(path: Path, **options) -> Path:
    return make_dicom(path, to_stored(chest_phantom(SHAPE, BODY_PX)), bits=12, **options)


def estimated_mm(width_px: float = BODY_PX) -> float:
    return TYPICAL_BODY_WIDTH_MM / width_px


# -- the header rules -----------------------------------------------------------------------------------------
def dataset(**tags) -> Dataset:
    ds = Dataset()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


HEADERS = [
    # tags, expected (row, col) at the patient or None, source or None, detector spacing left for an estimate
    ({"PixelSpacing": [0.2, 0.25]}, (0.2, 0.25), "header", None),
    ({"PixelSpacing": [0.2, 0.2], "ImagerPixelSpacing": [0.22, 0.22]}, (0.2, 0.2), "header", None),
    ({"PixelSpacing": [0.2, 0.2], "ImagerPixelSpacing": [0.2, 0.2], "PixelSpacingCalibrationType": "GEOMETRY"},
     (0.2, 0.2), "header", None),
    ({"PixelSpacing": [0.2, 0.2], "ImagerPixelSpacing": [0.2, 0.2]}, None, None, (0.2, 0.2)),
    ({"ImagerPixelSpacing": [0.15, 0.15], "EstimatedRadiographicMagnificationFactor": 1.5}, (0.1, 0.1),
     "header-magnification", None),
    ({"ImagerPixelSpacing": [0.18, 0.18], "DistanceSourceToDetector": 1800, "DistanceSourceToPatient": 1500},
     (0.15, 0.15), "header-magnification", None),
    ({"PixelSpacing": [0.2, 0.2], "ImagerPixelSpacing": [0.2, 0.2], "DistanceSourceToDetector": 1800,
      "DistanceSourceToPatient": 1500}, (0.2 / 1.2, 0.2 / 1.2), "header-magnification", None),
    ({"ImagerPixelSpacing": [0.15, 0.15]}, None, None, (0.15, 0.15)),
    ({"ImagerPixelSpacing": [0.15, 0.15], "EstimatedRadiographicMagnificationFactor": 0.5}, None, None,
     (0.15, 0.15)),
    ({"PixelSpacing": [0, 0]}, None, None, None),
    ({"PixelSpacing": [0, 0], "ImagerPixelSpacing": [0.14, 0.14]}, None, None, (0.14, 0.14)),
    ({"PixelSpacing": [-0.2, 0.2]}, None, None, None),
    ({"DetectorElementSpacing": [0.1, 0.1], "DetectorBinning": [2, 2]}, None, None, (0.2, 0.2)),
    ({"CassetteSize": "35CMX35CM"}, None, None, None),  # a square plate, a 200 x 240 image: cropped
]


@pytest.mark.parametrize(("tags", "expected", "source", "detector"), HEADERS,
                         ids=["calibrated-alone", "differs-from-imager", "calibration-type", "equal-to-imager",
                              "ermf", "sid-sod", "equal-with-sid-sod", "imager-only", "ermf-below-one", "zero",
                              "zero-with-imager", "negative", "element-binning", "cassette-wrong-ratio"])
def test_header_rules(tags, expected, source, detector) -> None:
    found = header_spacing(dataset(**tags), SHAPE)
    if expected is None:
        assert found.spacing is None
    else:
        assert found.spacing.mm == pytest.approx(expected) and found.spacing.source == source
    if detector is not None and "CassetteSize" not in tags:
        assert found.detector_mm == pytest.approx(detector)
    if "CassetteSize" in tags:
        assert found.detector_mm is None and "aspect ratio" in " ".join(found.notes)
    if tags.get("PixelSpacing") == [0, 0]:
        assert "PixelSpacing 0\\0 is not a usable spacing" in " ".join(found.notes)
    if tags.get("EstimatedRadiographicMagnificationFactor") == 0.5:
        assert "is not a magnification" in " ".join(found.notes)


def test_whole_detector_that_the_image_fills() -> None:
    found = header_spacing(dataset(CassetteSize="35CMX43CM"), (2150, 1750))  # 0.2 mm over the whole plate
    assert found.detector_mm == pytest.approx((0.2, 0.2)) and "CassetteSize" in found.detector_detail
    found = header_spacing(dataset(DetectorActiveDimensions=[430, 430]), (3000, 3000))
    assert found.detector_mm == pytest.approx((430 / 3000,) * 2) and "DetectorActiveDimensions" in found.detector_detail
    cropped = header_spacing(dataset(DetectorActiveDimensions=[430, 430]), (3000, 2000))
    assert cropped.detector_mm is None and "aspect ratio" in " ".join(cropped.notes)


def test_resolution_order() -> None:
    anatomy = measure(to_stored(chest_phantom(SHAPE, BODY_PX)))
    calibrated = header_spacing(dataset(PixelSpacing=[0.3, 0.3]))
    detector = header_spacing(dataset(ImagerPixelSpacing=[0.33, 0.33]))
    assert resolve(calibrated, anatomy, SHAPE, user_mm=0.5).source == "header"  # the file's own value wins
    assert resolve(detector, anatomy, SHAPE, user_mm=0.5).mm == (0.5, 0.5)  # ... unless it lacks magnification
    estimate = resolve(detector, anatomy, SHAPE)
    assert estimate.source == "estimated-detector" and estimate.estimated
    assert estimate.row_mm == pytest.approx(0.33 / TYPICAL_MAGNIFICATION)
    body = resolve(None, anatomy, SHAPE)
    assert body.source == "estimated-body-width" and body.row_mm == pytest.approx(estimated_mm(), rel=0.03)
    assert resolve(None, None, SHAPE) is None


# -- measuring the body, robust to what real radiographs carry ----------------------------------------------
def _variants() -> dict[str, np.ndarray]:
    stored = to_stored(chest_phantom((400, 480), 360.0), high=16383)
    collimated = stored.copy()
    collimated[:, :40] = collimated[:, -40:] = collimated[:30] = collimated[-30:] = 16383  # unexposed: bright
    processed = np.rint(16383 * (stored / 16383) ** 0.5)  # a gamma look-up table
    marked = stored.copy()
    marked[20:60, 20:60] = 16383  # a burnt-in lead marker
    return {"plain": stored, "collimated": collimated, "gamma": processed, "marker": marked,
            "inverted": 16383 - stored, "collimated-inverted": 16383 - collimated}


@pytest.mark.parametrize("name", list(_variants()))
def test_body_width_survives_processing(name: str) -> None:
    anatomy = measure(_variants()[name])
    assert anatomy.body_width_px == pytest.approx(360, rel=0.03)
    assert not anatomy.cut
    if "inverted" in name:
        assert anatomy.lung_contrast < -0.5  # and the domain check says why (below)
    else:
        assert anatomy.lung_contrast > 0.5


def test_arm_beside_the_chest_is_not_body() -> None:
    stored = to_stored(chest_phantom((400, 480), 360.0)).astype(np.float64)
    stored[100:380, 10:40] += 1500  # an arm, 20 px of air away from the chest wall
    assert measure(stored).body_width_px == pytest.approx(360, rel=0.03)


def test_body_cut_by_the_field_is_flagged() -> None:
    anatomy = measure(to_stored(chest_phantom((400, 480), 360.0))[:, 80:-80])
    assert anatomy.cut
    assert "may be smaller" in resolve(None, anatomy, (400, 320)).detail


# -- the domain check -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("tags", "words"), [
    ({"BodyPartExamined": "HAND"}, ["BodyPartExamined", "HAND"]),
    ({"StudyDescription": "XR SKULL 2 VIEWS"}, ["StudyDescription", "SKULL"]),
    ({"SeriesDescription": "ABDOMEN SUPINE"}, ["ABDOMEN"]),
    ({"ViewPosition": "LL"}, ["ViewPosition LL", "frontal"]),
    ({"Modality": "MG"}, ["mammography"]),
], ids=["hand", "skull", "abdomen", "lateral", "mammography"])
def test_header_says_not_a_chest(tags, words) -> None:
    report = check(dataset(**tags), None)
    assert not report.ok and all(w in report.summary() for w in words)


def test_chest_headers_pass() -> None:
    for tags in ({"BodyPartExamined": "CHEST", "ViewPosition": "PA", "Modality": "CR"},
                 {"StudyDescription": "THORAX PA/LAT", "SeriesDescription": "HAND-HELD PORTABLE"},
                 {"BodyPartExamined": ""}, {}):
        assert check(dataset(**tags), None).ok, tags


def test_content_checks() -> None:
    chest = measure(to_stored(chest_phantom()))
    assert chest.lung_contrast > MIN_LUNG_CONTRAST and check(None, chest).ok
    assert "no anatomy" in check(None, measure(np.full((64, 64), 900))).summary()
    inverted = check(None, measure(4095 - to_stored(chest_phantom())))
    assert "inverted polarity" in inverted.summary()
    slab = np.full((200, 240), 200.0)
    slab[10:190, 30:210] = 2500 + np.random.default_rng(1).normal(0, 100, (180, 180))  # even thickness, no lungs
    report = check(None, measure(slab))
    assert "no lung fields" in report.summary() and abs(report.measures["lung_contrast"]) < MIN_LUNG_CONTRAST


# -- end to end -------------------------------------------------------------------------------------------------
def test_chest_dicom_without_spacing_runs_at_the_model_scale(spaced_engine: Path, tmp_path: Path) -> None:
    source = chest_dicom(tmp_path / "chest.dcm", photometric="MONOCHROME2",
                         extra={"BodyPartExamined": "CHEST", "ViewPosition": "PA"})
    result = run("infer", source, "-o", tmp_path / "out", "--engine", spaced_engine, "--json")
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)["files"]
    spacing = entry["spacing"]
    assert spacing["source"] == "estimated-body-width" and spacing["estimated"]
    assert spacing["col_mm"] == pytest.approx(estimated_mm(), rel=0.03)
    expected = [round(n * spacing["row_mm"] / MODEL_MM) for n in SHAPE]
    assert entry["geometry"]["working_size"] == expected and entry["geometry"]["resampled"]
    assert entry["domain"]["in_domain"] and any("ESTIMATED" in w for w in entry["warnings"])
    assert "Warning:" in result.stderr and "chest.dcm" in result.stderr and "ESTIMATED" in result.stderr
    bone = pydicom.dcmread(tmp_path / "out" / "chest_bone.dcm")
    assert (bone.Rows, bone.Columns) == SHAPE
    assert "ASSUMED" in bone.DerivationDescription and "estimated" in bone.ImageComments
    assert "[out of domain]" not in bone.SeriesDescription


def test_monochrome1_chest_is_measured_the_same(spaced_engine: Path, tmp_path: Path) -> None:
    stored = to_stored(chest_phantom(SHAPE, BODY_PX))
    source = make_dicom(tmp_path / "m1.dcm", 4095 - stored, bits=12, photometric="MONOCHROME1")
    result = run("infer", source, "-o", tmp_path / "out", "--engine", spaced_engine, "--json")
    [entry] = json.loads(result.stdout)["files"]
    assert entry["domain"]["in_domain"], entry["domain"]
    assert entry["spacing"]["col_mm"] == pytest.approx(estimated_mm(), rel=0.03)


@pytest.mark.parametrize(("extra", "source", "mm"), [
    ({"ImagerPixelSpacing": [2.5, 2.5], "EstimatedRadiographicMagnificationFactor": 1.25}, "header-magnification",
     2.0),
    ({"ImagerPixelSpacing": [2.4, 2.4], "DistanceSourceToDetector": 1800, "DistanceSourceToPatient": 1500},
     "header-magnification", 2.0),
    ({"ImagerPixelSpacing": [2.2, 2.2]}, "estimated-detector", 2.2 / TYPICAL_MAGNIFICATION),
    ({"PixelSpacing": [0, 0]}, "estimated-body-width", estimated_mm()),
], ids=["imager-ermf", "imager-sid-sod", "imager-only", "pixel-spacing-zero"])
def test_header_cases_end_to_end(spaced_engine: Path, tmp_path: Path, extra, source: str, mm: float) -> None:
    path = chest_dicom(tmp_path / "c.dcm", extra=extra)
    result = run("infer", path, "-o", tmp_path / "out", "--engine", spaced_engine, "--json")
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)["files"]
    assert entry["spacing"]["source"] == source
    assert entry["spacing"]["row_mm"] == pytest.approx(mm, rel=0.03)
    assert bool(entry["warnings"]) == source.startswith("estimated")  # a header value needs no warning
    if "PixelSpacing" in extra:
        assert "PixelSpacing 0\\0 is not a usable spacing, ignored" in entry["spacing"]["detail"]


def test_implausible_header_spacing_is_doubted(spaced_engine: Path, tmp_path: Path) -> None:
    path = chest_dicom(tmp_path / "c.dcm", spacing=(0.2, 0.2))  # a 36 mm chest
    result = run("infer", path, "-o", tmp_path / "out", "--engine", spaced_engine, "--json")
    [entry] = json.loads(result.stdout)["files"]
    assert entry["spacing"]["source"] == "header"
    assert any(re.search(r"the body is 3[5-8] mm wide, outside 120-600 mm", w) for w in entry["warnings"])


def test_png_with_and_without_input_spacing(spaced_engine: Path, tmp_path: Path) -> None:
    png = tmp_path / "in" / "chest.png"
    png.parent.mkdir()
    write_image(png, to_stored(chest_phantom(SHAPE, BODY_PX), high=65535).astype(np.uint16))
    result = run("infer", png, "-o", tmp_path / "a", "--engine", spaced_engine, "--json")
    [entry] = json.loads(result.stdout)["files"]
    assert entry["spacing"]["source"] == "estimated-body-width"
    assert entry["spacing"]["row_mm"] == pytest.approx(estimated_mm(), rel=0.03)
    result = run("infer", png, "-o", tmp_path / "b", "--engine", spaced_engine, "--input-spacing", "2", "--json")
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)["files"]
    assert entry["spacing"] == {"row_mm": 2.0, "col_mm": 2.0, "source": "user", "estimated": False,
                                "detail": "--input-spacing 2"}
    assert entry["geometry"]["working_size"] == [333, 400] and not entry["warnings"]
    from dexrt.io.images import read_metadata

    assert read_metadata(tmp_path / "b" / "chest_bone.png")["geometry"]["input_spacing"]["source"] == "user"


def test_non_chest_warned_and_refused_when_strict(spaced_engine: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    chest_dicom(folder / "a_chest.dcm", spacing=(2.0, 2.0), extra={"BodyPartExamined": "CHEST"})
    chest_dicom(folder / "b_hand.dcm", spacing=(2.0, 2.0), extra={"BodyPartExamined": "HAND"})
    write_image(folder / "c_chest.png", to_stored(chest_phantom(SHAPE, BODY_PX), high=65535).astype(np.uint16))
    result = run("infer", folder, "-o", tmp_path / "warn", "--engine", spaced_engine, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["converted"] == 3 and summary["warned"] == 2  # the hand, and the PNG's estimated spacing
    hand = summary["files"][1]
    assert not hand["domain"]["in_domain"]
    assert "BodyPartExamined 'HAND' is not the chest" in hand["domain"]["reasons"][0]
    assert "b_hand.dcm" in result.stderr and "not a frontal chest radiograph" in result.stderr
    bone = pydicom.dcmread(tmp_path / "warn" / "b_hand_bone.dcm")
    assert bone.SeriesDescription.endswith("[out of domain]") and len(bone.SeriesDescription) <= 64
    assert "OUT OF DOMAIN" in bone.DerivationDescription and "HAND" in bone.ImageComments
    assert summary["files"][0]["domain"]["in_domain"]

    result = run("infer", folder, "-o", tmp_path / "strict", "--engine", spaced_engine, "--json", "--strict")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert (summary["converted"], summary["failed"]) == (2, 1)
    hand = summary["files"][1]
    assert hand["status"] == "failed" and str(folder / "b_hand.dcm") in hand["error"]
    assert "refused (strict)" in hand["error"] and "HAND" in hand["error"]
    assert not (tmp_path / "strict" / "b_hand_bone.dcm").exists()
    assert (tmp_path / "strict" / "a_chest_bone.dcm").exists() and (tmp_path / "strict" / "c_chest_bone.png").exists()


def test_strict_is_a_typed_input_error(spaced_engine: Path, tmp_path: Path) -> None:
    import dexrt
    from dexrt.pipelines.convert import Converter, Outcome
    from dexrt.inputs.domain import DomainError
    from dexrt.io.images import read_radiograph

    path = chest_dicom(tmp_path / "skull.dcm", extra={"BodyPartExamined": "SKULL"})
    with dexrt.Engine(spaced_engine) as engine:
        converter = Converter(engine, tmp_path / "out", strict=True)
        with pytest.raises(DomainError, match="skull.dcm.*SKULL") as caught:
            converter._assess(path, read_radiograph(path), Outcome(path))
        assert isinstance(caught.value, dexrt.InputError)
        [outcome] = converter.run([path])
        assert not outcome.ok and "skull.dcm" in outcome.error and outcome.outputs == []


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--input-spacing", "-0.2", "positive"),
    ("--input-spacing", "0", "positive"),
    ("--input-spacing", "nan", "positive"),
    ("--input-spacing", "50", "not a radiograph's pixel spacing"),
    ("--input-spacing", "0.001", "not a radiograph's pixel spacing"),
    ("--model-spacing", "1000", "not a radiograph's pixel spacing"),
    ("--spacing", "-1", "positive"),
], ids=["negative", "zero", "nan", "huge", "tiny", "model-huge", "old-negative"])
def test_bad_spacing_options(spaced_engine: Path, tmp_path: Path, option: str, value: str, message: str) -> None:
    path = chest_dicom(tmp_path / "c.dcm")
    result = run("infer", path, "-o", tmp_path / "out", "--engine", spaced_engine, option, value)
    assert result.exit_code == 2 and message in result.output and option in result.output
    assert not (tmp_path / "out").exists()


def test_bad_spacing_in_python() -> None:
    from dexrt.runtime.pixel_spacing import check_option

    for value in (-1.0, 0.0, math.inf, 100.0):
        with pytest.raises(ValueError, match="input_spacing_mm"):
            check_option("input_spacing_mm", value)


def test_outcome_carries_spacing_and_domain_between_processes(spaced_engine: Path, tmp_path: Path) -> None:
    """A Ray worker sends Outcomes as plain dicts: the spacing, domain and warnings survive the trip."""
    import dexrt
    from dexrt.pipelines.convert import Converter, Outcome

    path = chest_dicom(tmp_path / "hand.dcm", extra={"BodyPartExamined": "HAND"})
    with dexrt.Engine(spaced_engine) as engine:
        [outcome] = Converter(engine, tmp_path / "out").run([path])
    back = Outcome.from_dict(json.loads(json.dumps(outcome.as_dict())))
    assert back.warnings == outcome.warnings and len(back.warnings) == 2  # the hand, and: no spacing, not resampled
    assert back.domain == outcome.domain and not back.domain["in_domain"]
    assert back.geometry["input_spacing"] is None and back.geometry["resampled"] is False
    assert "no pixel spacing" in back.warnings[1]


def test_processed_collimated_monochrome1_cr(spaced_engine: Path, tmp_path: Path) -> None:
    """What a CR reader sends: 15-bit MONOCHROME1, a log-like look-up table, collimator borders, a lead marker,
    PixelSpacing 0\\0. The chest is still found, measured and run at the model's scale."""
    attenuation = chest_phantom((400, 480), 360.0)
    shown = np.log1p(9 * attenuation) / np.log(10)  # processed: compressed like a log LUT
    shown[:, :50] = shown[:, -50:] = shown[:30] = shown[-30:] = 1.0  # collimated: unexposed, as bright as bone
    shown[40:70, 60:90] = 1.0  # an "R" marker
    stored = np.rint((1 - shown) * 32767).astype(np.int64)  # MONOCHROME1: attenuating is dark
    path = make_dicom(tmp_path / "cr.dcm", stored, bits=15, photometric="MONOCHROME1", modality="CR",
                      spacing=(0, 0), extra={"BodyPartExamined": "CHEST", "ViewPosition": "PA"})
    result = run("infer", path, "-o", tmp_path / "out", "--engine", spaced_engine, "--json")
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)["files"]
    assert entry["domain"]["in_domain"], entry["domain"]
    assert entry["spacing"]["source"] == "estimated-body-width"
    assert entry["spacing"]["col_mm"] == pytest.approx(TYPICAL_BODY_WIDTH_MM / 360, rel=0.03)
    assert not entry["domain"]["measures"]["cut"]


def test_mislabelled_polarity_is_flagged_and_not_estimated(spaced_engine: Path, tmp_path: Path) -> None:
    """MONOCHROME1 pixel data labelled MONOCHROME2: the model would see a negative. Flagged, and the body's width
    is not trusted for a spacing."""
    stored = 4095 - to_stored(chest_phantom(SHAPE, BODY_PX))
    path = make_dicom(tmp_path / "neg.dcm", stored, bits=12, photometric="MONOCHROME2",
                      extra={"BodyPartExamined": "CHEST"})
    result = run("infer", path, "-o", tmp_path / "out", "--engine", spaced_engine, "--json")
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)["files"]
    assert "inverted polarity" in " ".join(entry["domain"]["reasons"])
    assert entry["spacing"] is None and not entry["geometry"]["resampled"]
    result = run("infer", path, "-o", tmp_path / "strict", "--engine", spaced_engine, "--strict")
    assert result.exit_code == 1 and "inverted polarity" in result.stderr
