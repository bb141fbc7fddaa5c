"""`dexrt infer` on folders: recursion, globs, resuming, overwrite, --json, --preview, and killed runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import dexrt
from dexrt.cli import cli
from dexrt.io.images import read_image, read_metadata, write_image
from infer_helpers import make_dicom, marked_image


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def image(seed: int, shape=(40, 56)) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 60000).astype(np.uint16)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """in/a.png, in/b.tif, in/sub/c.png, in/sub/deeper/d.dcm, in/sub/skip_me.png, in/.hidden/e.png"""
    src = tmp_path / "in"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / ".hidden").mkdir()
    write_image(src / "a.png", image(1))
    write_image(src / "b.tif", image(2))
    write_image(src / "sub" / "c.png", image(3))
    write_image(src / "sub" / "skip_me.png", image(4))
    write_image(src / ".hidden" / "e.png", image(5))
    make_dicom(src / "sub" / "deeper" / "d.dcm", marked_image((40, 56), 4095), bits=12, photometric="MONOCHROME1")
    return src


def names(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_recursive_mirrors_folders(plain_engine_path: Path, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("infer", tree, "-o", out, "--engine", plain_engine_path, "-r")
    assert result.exit_code == 0, result.output
    assert "Converted 5 of 5 images" in result.output
    assert names(out) == ["a_bone.png", "a_soft.png", "b_bone.tif", "b_soft.tif", "sub/c_bone.png", "sub/c_soft.png",
                          "sub/deeper/d_bone.dcm", "sub/deeper/d_soft.dcm", "sub/skip_me_bone.png",
                          "sub/skip_me_soft.png"]
    engine = dexrt.Engine(plain_engine_path)
    bone, _ = engine.infer(read_image(tree / "sub" / "c.png"))
    np.testing.assert_array_equal(read_image(out / "sub" / "c_bone.png"), bone)


def test_not_recursive_by_default(plain_engine_path: Path, tree: Path, tmp_path: Path) -> None:
    result = run("infer", tree, "-o", tmp_path / "out", "--engine", plain_engine_path)
    assert result.exit_code == 0, result.output
    assert names(tmp_path / "out") == ["a_bone.png", "a_soft.png", "b_bone.tif", "b_soft.tif"]


def test_globs(plain_engine_path: Path, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("infer", tree, "-o", out, "--engine", plain_engine_path, "-r", "--include", "*.png",
                 "--include", "sub/deeper/*", "--exclude", "skip_*")
    assert result.exit_code == 0, result.output
    assert names(out) == ["a_bone.png", "a_soft.png", "sub/c_bone.png", "sub/c_soft.png",
                          "sub/deeper/d_bone.dcm", "sub/deeper/d_soft.dcm"]


def test_output_inside_source_is_not_an_input(plain_engine_path: Path, tree: Path) -> None:
    out = tree / "results"
    for _ in range(2):  # the second run must neither convert outputs nor redo work
        result = run("infer", tree, "-o", out, "--engine", plain_engine_path, "-r", "--json")
        assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["files_found"] == 5 and summary["skipped"] == 5 and summary["converted"] == 0


def test_resume_and_overwrite(plain_engine_path: Path, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run("infer", tree, "-o", out, "--engine", plain_engine_path, "-r").exit_code == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    (out / "sub" / "c_soft.png").unlink()  # as if the run had stopped before this output
    result = run("infer", tree, "-o", out, "--engine", plain_engine_path, "-r", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["converted"], summary["skipped"], summary["failed"]) == (1, 4, 0)
    status = {Path(f["source"]).name: f["status"] for f in summary["files"]}
    assert status == {"a.png": "skipped", "b.tif": "skipped", "c.png": "converted", "d.dcm": "skipped",
                      "skip_me.png": "skipped"}
    assert (out / "sub" / "c_soft.png").is_file()
    assert (out / "a_bone.png").stat().st_mtime_ns == stamps[out / "a_bone.png"]  # skipped files untouched
    result = run("infer", tree, "-o", out, "--engine", plain_engine_path, "-r", "--overwrite")
    assert result.exit_code == 0 and "Converted 5 of 5 images" in result.output
    assert (out / "a_bone.png").stat().st_mtime_ns != stamps[out / "a_bone.png"]


def test_json_summary(plain_engine_path: Path, tree: Path, tmp_path: Path) -> None:
    (tree / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = run("infer", tree, "-o", tmp_path / "out", "--engine", plain_engine_path, "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)  # stdout holds the JSON only; errors went to stderr
    assert (summary["converted"], summary["failed"], summary["skipped"]) == (2, 1, 0)
    assert [Path(f["source"]).name for f in summary["files"]] == ["a.png", "b.tif", "broken.png"]  # input order
    broken = summary["files"][2]
    assert broken["status"] == "failed" and "broken.png" in broken["error"] and broken["outputs"] == []
    assert summary["files"][0]["geometry"]["resampled"] is False
    assert "records no training pixel spacing" in summary["resampling"]
    assert f"Error: {tree / 'broken.png'}" in result.stderr


def test_spacing_options(plain_engine_path: Path, tree: Path, tmp_path: Path) -> None:
    result = run("infer", tree, "-o", tmp_path / "o", "--engine", plain_engine_path, "--model-spacing", "0.2",
                 "--no-resample")
    assert result.exit_code == 2 and "contradict" in result.output
    dicom = tree / "sub" / "deeper" / "d.dcm"
    make_dicom(dicom, marked_image((40, 56), 4095), bits=12, spacing=(0.1, 0.1))
    result = run("infer", dicom, "-o", tmp_path / "o", "--engine", plain_engine_path, "--model-spacing", "0.2",
                 "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model_spacing_mm"] == 0.2 and "(--model-spacing)" in summary["resampling"]
    geometry = summary["files"][0]["geometry"]
    assert geometry["resampled"] and geometry["working_size"] == [20, 28] and geometry["size"] == [40, 56]
    assert summary["files"][0]["spacing"]["source"] == "header"


def test_old_spacing_option_still_works_with_a_warning(plain_engine_path: Path, tree: Path, tmp_path: Path) -> None:
    dicom = tree / "sub" / "deeper" / "d.dcm"
    make_dicom(dicom, marked_image((40, 56), 4095), bits=12, spacing=(0.1, 0.1))
    result = run("infer", dicom, "-o", tmp_path / "o", "--engine", plain_engine_path, "--spacing", "0.2", "--json")
    assert result.exit_code == 0, result.output
    assert "--spacing is deprecated" in result.stderr and "--model-spacing" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["model_spacing_mm"] == 0.2 and summary["files"][0]["geometry"]["working_size"] == [20, 28]
    result = run("infer", dicom, "-o", tmp_path / "o", "--engine", plain_engine_path, "--spacing", "0.2",
                 "--model-spacing", "0.3")
    assert result.exit_code == 2 and "disagree" in result.output


def test_spacing_from_the_engine(tmp_path: Path) -> None:
    """An engine whose model config records its training spacing (carried from the ONNX metadata)."""
    from helpers import build_bundle, make_plain_onnx

    meta = json.dumps({"model": {"pixel_spacing_mm": 0.4}, "size_multiple": 16})
    bundle = build_bundle(make_plain_onnx(tmp_path / "s.onnx", metadata=meta), tmp_path / "s.dexrt")
    assert dexrt.Engine(bundle).manifest["model"]["config"]["pixel_spacing_mm"] == 0.4
    dicom = make_dicom(tmp_path / "d.dcm", marked_image((40, 56), 4095), bits=12, imager_spacing=(0.25, 0.25),
                       extra={"EstimatedRadiographicMagnificationFactor": 1.25})
    result = run("infer", dicom, "-o", tmp_path / "o", "--engine", bundle, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model_spacing_mm"] == 0.4 and "(from the engine)" in summary["resampling"]
    assert summary["files"][0]["geometry"]["working_size"] == [20, 28]
    import pydicom

    assert pydicom.dcmread(tmp_path / "o" / "d_bone.dcm").Rows == 40


def test_preview(plain_engine_path: Path, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("infer", tree / "a.png", "-o", out, "--engine", plain_engine_path, "--preview")
    assert result.exit_code == 0, result.output
    with Image.open(out / "a_preview.png") as panel:
        assert panel.mode == "L" and panel.size == (3 * 56 + 2 * 4, 40)
        pixels = np.asarray(panel)
    assert pixels[:, 56:60].max() == 0 and pixels[:, :56].max() == 255  # three panels, each windowed
    assert read_metadata(out / "a_preview.png")["channel"] == "preview"
    # A preview is an output too: without it the file counts as not done.
    result = run("infer", tree / "a.png", "-o", out, "--engine", plain_engine_path, "--preview", "--json")
    assert json.loads(result.stdout)["skipped"] == 1


def test_dicom_and_png_provenance(plain_engine_path: Path, tree: Path, tmp_path: Path) -> None:
    import pydicom

    out = tmp_path / "out"
    assert run("infer", tree, "-o", out, "--engine", plain_engine_path, "-r").exit_code == 0
    dicom = pydicom.dcmread(out / "sub" / "deeper" / "d_bone.dcm")
    assert dicom.PhotometricInterpretation == "MONOCHROME1" and dicom.BitsStored == 12
    assert "dexrt" in dicom.DerivationDescription
    meta = read_metadata(out / "a_soft.png")
    assert meta["software"].startswith("dexrt") and meta["engine"]["file"] == plain_engine_path.name


# -- killed runs ----------------------------------------------------------------------------------------------
N_FILES = 240


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    for i in range(N_FILES):
        Image.fromarray(image(i, (48, 48))).save(folder / f"img{i:04d}.png")
    return folder


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["term", "int", "kill"])
def test_killed_run_leaves_no_partial_file_and_rerun_finishes(plain_engine_path: Path, many: Path,
                                                              tmp_path: Path, signum: int) -> None:
    out = tmp_path / "out"
    # Ctrl-C is restored to Python's default for the child (a test runner in the background may ignore it).
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from dexrt.cli import main; sys.argv[0] = 'dexrt'; main()")
    proc = subprocess.Popen([sys.executable, "-c", code, "infer", str(many), "-o", str(out), "--engine",
                             str(plain_engine_path), "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and sum(1 for _ in out.glob("*_soft.png")) >= 10):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no outputs appeared"
        time.sleep(0.005)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    expected = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}[signum]
    assert proc.returncode == expected, stderr.decode()
    finished = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert len(finished) < 2 * N_FILES, "the run ended before it was killed"
    engine = dexrt.Engine(plain_engine_path)
    for output in finished:  # every output present is complete and right
        stem, channel = output.stem.rsplit("_", 1)
        want = engine.infer(read_image(many / f"{stem}.png"))[engine.channels.index(channel)]
        np.testing.assert_array_equal(read_image(output), want)
    if signum != signal.SIGKILL:  # a clean shutdown: no temporary files, each file's outputs all or none
        assert "Interrupted:" in stderr.decode()
        assert not [p for p in out.iterdir() if p.name.startswith(".")]
        bones = {p.name.replace("_bone", "") for p in out.glob("*_bone.png")}
        assert bones == {p.name.replace("_soft", "") for p in out.glob("*_soft.png")}
    done_before = sum(1 for p in out.glob("*_soft.png") if (out / p.name.replace("_soft", "_bone")).exists())

    result = run("infer", many, "-o", out, "--engine", plain_engine_path, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["skipped"] == done_before and summary["converted"] == N_FILES - done_before
    assert len([p for p in out.iterdir()]) == 2 * N_FILES  # everything there, no temporary file left


def test_files_are_batched_together(plain_engine_path: Path, many: Path, tmp_path: Path) -> None:
    """Pipelining: frames of different files meet in the engine's batches (a sequential loop would give
    batches of one)."""
    from dexrt.pipelines.convert import Converter
    from dexrt.io.layout import find_images

    sources = find_images(many)[:32]
    with dexrt.Engine(plain_engine_path, max_batch=8, max_delay_us=50_000) as engine:
        outcomes = list(Converter(engine, tmp_path, jobs=16).run(sources))
        sizes = engine.stats()["batch_sizes"]
    assert all(o.ok for o in outcomes) and len(outcomes) == 32
    assert sum(int(k) * v for k, v in sizes.items()) == 32 and max(int(k) for k in sizes) > 1, sizes
