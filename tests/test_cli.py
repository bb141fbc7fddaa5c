"""`dexrt build-engine` and `dexrt infer` through click's CliRunner: exit codes, outputs, messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import dexrt
from dexrt.cli import cli
from dexrt.io.images import read_image, read_metadata, write_image


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def make_image(seed: int, shape=(80, 96), dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 60000).astype(dtype)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.png", make_image(1))
    write_image(src / "b.tif", make_image(2, (70, 50)))
    write_image(src / "c.tiff", make_image(3, dtype=np.float32))
    return src


def test_build_engine_cli(plain_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.dexrt"
    result = run("build-engine", plain_onnx, "-o", out, "--size-multiple", "32", "--precision", "fp16")
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}" in result.output and "fp16" in result.output
    engine = dexrt.Engine(out)
    assert engine.size_multiple == 32 and engine.precision == "fp16"


def test_build_engine_json_and_windows(plain_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.dexrt"
    result = run("build-engine", plain_onnx, "-o", out, "--json", "--input-window", "10", "1000",
                 "--output-window", "0", "500", "--output-window", "0", "600", "--channels", "bone,soft")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["input"]["window"] == [10.0, 1000.0]
    assert manifest["output"]["windows"] == [[0.0, 500.0], [0.0, 600.0]]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a model", "not an ONNX model"), (None, "no such ONNX file")],
    ids=["garbage", "missing"],
)
def test_build_engine_bad_model(tmp_path: Path, content: bytes | None, message: str) -> None:
    model = tmp_path / "bad.onnx"
    if content is not None:
        model.write_bytes(content)
    result = run("build-engine", model, "-o", tmp_path / "x.dexrt")
    assert result.exit_code == 1
    assert f"Error: {model}: {message}" in result.output
    assert not (tmp_path / "x.dexrt").exists()


def test_build_engine_wrong_channel_count(tmp_path: Path) -> None:
    from helpers import make_plain_onnx

    model = make_plain_onnx(tmp_path / "three.onnx", out_channels=3)
    result = run("build-engine", model, "-o", tmp_path / "x.dexrt")
    assert result.exit_code == 1
    assert "3 channels" in result.output


def test_infer_folder(plain_engine_path: Path, folder: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out = tmp_path / "out"
    result = run("infer", folder, "-o", out, "--engine", plain_engine_path)
    assert result.exit_code == 0, result.output
    assert "Converted 3 of 3 images" in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "a_bone.png", "a_soft.png", "b_bone.tif", "b_soft.tif", "c_bone.tiff", "c_soft.tiff",
    ]
    engine = dexrt.Engine(plain_engine_path)
    for name, suffix in (("a", ".png"), ("b", ".tif"), ("c", ".tiff")):
        source = read_image(folder / f"{name}{suffix}")
        bone, soft = engine.infer(source)
        np.testing.assert_array_equal(read_image(out / f"{name}_bone{suffix}"), bone)
        np.testing.assert_array_equal(read_image(out / f"{name}_soft{suffix}"), soft)
        assert read_image(out / f"{name}_bone{suffix}").dtype == source.dtype
        meta = read_metadata(out / f"{name}_soft{suffix}")
        assert meta["channel"] == "soft" and meta["derived_from"] == f"{name}{suffix}"
        assert meta["engine"]["onnx_sha256"] == engine.manifest["model"]["onnx_sha256"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # inputs untouched


def test_infer_bad_files_are_skipped(plain_engine_path: Path, folder: Path, tmp_path: Path) -> None:
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    truncated = (folder / "a.png").read_bytes()
    (folder / "cut.png").write_bytes(truncated[: len(truncated) // 2])
    import tifffile

    tifffile.imwrite(folder / "rgb.tif", np.zeros((10, 10, 3), np.uint8), photometric="rgb")
    (folder / "notes.txt").write_text("not an image, not considered")
    out = tmp_path / "out"
    result = run("infer", folder, "-o", out, "--engine", plain_engine_path)
    assert result.exit_code == 1
    assert "Converted 3 of 6 images (3 failed)" in result.output
    assert f"Error: {folder / 'broken.png'}: " in result.output
    assert f"Error: {folder / 'cut.png'}: " in result.output
    assert f"Error: {folder / 'rgb.tif'}: " in result.output
    assert (out / "a_bone.png").exists() and not (out / "broken_bone.png").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_infer_json_summary(plain_engine_path: Path, folder: Path, tmp_path: Path) -> None:
    result = run("infer", folder, "-o", tmp_path / "o", "--engine", plain_engine_path, "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["converted"] == 3 and summary["failed"] == 0
    assert summary["backend"] == "openvino"
    assert all(len(f["outputs"]) == 2 for f in summary["files"])


def test_infer_empty_folder(plain_engine_path: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("infer", empty, "-o", tmp_path / "o", "--engine", plain_engine_path)
    assert result.exit_code == 1
    assert f"Error: {empty}: no images to convert" in result.output
    assert "DEXRT_DEBUG" in result.output


def test_infer_missing_and_damaged_engine(folder: Path, tmp_path: Path) -> None:
    result = run("infer", folder, "-o", tmp_path / "o", "--engine", tmp_path / "nope.dexrt")
    assert result.exit_code == 1 and "no such engine file" in result.output
    damaged = tmp_path / "damaged.dexrt"
    damaged.write_bytes(b"PK\x03\x04 truncated")
    result = run("infer", folder, "-o", tmp_path / "o", "--engine", damaged)
    assert result.exit_code == 1 and "not a dexrt engine bundle" in result.output


def test_infer_never_overwrites_inputs(plain_engine_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "same"
    src.mkdir()
    write_image(src / "x.png", make_image(5))
    write_image(src / "x_bone.png", make_image(6))  # an input named like an output of x.png
    original = (src / "x_bone.png").read_bytes()
    result = run("infer", src, "-o", src, "--engine", plain_engine_path)
    assert result.exit_code == 1
    assert "would overwrite an input" in result.output
    assert (src / "x_bone.png").read_bytes() == original
    assert (src / "x_bone_bone.png").exists()  # the other input still converted


def test_debug_env_shows_traceback(plain_engine_path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DEXRT_DEBUG", "1")
    result = run("infer", tmp_path / "missing", "-o", tmp_path / "o", "--engine", plain_engine_path)
    assert isinstance(result.exception, dexrt.InputError)
