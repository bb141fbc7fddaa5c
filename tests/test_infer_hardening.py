"""`dexrt infer` against careless and hostile folders (issue: Hardening II): outputs never escape the output
folder, reruns in place resume, output names never collide silently, absurd spacings and unsupported DICOM are
refused with a clear error before inference, and image headers are checked before any pixel is decoded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import dexrt
from dexrt._limits import MAX_SIDE
from dexrt.cli import cli
from dexrt.pipelines.convert import Converter
from dexrt.io.layout import output_paths
from dexrt.io.images import read_metadata, read_radiograph, write_image
from dexrt.inputs.resample import MAX_WORKING_SIDE, working_size
from infer_helpers import (
    DECLARING,
    dicom_declaring,
    make_dicom,
    make_identity_onnx,
    png_declaring,
    raw_dicom,
    tiff_declaring,
)


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def image(seed: int, shape=(24, 32)) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 60000).astype(np.uint16)


@pytest.fixture(scope="module")
def identity_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import build_bundle

    folder = tmp_path_factory.mktemp("identity")
    return build_bundle(make_identity_onnx(folder / "id.onnx"), folder / "id.dexrt", size_multiple=8)


# -- output paths ----------------------------------------------------------------------------------------------
def test_output_paths_never_resolve_outside(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(dexrt.InputError, match="outside the output folder"):
        output_paths(Path("a.png"), out, ["x/../../victim", "soft"])
    assert output_paths(Path("a.png"), out, ["bone"], preview=True) == [out / "a_bone.png", out / "a_preview.png"]


def test_symlinked_folder_in_the_output_is_not_followed_out(plain_engine_path: Path, tmp_path: Path) -> None:
    src, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    (src / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    write_image(src / "top.png", image(0))
    write_image(src / "sub" / "a.png", image(1))
    out.mkdir()
    os.symlink(elsewhere, out / "sub")
    result = run("infer", src, "-o", out, "-r", "--engine", plain_engine_path, "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    failed = [f for f in summary["files"] if f["status"] == "failed"]
    assert len(failed) == 1 and "outside the output folder" in failed[0]["error"]
    assert summary["converted"] == 1  # the other file goes on
    assert list(elsewhere.iterdir()) == []


# -- reruns in place ---------------------------------------------------------------------------------------------
def test_rerun_in_place_resumes_and_never_converts_outputs(plain_engine_path: Path, tmp_path: Path) -> None:
    same = tmp_path / "same"
    same.mkdir()
    for name, seed in (("a.png", 1), ("b.tif", 2)):
        write_image(same / name, image(seed))
    make_dicom(same / "c.dcm", image(3))
    first = run("infer", same, "-o", same, "--engine", plain_engine_path, "--preview", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["converted"] == 3
    written = sorted(p.name for p in same.iterdir())
    for again in (["--preview"], []):  # with or without --preview, previews are outputs too
        rerun = run("infer", same, "-o", same, "--engine", plain_engine_path, "--json", *again)
        assert rerun.exit_code == 0, rerun.output
        summary = json.loads(rerun.stdout)
        assert summary["files_found"] == 3 and summary["skipped"] == 3 and summary["failed"] == 0
    assert sorted(p.name for p in same.iterdir()) == written
    assert not any("_bone_bone" in name or "_soft_bone" in name for name in written)
    refused = run("infer", same / "a_bone.png", "-o", tmp_path / "o", "--engine", plain_engine_path)
    assert refused.exit_code == 1 and "an output of dexrt" in refused.output


def test_a_genuine_input_named_like_an_output_is_still_protected(plain_engine_path: Path, tmp_path: Path) -> None:
    # x_bone.png without dexrt provenance is someone's input: it is converted, never overwritten by x.png's output.
    folder = tmp_path / "f"
    folder.mkdir()
    write_image(folder / "x.png", image(1))
    write_image(folder / "x_bone.png", image(2))
    before = (folder / "x_bone.png").read_bytes()
    result = run("infer", folder, "-o", folder, "--engine", plain_engine_path, "--json")
    summary = json.loads(result.stdout)
    assert summary["files_found"] == 2 and summary["converted"] == 1 and summary["failed"] == 1
    assert "would overwrite an input file" in next(f["error"] for f in summary["files"] if f["error"])
    assert (folder / "x_bone.png").read_bytes() == before


# -- unique output names -----------------------------------------------------------------------------------------
def test_two_inputs_claiming_one_output_is_an_error_naming_both(plain_engine_path: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write_image(src / "a.png", image(1))
    write_image(src / "a.tiff", image(2))
    result = run("infer", src, "-o", out, "--engine", plain_engine_path, "--preview", "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    [failed] = [f for f in summary["files"] if f["status"] == "failed"]
    assert failed["source"].endswith("a.tiff")
    assert str(out / "a_preview.png") in failed["error"] and str(src / "a.png") in failed["error"]
    assert read_metadata(out / "a_preview.png")["derived_from"] == "a.png"  # not silently replaced
    assert not (out / "a_bone.tiff").exists()


# -- spacing -----------------------------------------------------------------------------------------------------
def test_working_size_is_capped() -> None:
    assert working_size((1024, 1024), (0.14, 0.14), 1.477) == (97, 97)
    with pytest.raises(dexrt.InputError, match=f"more than the {MAX_WORKING_SIDE} per side"):
        working_size((1024, 1024), (9.9, 9.9), 1.477)  # the reported 6.7x upsampling to 6912^2
    with pytest.raises(dexrt.InputError, match="more than the"):
        working_size((1024, 1024), (0.14, 0.14), 1e-300)  # never an OverflowError


def test_huge_pixel_spacing_fails_that_file_before_inference(identity_engine: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    make_dicom(src / "coarse.dcm", image(1, (1024, 1024)), spacing=(9.9, 9.9))
    make_dicom(src / "fine.dcm", image(2, (64, 64)), spacing=(0.2, 0.2))
    engine = dexrt.Engine(identity_engine)
    outcomes = {o.source.name: o for o in Converter(engine, tmp_path / "out", model_spacing_mm=1.477).run(
        sorted(src.iterdir()))}
    assert "more than the 4096 per side" in outcomes["coarse.dcm"].error
    assert str(src / "coarse.dcm") in outcomes["coarse.dcm"].error
    assert outcomes["fine.dcm"].ok
    assert engine.stats()["requests"] == 1  # only the fine file reached the engine


@pytest.mark.parametrize("option", ["--model-spacing", "--input-spacing"])
@pytest.mark.parametrize("spacing", ["1e-6", "0", "50", "nan"])
def test_absurd_spacing_option_is_refused(plain_engine_path: Path, tmp_path: Path, option: str, spacing: str) -> None:
    write_image(tmp_path / "a.png", image(1))
    result = run("infer", tmp_path / "a.png", "-o", tmp_path / "o", "--engine", plain_engine_path, option, spacing)
    assert result.exit_code == 2
    assert "not a radiograph's pixel spacing" in result.output or "must be a positive number" in result.output
    assert not (tmp_path / "o").exists()


# -- unsupported DICOM, named before inference ---------------------------------------------------------------------
MARK = "-7.5E+02"  # a valid DS of 8 bytes that no UID, date or time in the file can contain (they have no '-', 'E')


def _patched(path: Path, extra: dict, old: bytes, new: bytes) -> Path:
    """A DICOM file with `extra` set, then the bytes `old` replaced by `new` (as long): values pydicom won't write."""
    make_dicom(path, image(1), extra=extra)
    data = path.read_bytes()
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, new))
    return path


def _nested(path: Path, depth: int) -> Path:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    node = Dataset()
    node.CodeMeaning = "leaf"
    for _ in range(depth):
        parent = Dataset()
        parent.ReferencedImageSequence = Sequence([node])
        node = parent
    return make_dicom(path, image(1), extra={"ReferencedImageSequence": node.ReferencedImageSequence})


def _u32(path: Path) -> Path:
    import pydicom

    make_dicom(path, image(1))
    ds = pydicom.dcmread(path)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = np.zeros((24, 32), np.uint32).tobytes()
    ds.save_as(path)
    return path


RGB = (np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)
LUT = {f"{c}PaletteColorLookupTable{k}": v for c in ("Red", "Green", "Blue")
       for k, v in (("Descriptor", [256, 0, 16]), ("Data", bytes(512)))}
UNSUPPORTED = {
    "palette": (lambda p: raw_dicom(p, RGB[..., 0], "PALETTE COLOR", 8, **LUT), "PALETTE COLOR images"),
    "ybr": (lambda p: raw_dicom(p, RGB, "YBR_FULL", 8), "YBR_FULL images with 3 samples per pixel"),
    "rgb": (lambda p: raw_dicom(p, RGB, "RGB", 8), "RGB images with 3 samples per pixel"),
    "32-bit": (_u32, "32 bits stored in 32 allocated are not supported"),
    "intercept-xyz": (lambda p: _patched(p, {"RescaleIntercept": MARK}, MARK.encode(), b"xyz     "),
                      "RescaleIntercept 'xyz' is not a number"),
    "slope-nan": (lambda p: _patched(p, {"RescaleSlope": MARK}, MARK.encode(), b"NaN     "), "RescaleSlope nan is not"),
    "slope-zero": (lambda p: _patched(p, {"RescaleSlope": MARK}, MARK.encode(), b"0       "),
                   "RescaleSlope 0.0 is not"),
    "nested-100": (lambda p: _nested(p, 100), "sequences nested more than 16 deep"),
    "too-large": (lambda p: dicom_declaring(p, 46000, 46000), "image too large"),
}


@pytest.mark.parametrize("case", UNSUPPORTED, ids=list(UNSUPPORTED))
def test_unsupported_dicom_is_named_before_inference(identity_engine: Path, tmp_path: Path, case: str) -> None:
    import warnings

    make, message = UNSUPPORTED[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the values these files hold on purpose
        path = make(tmp_path / f"{case}.dcm")
        with pytest.raises(dexrt.InputError, match=message) as caught:
            read_radiograph(path)
        assert "corrupt" not in str(caught.value) and str(path) in str(caught.value)
        engine = dexrt.Engine(identity_engine)
        [outcome] = Converter(engine, tmp_path / "out").run([path])
    assert message.split(" ")[0] in outcome.error and engine.stats()["requests"] == 0


# -- image headers ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", DECLARING, ids=list(DECLARING))
def test_huge_declared_size_is_refused_from_the_header(tmp_path: Path, kind: str) -> None:
    import resource

    path = DECLARING[kind](tmp_path / f"bomb.{ {'dicom': 'dcm'}.get(kind, kind)}", 46000, 46000)
    assert path.stat().st_size < 100_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(dexrt.InputError, match=f"image too large: 46000x46000 pixels, more than the {MAX_SIDE}"):
        read_radiograph(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 << 10  # KiB: nothing decoded


def test_small_declared_images_still_read(tmp_path: Path) -> None:
    assert read_radiograph(png_declaring(tmp_path / "p.png", 3, 5)).frames.shape == (1, 3, 5)
    assert read_radiograph(tiff_declaring(tmp_path / "t.tif", 4, 8)).frames.shape == (1, 4, 8)
    for name in ("one.png", "one.tif"):  # 1x1: the smallest image, whose squeezed TIFF shape is ()
        write_image(tmp_path / name, np.full((1, 1), 7, np.uint16))
        assert read_radiograph(tmp_path / name).frames.tolist() == [[[7]]]
