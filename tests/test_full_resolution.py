"""The full-resolution call (`Engine.infer/submit(frame, spacing_mm=...)`): a frame at its own size and pixel
spacing runs at the model's spacing and every output comes back at the frame's size, brought up by a guided filter
that follows the frame's own edges; soft = input - bone (+ the network's smooth correction) for a normalised
engine. Sizes, dtypes, spacing given or not, odd sizes, several frames, and `dexrt infer` through the same path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dexrt
from dexrt import _core
from helpers import build_bundle, make_linear_onnx, normalised_metadata


def chest(shape: tuple[int, int], seed: int = 0, noise: float = 300.0) -> np.ndarray:
    """A smooth body with sharp-edged 'ribs' and fine noise, in uint16 grey values."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    body = np.clip(1.0 - ((x / w - 0.5) / 0.45) ** 2 - ((y / h - 0.5) / 0.48) ** 2, 0, None) ** 0.5
    ribs = ((np.sin(y / h * 40.0 + x / w * 3.0) > 0.6) * (body > 0.2)).astype(np.float64)
    image = 8000.0 + 20000.0 * body + 6000.0 * ribs + noise * rng.standard_normal(shape)
    return np.clip(image, 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def engine(normalised_engine_path: Path) -> dexrt.Engine:
    return dexrt.Engine(normalised_engine_path)  # normalised (bone, soft), trained at 1.5 mm


@pytest.fixture(scope="module")
def half_engine_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A normalised engine whose bone and soft are each exactly half of its input, trained at 1.0 mm."""
    folder = tmp_path_factory.mktemp("half")
    onnx_path = make_linear_onnx(folder / "half.onnx", [0.5, 0.5], [-1.0 / 3.0] * 2,
                                 metadata=normalised_metadata(pixel_spacing_mm=1.0))
    return build_bundle(onnx_path, folder / "half.dexrt", size_multiple=16)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32], ids=["uint16", "float32"])
@pytest.mark.parametrize("shape", [(300, 300), (301, 257), (97, 450)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_outputs_come_back_at_the_frames_size(engine: dexrt.Engine, shape: tuple[int, int], dtype: type) -> None:
    frame = chest(shape).astype(dtype)
    bone, soft = engine.infer(frame, spacing_mm=0.5)
    assert bone.shape == soft.shape == shape and bone.dtype == soft.dtype == dtype
    assert engine.stats()["pre_us"]["count"] > 0
    if dtype == np.float32:
        assert np.isfinite(bone).all() and np.isfinite(soft).all()


def test_without_a_spacing_or_within_tolerance_the_frame_runs_as_before(engine: dexrt.Engine) -> None:
    frame = chest((128, 128))
    plain = np.stack(engine.infer(frame))
    np.testing.assert_array_equal(np.stack(engine.infer(frame, spacing_mm=None)), plain)
    # 1.5 mm * (1 - 0.4 %): the working size rounds to the frame's own, which runs bit for bit as without spacing
    np.testing.assert_array_equal(np.stack(engine.infer(frame, spacing_mm=1.494)), plain)
    np.testing.assert_array_equal(np.stack(engine.submit(frame, spacing_mm=1.494).result(timeout=60)), plain)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32], ids=["uint16", "float32"])
def test_submit_and_several_frames_give_the_single_frame_results(engine: dexrt.Engine, dtype: type) -> None:
    frames = np.stack([chest((211, 190), seed=s) for s in range(3)]).astype(dtype)
    frames[1] = (frames[1] * 0.5 + 3000).astype(dtype)  # another window: each frame keeps its own
    together = np.stack(engine.infer(frames, spacing_mm=(0.5, 0.55)))  # (C, N, H, W)
    for i, frame in enumerate(frames):
        alone = np.stack(engine.infer(frame, spacing_mm=(0.5, 0.55)))
        np.testing.assert_array_equal(together[:, i], alone)
        np.testing.assert_array_equal(np.stack(engine.submit(frame, (0.5, 0.55)).result(timeout=60)), alone)


def test_a_scalar_spacing_is_square_pixels(engine: dexrt.Engine) -> None:
    frame = chest((150, 160))
    np.testing.assert_array_equal(np.stack(engine.infer(frame, spacing_mm=0.6)),
                                  np.stack(engine.infer(frame, spacing_mm=(0.6, 0.6))))


def test_soft_is_the_input_minus_bone(half_engine_path: Path) -> None:
    """An engine whose parts are each half the input: at full size bone follows the frame and bone + soft is the
    frame itself (the correction of such an engine is zero)."""
    engine = dexrt.Engine(half_engine_path)
    frame = chest((400, 360)).astype(np.float32)
    bone, soft = engine.infer(frame, spacing_mm=0.25)
    np.testing.assert_allclose(bone + soft, frame, atol=0.05)
    clean = chest((400, 360), noise=0.0).astype(np.float32)  # (noise below the filter's epsilon stays in soft)
    bone, soft = engine.infer(clean, spacing_mm=0.25)
    lo, _ = _core.robust_range(_core.resize(clean, 100, 90))
    inside = (slice(8, -8), slice(8, -8))
    assert np.sqrt(np.mean((bone - 0.5 * (clean - lo))[inside] ** 2)) < 0.01 * float(clean.max() - lo)


def test_guided_upsampling_keeps_edges_that_bicubic_blurs(half_engine_path: Path) -> None:
    """The guided filter brings the bone image up along the frame's own edges: against the truth (half the frame)
    it errs far less than plain bicubic upsampling of the working-size bone image."""
    frame = chest((480, 480)).astype(np.float32)
    truth = None
    errors = {}
    for upsampling in ("guided", "bicubic"):
        engine = dexrt.Engine(half_engine_path, upsampling=upsampling)
        bone, soft = engine.infer(frame, spacing_mm=0.25)  # 4x finer than the model
        if truth is None:
            lo, _ = _core.robust_range(_core.resize(frame, 120, 120))
            truth = 0.5 * (frame - lo)
        errors[upsampling] = float(np.sqrt(np.mean((bone - truth)[16:-16, 16:-16] ** 2)))
    assert errors["guided"] < 0.5 * errors["bicubic"], errors


@pytest.mark.parametrize("upsampling", ["guided", "bicubic"])
def test_a_flat_frame_stays_flat(half_engine_path: Path, upsampling: str) -> None:
    engine = dexrt.Engine(half_engine_path, upsampling=upsampling)
    bone, soft = engine.infer(np.full((203, 155), 20000, np.uint16), spacing_mm=0.3)
    assert bone.min() == bone.max() and soft.min() == soft.max() and int(bone[0, 0]) + int(soft[0, 0]) == 20000


def test_a_frame_coarser_than_the_model_comes_back_at_its_size(engine: dexrt.Engine) -> None:
    frame = chest((40, 52))
    bone, soft = engine.infer(frame, spacing_mm=(3.0, 2.0))  # the network runs at 80 x 69
    assert bone.shape == soft.shape == frame.shape


def test_spacing_errors(engine: dexrt.Engine, plain_engine_path: Path) -> None:
    frame = chest((64, 64))
    with pytest.raises(dexrt.InputError, match="more than the 4096 per side"):
        engine.infer(frame, spacing_mm=200.0)
    with pytest.raises(dexrt.InputError, match="positive and finite"):
        engine.infer(frame, spacing_mm=-0.5)
    with pytest.raises(ValueError, match="number or"):
        engine.infer(frame, spacing_mm="0.5")  # type: ignore[arg-type]
    assert isinstance(engine.submit(frame, spacing_mm=float("nan")).exception(timeout=60), dexrt.InputError)
    plain = dexrt.Engine(plain_engine_path)  # records no training spacing
    assert plain.model_spacing_mm is None and engine.model_spacing_mm == 1.5
    with pytest.raises(dexrt.EngineError, match="no training pixel spacing"):
        plain.infer(frame, spacing_mm=0.5)
    bone, soft = plain.infer(frame, spacing_mm=0.5, model_spacing_mm=1.0)  # given: a plain engine's parts
    assert bone.shape == frame.shape  # each brought up by the guided filter on its own


def test_resize_averages_areas_and_interpolates() -> None:
    image = np.arange(64, dtype=np.float32).reshape(8, 8)
    half = _core.resize(image, 4, 4)
    np.testing.assert_allclose(half, image.reshape(4, 2, 4, 2).mean(axis=(1, 3)), rtol=1e-6)
    third = _core.resize(np.full((9, 7), 1234, np.uint16), 3, 2)
    np.testing.assert_allclose(third, 1234.0, rtol=1e-6)
    ramp = np.tile(np.arange(10, dtype=np.float32), (3, 1))
    up = _core.resize(ramp, 3, 20)  # linear, pixel-centre aligned: the ramp stays a ramp inside
    np.testing.assert_allclose(np.diff(up[0, 1:-1]), 0.5, atol=1e-5)


def test_dexrt_infer_writes_what_the_engine_call_returns(normalised_engine_path: Path, tmp_path: Path) -> None:
    """`dexrt infer` (and the DICOM node and Ray, which convert with the same Converter) go through the engine's
    full-resolution call: the files hold exactly what `engine.infer(frame, spacing_mm=...)` returns."""
    from dexrt.io.images import read_image, write_image
    from dexrt.pipelines.convert import Converter

    frame = chest((320, 300))
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "cxr.png", frame)
    engine = dexrt.Engine(normalised_engine_path)
    [outcome] = Converter(engine, tmp_path / "out", input_spacing_mm=0.5).run([tmp_path / "in" / "cxr.png"])
    assert outcome.ok, outcome.error
    assert outcome.geometry["resampled"] and outcome.geometry["working_size"] == [107, 100]
    bone, soft = engine.infer(frame, spacing_mm=0.5)
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "cxr_bone.png"), bone)
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "cxr_soft.png"), soft)


@pytest.fixture(scope="module")
def spaced_engine_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plain conv generator (not normalised) trained at 1.0 mm."""
    import json

    from helpers import make_plain_onnx

    folder = tmp_path_factory.mktemp("spaced")
    onnx_path = make_plain_onnx(folder / "spaced.onnx", metadata=json.dumps({"pixel_spacing_mm": 1.0}))
    return build_bundle(onnx_path, folder / "spaced.dexrt", size_multiple=16)


def write_dataset(root: Path, spacing_mm: float | None) -> Path:
    """Two test views of 200 x 180 stored with identity encodings, the pixel spacing in the manifest when given."""
    import json

    from dexrt.io.images import write_image

    views = []
    for i in range(2):
        name = f"view_{i:05d}.png"
        se = chest((200, 180), seed=i)
        for sub, img in (("se", se), ("bone", se // 3), ("soft", se - se // 3)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            write_image(root / sub / name, img)
        views.append({"id": name[:-4], "split": "test", "mask": None,
                      "files": {c: f"{c}/{name}" for c in ("se", "bone", "soft")}})
    identity = {"offset": 0.0, "scale": 1.0}
    manifest = {"format": "dexrt-dataset", "format_version": 1, "image_format": "png", "size": [200, 180],
                "encoding": {c: identity for c in ("se", "bone", "soft")}, "views": views}
    if spacing_mm is not None:
        manifest["geometry"] = {"pixel_at_iso_mm": spacing_mm}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_eval_at_full_resolution_scores_what_the_engine_call_returns(spaced_engine_path: Path,
                                                                    tmp_path: Path) -> None:
    """`dexrt eval --full-resolution` scores each view at its own size through the same call as `dexrt infer`."""
    from dexrt.evaluation.evaluate import predicted_views
    from dexrt.io.images import read_image

    dataset = write_dataset(tmp_path / "ds", 0.25)
    engine = dexrt.Engine(spaced_engine_path)
    for i, (se, true, pred, _) in enumerate(predicted_views(engine, dataset, full_resolution=True)):
        frame = read_image(dataset / "se" / f"view_{i:05d}.png")
        bone, soft = engine.infer(frame, spacing_mm=0.25)  # the network at 50 x 45, the outputs at 200 x 180
        assert pred["bone"].shape == true["bone"].shape == (200, 180)
        np.testing.assert_array_equal(pred["bone"], bone)
        np.testing.assert_array_equal(pred["soft"], soft)


def test_eval_cli_full_resolution(spaced_engine_path: Path, tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from dexrt.cli import cli

    dataset = write_dataset(tmp_path / "ds", 0.25)
    for upsampling in ("guided", "bicubic"):
        result = CliRunner().invoke(cli, ["eval", str(dataset), "--engine", str(spaced_engine_path), "-o",
                                          str(tmp_path / upsampling), "--json", "--full-resolution",
                                          "--upsampling", upsampling])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["views"] == 2 and report["full_resolution"]["upsampling"] == upsampling
        assert report["full_resolution"]["model_spacing_mm"] == 1.0
    unspaced = write_dataset(tmp_path / "unspaced", None)
    result = CliRunner().invoke(cli, ["eval", str(unspaced), "--engine", str(spaced_engine_path), "-o",
                                      str(tmp_path / "x"), "--full-resolution"])
    assert result.exit_code != 0 and "records no pixel spacing" in result.output


@pytest.mark.parametrize("frames", [0, 3], ids=["single-frame DX", "multi-frame XA"])
def test_the_dicom_node_converts_through_the_same_call(normalised_engine_path: Path, tmp_path: Path,
                                                       frames: int) -> None:
    """A DICOM radiograph with its ImagerPixelSpacing, converted as `dexrt serve` converts what it receives (its
    Converter, its options): every frame holds what the engine's full-resolution call returns for it."""
    pytest.importorskip("pynetdicom")
    import pydicom

    from dexrt.io.images import read_radiograph
    from dexrt.pipelines.convert import Converter, ConvertOptions
    from serve_helpers import DX, XA, radiograph

    ds = radiograph(240, sop_class=XA if frames else DX, frames=frames)
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.save_as(tmp_path / "in.dcm", enforce_file_format=True)
    engine = dexrt.Engine(normalised_engine_path)
    converter = Converter(engine, tmp_path / "out", ConvertOptions(jobs=2, strict=False, input_spacing_mm=None))
    outcome = converter.convert(tmp_path / "in.dcm")
    assert outcome.ok, outcome.error
    spacing = tuple(outcome.geometry["spacing_mm"])  # at the patient: the detector's 0.5 mm over the magnification
    assert outcome.geometry["resampled"] and spacing[0] < 0.5
    source = read_radiograph(tmp_path / "in.dcm")  # the frames as dexrt reads them, and the way back to stored values
    bone, soft = engine.infer(source.frames, spacing_mm=spacing)
    assert source.dicom is not None
    for name, want in (("bone", bone), ("soft", soft)):
        written = pydicom.dcmread(tmp_path / "out" / f"in_{name}.dcm").pixel_array
        np.testing.assert_array_equal(written if frames else written[np.newaxis], source.dicom.from_engine(want))
