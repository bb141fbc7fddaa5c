"""Patients in datasets: several CTs in one dataset, each view's patient, held-out patients, version-1 datasets read
as one patient, `dexrt eval` per patient, and the trainer reading several datasets."""

from __future__ import annotations

import json
from pathlib import Path

import dexrt
import numpy as np
import pytest
from click.testing import CliRunner
from dexrt.cli import cli
from dexrt.io.dataset import FORMAT, FORMAT_VERSION, open_dataset
from dexrt.io.images import write_image


def _ct(path: Path, radius_mm: float) -> Path:
    """A water cylinder with a bone rod, 4 mm voxels, as NIfTI."""
    import nibabel as nib

    shape = (60, 60, 12)
    x, y, _ = np.meshgrid(*[(np.arange(n) - (n - 1) / 2.0) * 4.0 for n in shape], indexing="ij")
    hu = np.full(shape, -1000.0)
    hu[x**2 + y**2 <= radius_mm**2] = 0.0
    hu[(x - 20.0) ** 2 + y**2 <= 36.0] = 1600.0
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2.0 * 4.0
    nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), str(path))
    return path


def test_a_dataset_of_two_patients_with_one_held_out(tmp_path: Path) -> None:
    a, b = _ct(tmp_path / "anna.nii.gz", 80.0), _ct(tmp_path / "ben.nii.gz", 100.0)
    out = tmp_path / "ds"
    res = CliRunner().invoke(cli, ["synth", "--ct", str(a), "--ct", str(b), "--holdout-patient", "ben",
                                   "--split", "0.6,0.2,0.2",
                                   "--views", "20", "--size", "32", "--no-noise", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["patients"]["ben"]["holdout"] and not summary["patients"]["anna"]["holdout"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == FORMAT and m["format_version"] == FORMAT_VERSION
    assert list(m["patients"]) == ["anna", "ben"] and len(m["views"]) == 40
    assert len({v["id"] for v in m["views"]}) == 40  # ids run on through the dataset
    ben = [v for v in m["views"] if v["patient"] == "ben"]
    assert len(ben) == 20 and all(v["split"] == "test" for v in ben)
    assert {v["angle_split"] for v in ben} == {"train", "val", "test"}  # the plan's split of each angle is kept
    anna = [v for v in m["views"] if v["patient"] == "anna"]
    assert {v["split"] for v in anna} == {"train", "val", "test"}
    # One detector for both: the larger body's fit, so both patients are seen at the same scale.
    pix = {p: m["patients"][p]["geometry"]["pixel_at_iso_mm"] for p in m["patients"]}
    assert pix["anna"] == pix["ben"] == m["geometry"]["pixel_at_iso_mm"]
    assert m["patients"]["anna"]["seed"] != m["patients"]["ben"]["seed"]
    ds = open_dataset(out)
    assert ds.patients == ["anna", "ben"]
    assert {v.patient for v in ds.split("train")} == {"anna"}
    assert sum(v.patient == "ben" for v in ds.split("test")) == 20


def test_cli_refuses_unknown_holdout_and_a_held_out_pool(tmp_path: Path) -> None:
    a = _ct(tmp_path / "anna.nii.gz", 80.0)
    res = CliRunner().invoke(cli, ["synth", "--ct", str(a), "--holdout-patient", "carl", "--views", "2",
                                   "--size", "32", "-o", str(tmp_path / "o1")])
    assert res.exit_code != 0 and "carl is not a patient" in res.output
    res = CliRunner().invoke(cli, ["synth", "--ct", str(a), "--ct", str(a), "--views", "2", "--size", "32",
                                   "-o", str(tmp_path / "o2")])
    assert res.exit_code != 0 and "same patient name" in res.output
    res = CliRunner().invoke(cli, ["synth", "--ct", str(a), "--holdout-patient", "anna", "--pool", "4",
                                   "--size", "32", "-o", str(tmp_path / "o3")])
    assert res.exit_code == 1 and "pool holds train views only" in res.output


def _dataset(root: Path, engine: dexrt.Engine, patients: list[str], version: int = FORMAT_VERSION,
             scale: float = 1.0) -> Path:
    """A dataset whose true DE images are the engine's own outputs; views test, test, train per patient."""
    for sub in ("se", "bone", "soft"):
        (root / sub).mkdir(parents=True)
    views = []
    for p, patient in enumerate(patients):
        for i, split in enumerate(["test", "test", "train"]):
            k = 3 * p + i
            se = (np.random.default_rng(k).random((64, 64)) * 40000 + 10000).astype(np.uint16)
            bone, soft = engine.infer(se)
            name = f"view_{k:05d}.png"
            for sub, img in (("se", se), ("bone", bone), ("soft", soft)):
                write_image(root / sub / name, img)
            view = {"id": name[:-4], "split": split, "mask": None,
                    "files": {"se": f"se/{name}", "bone": f"bone/{name}", "soft": f"soft/{name}"}}
            if version >= 2:
                view["patient"] = patient
            views.append(view)
    enc = {"offset": 0.0, "scale": scale}
    manifest = {"format": FORMAT, "format_version": version, "image_format": "png", "size": [64, 64],
                "encoding": {c: enc for c in ("se", "bone", "soft")}, "views": views,
                "source": {"ct": "/data/lung7.nii.gz"}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_eval_reports_per_patient(tmp_path: Path, plain_engine_path: Path) -> None:
    with dexrt.Engine(plain_engine_path) as engine:
        ds = _dataset(tmp_path / "ds", engine, ["anna", "ben"])
    manifest = json.loads((ds / "manifest.json").read_text())
    for v in manifest["views"]:  # ben held out: all his views are test views, their angles' splits kept
        if v["patient"] == "ben":
            v["angle_split"], v["split"] = v["split"], "test"
    (ds / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "eval"
    res = CliRunner().invoke(cli, ["eval", str(ds), "--engine", str(plain_engine_path), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["views"] == 5 and list(report["patients"]) == ["anna", "ben"]
    assert [p["views"] for p in report["patients"].values()] == [2, 3]
    for p in report["patients"].values():
        assert p["metrics"]["bone/ssim"] == pytest.approx(1.0)
    assert "by_angle_split" not in report["patients"]["anna"]
    by_angle = report["patients"]["ben"]["by_angle_split"]
    assert {s: a["views"] for s, a in by_angle.items()} == {"test": 2, "train": 1}
    assert json.loads((out / "metrics.json").read_text())["patients"]["ben"]["views"] == 3
    table = CliRunner().invoke(cli, ["eval", str(ds), "--engine", str(plain_engine_path), "-o", str(out)])
    assert table.exit_code == 0, table.output
    rows = [line.split() for line in table.stdout.splitlines() if line.strip().startswith(("anna", "ben", "at "))]
    assert [r[0] for r in rows] == ["anna", "ben", "at", "at"] and [r[1] for r in rows][:2] == ["2", "3"]


def test_version_1_datasets_read_as_one_patient(tmp_path: Path, plain_engine_path: Path) -> None:
    with dexrt.Engine(plain_engine_path) as engine:
        ds = _dataset(tmp_path / "v1", engine, ["x"], version=1)
    opened = open_dataset(ds)
    assert opened.patients == ["lung7"]  # named after its CT file
    bad = json.loads((ds / "manifest.json").read_text())
    bad["format_version"] = 2  # a version-2 view must name its patient
    (ds / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(dexrt.InputError, match="patient"):
        open_dataset(ds)
    bad["format_version"] = 3
    (ds / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(dexrt.InputError, match="version 3 is not 1 or 2"):
        open_dataset(ds)


def test_the_trainer_reads_several_datasets(tmp_path: Path, plain_engine_path: Path) -> None:
    from dexrt_train.data import dataset_encodings, find_views, pixel_spacing_mm

    with dexrt.Engine(plain_engine_path) as engine:
        a = _dataset(tmp_path / "a", engine, ["anna"])
        b = _dataset(tmp_path / "b", engine, ["ben", "carl"])
        c = _dataset(tmp_path / "c", engine, ["dora"], scale=2.0)
    views = find_views([a, b], "train")
    assert [v.patient for v in views] == ["anna", "ben", "carl"]
    assert dataset_encodings([a, b]) == dataset_encodings(a)
    assert pixel_spacing_mm([a, b]) is None
    with pytest.raises(dexrt.InputError, match="another encoding"):
        dataset_encodings([a, c])
