"""`dexrt fit`: RT Plan reading (pydicom plans built here), angle mapping, geometry presets, the patient's motion,
the view plan's held-out sets, and the whole command on a tiny phantom CT within a fraction of a minute."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dexrt._errors import ConfigError, InputError
from dexrt.cli import cli
from dexrt.pipelines.fit.geometry import load_geometry, parse_pair, preset_names, with_overrides
from dexrt.pipelines.fit.plan import check_plan_against_ct, lps_to_ras, patient_angle, patient_couch, read_plan
from dexrt.pipelines.fit.views import parse_angles
from fit_helpers import write_phantom, write_plan

ISO_A = (0.0, 0.0, 20.0)
ISO_B = (-30.0, 10.0, 60.0)


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


# -- the RT Plan ----------------------------------------------------------------------------------------------
def test_plan_beams_arcs_and_isocentres(tmp_path: Path) -> None:
    path = write_plan(tmp_path / "plan.dcm", [
        {"iso": ISO_A, "gantry": 181.0, "end": 179.0, "direction": "CW"},   # a full arc
        {"iso": ISO_A, "gantry": 30.0, "end": 300.0, "direction": "CC", "couch": 10.0},
        {"iso": ISO_B, "gantry": 90.0},  # a static beam at a second isocentre
        {"iso": ISO_B, "gantry": 0.0, "type": "SETUP"},
    ])
    plan = read_plan(path)
    assert plan.patient_id == "FIT001" and plan.frame_of_reference_uid == "1.2.3.4.5"
    assert [b.number for b in plan.beams] == [1, 2, 3] and plan.skipped == ("B4: setup beam",)
    assert plan.isocentres() == [ISO_A, ISO_B]
    assert [b.number for b in plan.beams_at(ISO_B)] == [3]
    assert plan.beams[0].gantry_range() == (181.0, 358.0)
    assert plan.beams[1].gantry_range() == (300.0, 90.0) and plan.beams[1].couch_deg == 10.0
    assert plan.beams[2].gantry_range() == (90.0, 0.0)
    assert plan.record()["isocentres_lps_mm"] == [list(ISO_A), list(ISO_B)]


def test_plan_frame_of_reference_and_patient_checked(tmp_path: Path) -> None:
    plan = read_plan(write_plan(tmp_path / "plan.dcm", [{"iso": ISO_A, "gantry": 0.0}]))
    assert check_plan_against_ct(plan, "1.2.3.4.5", "FIT001") == []
    with pytest.raises(InputError, match="FrameOfReferenceUID 1.2.3.4.5 is not the CT's .9.9.9.*another image"):
        check_plan_against_ct(plan, "9.9.9", "FIT001")
    with pytest.raises(InputError, match="plan is for PatientID 'FIT001', the CT is of 'SOMEONE'"):
        check_plan_against_ct(plan, "1.2.3.4.5", "SOMEONE")
    [warning] = check_plan_against_ct(plan, None, None)  # a NIfTI CT: no frame of reference to compare
    assert "frame of reference not checked (the CT carries no FrameOfReferenceUID)" in warning
    no_uid = read_plan(write_plan(tmp_path / "nouid.dcm", [{"iso": ISO_A, "gantry": 0.0}], frame_uid=None))
    assert "the plan carries no FrameOfReferenceUID" in check_plan_against_ct(no_uid, "1.2", None)[0]


def test_plan_refusals(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such RT Plan"):
        read_plan(tmp_path / "missing.dcm")
    (tmp_path / "text.dcm").write_text("not dicom")
    with pytest.raises(InputError, match="not a readable DICOM file"):
        read_plan(tmp_path / "text.dcm")
    setup_only = write_plan(tmp_path / "setup.dcm", [{"iso": ISO_A, "gantry": 0.0, "type": "SETUP"}])
    with pytest.raises(InputError, match="no treatment beams"):
        read_plan(setup_only)
    import pydicom

    ds = pydicom.dcmread(write_plan(tmp_path / "noiso.dcm", [{"iso": ISO_A, "gantry": 0.0}]))
    del ds.BeamSequence[0].ControlPointSequence[0].IsocenterPosition
    ds.save_as(tmp_path / "noiso.dcm")
    with pytest.raises(InputError, match=r"beam 1 \(B1\): its first control point has no IsocenterPosition"):
        read_plan(tmp_path / "noiso.dcm")
    lateral = write_plan(tmp_path / "decub.dcm", [{"iso": ISO_A, "gantry": 0.0}], position="HFDL")
    with pytest.raises(InputError, match="decubitus"):
        read_plan(lateral)


@pytest.mark.parametrize("position, room, expected", [
    ("HFS", 90.0, 90.0), ("HFS", 270.0, 270.0), ("FFS", 90.0, 270.0), ("HFP", 0.0, 180.0), ("HFP", 90.0, 270.0),
    ("FFP", 0.0, 180.0), ("FFP", 90.0, 90.0),
], ids=lambda v: str(v))
def test_room_to_patient_angles(position: str, room: float, expected: float) -> None:
    # 90 in the patient frame is the source at the patient's left: IEC gantry 90 for a head-first supine patient
    assert patient_angle(room, position) == pytest.approx(expected)


def test_couch_and_coordinates() -> None:
    assert patient_couch(10.0, "HFS") == 10.0 and patient_couch(10.0, "HFP") == -10.0
    assert patient_couch(350.0, "FFS") == -10.0
    assert lps_to_ras((1.0, 2.0, 3.0)) == (-1.0, -2.0, 3.0)


def test_parse_angles() -> None:
    assert parse_angles("0:360") == [(0.0, 360.0)]
    assert parse_angles("270:90, 45") == [(270.0, 180.0), (40.0, 10.0)]
    for bad in ("", "a:b", "10:10"):
        with pytest.raises(InputError, match="--angles"):
            parse_angles(bad)


def test_plan_angles_are_kv_angles(tmp_path: Path) -> None:
    from dexrt.pipelines.fit.fit import FitOptions, angle_ranges

    plan = read_plan(write_plan(tmp_path / "plan.dcm", [
        {"iso": ISO_A, "gantry": 300.0, "end": 60.0, "direction": "CW"}, {"iso": ISO_B, "gantry": 45.0}]))
    opts = FitOptions(ct="x", output=tmp_path / "p.dexrt", geometry=load_geometry("varian-truebeam"))
    ranges, source = angle_ranges(opts, plan, 2, "HFS")
    assert source == "plan"
    assert (ranges[0].start, ranges[0].extent, ranges[0].isocentre) == (30.0, 120.0, 0)  # MV 300-60 + 90
    assert (ranges[1].start, ranges[1].extent, ranges[1].isocentre) == (130.0, 10.0, 1)  # a static beam: +-5
    opts.angles = "0:90"
    ranges, source = angle_ranges(opts, plan, 2, "FFS")  # --angles wins; FFS turns the range around
    assert source == "option" and [(r.start, r.extent, r.isocentre) for r in ranges] == [(270.0, 90.0, 0),
                                                                                          (270.0, 90.0, 1)]


# -- geometry ---------------------------------------------------------------------------------------------------
def test_presets_name_their_sources() -> None:
    assert {"default", "varian-truebeam", "varian-obi", "elekta-xvi"} <= set(preset_names())
    for name in preset_names():
        g = load_geometry(name)
        assert g.sources and g.sdd_mm > g.sid_mm and g.kv_offset_note
    default = load_geometry()
    assert (default.sid_mm, default.sdd_mm, default.detector_mm) == (1000.0, 1500.0, (400.0, 400.0))
    assert default.field_px(400.0 / 1.5 / 200) == (200, 200)
    truebeam = load_geometry("varian-truebeam")
    assert truebeam.panel_pixel_mm == pytest.approx((0.388, 0.388))
    rows, cols = truebeam.field_px(1.0)
    assert cols > rows  # the panel is wider than tall


def test_geometry_files_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "room.toml"
    path.write_text('sid_mm = 1000\nsdd_mm = 1600\ndetector_mm = [430, 430]\ndetector_px = [1024, 1024]\n')
    g = load_geometry(path)
    assert g.name == "room" and g.sdd_mm == 1600.0
    g2 = with_overrides(g, sdd_mm=1500.0, detector_mm=parse_pair("400", "--detector-mm"))
    assert g2.sdd_mm == 1500.0 and g2.detector_mm == (400.0, 400.0) and "sdd_mm=1500.0" in g2.name
    path.write_text('sid_mm = 1000\nsdd_mm = 900\ndetector_mm = [430, 430]\ndetector_px = [1024, 1024]\n')
    with pytest.raises(ConfigError, match="room.toml.*sid_mm.*< sdd_mm"):
        load_geometry(path)
    path.write_text('sid_mm = 1000\nsdd = 1500\n')
    with pytest.raises(ConfigError, match="unknown key.*sdd"):
        load_geometry(path)
    with pytest.raises(ConfigError, match="no such geometry file, and not a preset"):
        load_geometry(tmp_path / "nothing.toml")
    with pytest.raises(ConfigError, match="--detector-px"):
        parse_pair("1024x768x2", "--detector-px", int)


# -- the patient's motion and the view plan --------------------------------------------------------------------
@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory):
    from dexrt.pipelines.fit.views import PatientRenderer
    from dexrt.synth.ct import load_ct
    from dexrt.synth.render import ImagingConfig

    ct = load_ct(write_phantom(tmp_path_factory.mktemp("ct") / "phantom.nii.gz"))
    return PatientRenderer(ct, ImagingConfig(size=(64, 64), detector_mm=400.0), breathing_mm=15.0)


def test_setup_error_moves_the_patient_rigidly(renderer) -> None:
    from dexrt.pipelines.fit.motion import PatientState, rigid

    iso = (10.0, -5.0, 20.0)
    state = PatientState(0, iso, 0.0, (3.0, -4.0, 0.0), (0.0, 0.0, 90.0))
    moved = rigid(renderer.volume, state, renderer.iso)
    # the planned isocentre lands on the aim point plus the setup shift; a point 10 mm to its left (RAS +x)
    # turns with the 90 deg rotation about the superior axis onto +y
    inverse = np.linalg.inv(renderer.volume.affine)
    for offset, expected in (((0, 0, 0), (0, 0, 0)), ((10, 0, 0), (0, 10, 0))):
        idx = inverse @ np.array([*np.add(iso, offset), 1.0])
        world = moved.affine @ idx
        np.testing.assert_allclose(world[:3], renderer.iso + np.array([3.0, -4.0, 0.0]) + expected, atol=1e-9)


def test_breathing_moves_the_lung_base_and_not_the_bone(renderer) -> None:
    from dexrt.pipelines.fit.motion import Breathing, lung_mask

    b = Breathing(renderer.volume, 15.0)
    assert b.moving and b.weight is not None
    lung, w = lung_mask(renderer.volume), b.weight
    ks = np.nonzero(lung.any(axis=(0, 1)))[0]
    apex, base = w[..., ks.max()][lung[..., ks.max()]], w[..., ks.min()][lung[..., ks.min()]]
    assert apex.mean() < 0.2 and base.mean() > 0.6  # the diaphragm moves most, the apex least
    bone = renderer.volume.data[..., 2] > 0.15
    assert np.all(w[bone] == 0.0)
    inhale = b.at(1.0)
    assert np.array_equal(inhale.data[bone], renderer.volume.data[bone])
    moved = np.abs(inhale.data - renderer.volume.data).sum(axis=-1) > 1e-3
    assert moved.any() and not moved[~renderer.volume.body].any()
    assert b.at(0.0) is renderer.volume


def test_held_out_views_share_no_angle_or_state_with_training(renderer) -> None:
    from dexrt.pipelines.fit.views import TEST_PHASE, TRAIN_PHASES, VAL_PHASE, AngleRange, ViewPlan, plan_fit_views

    ranges = [AngleRange(0.0, 360.0, 0.0, 0), AngleRange(80.0, 20.0, 5.0, 1)]
    isos = [tuple(renderer.iso), tuple(renderer.iso + 20.0)]
    views = plan_fit_views(renderer, ranges, isos, ViewPlan(train=60, val=6, test=8, guard_deg=3.0, seed=3))
    train, val, test = views["train"], views["val"], views["test"]
    assert (len(train), len(val), len(test)) == (60, 6, 8)
    held = [v.gantry_deg for v in test]
    for v in train + val:
        assert min(abs((v.gantry_deg - h + 180) % 360 - 180) for h in held) >= 3.0
    assert {v.anatomy.breathing for v in train} == set(TRAIN_PHASES)
    assert {v.anatomy.breathing for v in val} == {VAL_PHASE} and {v.anatomy.breathing for v in test} == {TEST_PHASE}
    for v in test:  # a setup error of exactly 5 mm and 2 degrees
        assert np.linalg.norm(v.anatomy.shift_mm) == pytest.approx(5.0, abs=1e-3)
        assert np.linalg.norm(v.anatomy.rotation_deg) == pytest.approx(2.0, abs=1e-3)
        assert v.chain is not None and v.chain.offset_mm == (0.0, 0.0) and v.chain.sdd_mm == 1500.0
    assert {v.anatomy.isocentre_mm for v in train} == set(isos)
    assert any(v.couch_deg == 5.0 for v in train)
    again = plan_fit_views(renderer, ranges, isos, ViewPlan(train=60, val=6, test=8, guard_deg=3.0, seed=3))
    assert [v.gantry_deg for v in again["train"]] == [v.gantry_deg for v in train]  # reproducible


def test_short_ranges_reuse_held_out_angles(renderer) -> None:
    from dexrt.pipelines.fit.views import AngleRange, ViewPlan, plan_fit_views

    views = plan_fit_views(renderer, [AngleRange(85.0, 10.0)], [tuple(renderer.iso)],
                           ViewPlan(train=10, val=2, test=6, guard_deg=3.0))
    assert len({v.gantry_deg for v in views["test"]}) == 1 and len(views["train"]) == 10


# -- end to end ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One `dexrt fit` run on the phantom with a two-isocentre plan, signed, with a report."""
    from dexrt.runtime.signing import generate_keypair

    folder = tmp_path_factory.mktemp("fit")
    ct = write_phantom(folder / "phantom.nii.gz")
    plan = write_plan(folder / "plan.dcm", [{"iso": ISO_A, "gantry": 180.0, "end": 0.0, "direction": "CW"},
                                            {"iso": ISO_B, "gantry": 90.0}])
    generate_keypair(folder / "team.pem", "team")
    result = run("fit", ct, "-o", folder / "patient.dexrt", "--plan", plan, "--minutes", "0.2", "--train-views", "4",
                 "--val-views", "1", "--test-views", "2", "--precision", "fp16", "--sign", folder / "team.pem",
                 "--report", folder / "report", "--work", folder / "work", "--json")
    return {"folder": folder, "result": result}


def test_fit_end_to_end(fitted: dict) -> None:
    import dexrt
    from dexrt.runtime.bundle import read_manifest

    result, folder = fitted["result"], fitted["folder"]
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["signed"] and summary["patient"]["patient_id"] == "FIT001"  # the CT has none: the plan's
    engine = dexrt.Engine(folder / "patient.dexrt", trusted_keys=[folder / "team.pem.pub"], require_signed=True)
    assert engine.signer is not None and engine.precision == "fp16"
    manifest = read_manifest(folder / "patient.dexrt")
    assert manifest["patient"]["ct_source"] == "phantom.nii.gz" and len(manifest["patient"]["ct_sha256"]) == 64
    fit = manifest["fit"]
    assert fit["isocentres_lps_mm"] == [list(ISO_A), list(ISO_B)] and fit["isocentres_from"] == "RT Plan plan.dcm"
    assert fit["angles_from"] == "plan" and {a["isocentre"] for a in fit["angles"]} == {0, 1}
    assert fit["angles"][0]["start_deg"] == 270.0 and fit["angles"][0]["extent_deg"] == 180.0  # MV 180-0 CW, +90
    assert fit["geometry"]["name"] == "default" and fit["budget_minutes"] == 0.2
    assert fit["views"] == {"train": 4, "val": 1, "test": 2}
    for when in ("before", "after"):
        assert np.isfinite(fit["scores"][when]["bone/psnr"]) and "bone_suppression" in fit["scores"][when]
    assert fit["training"]["steps"] >= 1 and fit["timings_s"]["wall_s"] > 0
    assert fit["init"]["model_hash"].startswith("sha256:") and fit["init"]["checkpoint"] == "default"
    assert any("frame of reference not checked" in w for w in fit["warnings"])
    assert manifest["pixel_spacing_mm"] == pytest.approx(fit["pixel_at_iso_mm"])
    assert manifest["model"]["flip_average"] is True
    report = folder / "report"
    text = (report / "report.md").read_text()
    assert "| bone PSNR (dB) |" in text and "FIT001" in text
    assert (report / "panel.png").is_file() and json.loads((report / "scores.json").read_text())["fit"]["scores"]
    held = json.loads((folder / "work" / "heldout" / "manifest.json").read_text())
    assert {v["anatomy"]["kind"] for v in held["views"]} == {"test"} and held["fit"]["views"]["test"] == 2
    rows, cols = fit["panel_field_px"]
    assert held["size"] == [rows, cols] and "padding" not in held  # held-out views: the panel's field, as it is
    train = json.loads((folder / "work" / "train" / "manifest.json").read_text())
    assert train["size"] == [256, 256] == fit["training_views"]["padded_to_px"]  # as the engine sees them
    assert train["padding"]["field_px"] == [rows, cols]
    from dexrt.io.images import read_image

    se = read_image(folder / "work" / "train" / train["views"][0]["files"]["se"])
    top = (256 - rows) // 2
    assert se.shape == (256, 256) and np.array_equal(se[top - 1], se[top + 1])  # mirrored about the field's edge


def test_int8_calibrates_on_the_field_as_the_engine_gets_it(fitted: dict, tmp_path: Path) -> None:
    """INT8 (the default precision) calibrates on training views cropped back from their padding: what a kV image
    of the panel is when it reaches the engine (`dexrt fit --precision int8` builds from this copy)."""
    from dexrt.io.dataset import open_dataset
    from dexrt.io.images import read_image
    from dexrt.pipelines.fit.views import unpadded_copy

    train = fitted["folder"] / "work" / "train"
    padded = json.loads((train / "manifest.json").read_text())
    copy = unpadded_copy(train, tmp_path / "calibration", 3)
    manifest = json.loads((copy / "manifest.json").read_text())
    rows, cols = padded["padding"]["field_px"]
    top, left = padded["padding"]["field_at_px"]
    assert manifest["size"] == [rows, cols] and "padding" not in manifest and len(manifest["views"]) == 3
    view = open_dataset(copy, processed=True).split("train")[0]
    se = read_image(view.files["se"])
    assert se.shape == (rows, cols)
    np.testing.assert_array_equal(se, read_image(train / view.files["se"].relative_to(copy))[top:top + rows,
                                                                                              left:left + cols])
    with pytest.raises(InputError, match="not a padded dataset"):
        unpadded_copy(copy, tmp_path / "again", 3)
    assert run("fit", "--help").output.count("[default: int8]") == 1


def test_fit_refusals(tmp_path: Path) -> None:
    ct = write_phantom(tmp_path / "phantom.nii.gz")
    result = run("fit", ct, "-o", tmp_path / "p.dexrt", "--isocentre", "0,0,900", "--minutes", "0.1")
    assert result.exit_code == 1 and "the isocentre [0.0, 0.0, 900.0] mm" in result.output
    result = run("fit", ct, "-o", tmp_path / "p.dexrt", "--isocentre", "1,2")
    assert result.exit_code == 2 and "X,Y,Z" in result.output
    result = run("fit", tmp_path / "none.nii.gz", "-o", tmp_path / "p.dexrt")
    assert result.exit_code == 1 and "no such CT file or folder, nor a name of the CT catalogue" in result.output
    result = run("fit", ct, "-o", tmp_path / "p.dexrt", "--geometry", "no-such-room")
    assert result.exit_code == 1 and "not a preset" in result.output
    assert not (tmp_path / "p.dexrt").exists()


# -- many patients ------------------------------------------------------------------------------------------------
def test_jobs_file(tmp_path: Path) -> None:
    from dexrt.pipelines.fit.cluster import read_jobs
    from dexrt.pipelines.fit.fit import FitOptions

    (tmp_path / "p1").mkdir()
    (tmp_path / "fits.toml").write_text(
        '[[fit]]\nct = "example"\noutput = "p0.dexrt"\n\n'
        '[[fit]]\nct = "p1"\nplan = "p1/plan.dcm"\noutput = "out/p1.dexrt"\npatient_id = "P1"\nminutes = 5\n'
        'isocentre = [[1.0, 2.0, 3.0]]\n')
    base = FitOptions(ct="", output=tmp_path / "x.dexrt", minutes=20.0, angles="0:90")
    first, second = read_jobs(tmp_path / "fits.toml", base)
    assert first.ct == "example" and first.output == tmp_path / "p0.dexrt" and first.minutes == 20.0
    assert first.angles == "0:90" and first.plan is None
    assert second.ct == str(tmp_path / "p1") and second.plan == tmp_path / "p1" / "plan.dcm"
    assert (second.patient_id, second.minutes, second.isocentres_lps) == ("P1", 5.0, ((1.0, 2.0, 3.0),))
    for text, error in (('[[fit]]\nct = "a"\n', "job 1: missing output"),
                        ('[[fit]]\nct = "a"\noutput = "o"\nplna = "x"\n', "unknown key.*plna"),
                        ('[[fit]]\nct = "a"\noutput = "o"\n[[fit]]\nct = "b"\noutput = "o"\n', "another job's"),
                        ('[[fit]]\nct = 3\noutput = "o"\n', "ct has the wrong type"),
                        ('title = "x"\n', r"expected \[\[fit\]\] tables")):
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(ConfigError, match=error):
            read_jobs(tmp_path / "bad.toml", base)


def test_fit_command_line_usage(tmp_path: Path) -> None:
    result = run("fit", "-o", tmp_path / "p.dexrt")
    assert result.exit_code == 2 and "give CT and -o/--output, or --jobs" in result.output
    (tmp_path / "fits.toml").write_text('[[fit]]\nct = "a"\noutput = "o"\n')
    result = run("fit", "ct.nii", "--jobs", tmp_path / "fits.toml")
    assert result.exit_code == 2 and "give neither CT nor -o" in result.output
    result = run("fit", "ct.nii", "-o", tmp_path / "p.dexrt", "--ray", "local")
    assert result.exit_code == 2 and "--ray runs the fits of a --jobs file" in result.output
