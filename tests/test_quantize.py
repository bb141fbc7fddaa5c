"""INT8 engines by NNCF post-training quantization: `dexrt build-engine --precision int8 --calibration ...`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("nncf")

import dexrt  # noqa: E402
from dexrt.cli import cli  # noqa: E402
from dexrt.io.images import write_image  # noqa: E402
from dexrt.build.quantize import calibration_files  # noqa: E402


def radiograph(seed: int, size: int = 128) -> np.ndarray:
    """A smooth uint16 image with some structure: what a calibration set looks like, not white noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    image = 0.5 + 0.3 * np.sin(2 * np.pi * (rng.uniform(1, 3) * x + rng.uniform(0, 1))) * np.cos(3 * np.pi * y)
    image += 0.05 * rng.standard_normal((size, size))
    return np.clip(image * 65535, 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calibration")
    for i in range(12):
        write_image(folder / f"se_{i:02d}.png", radiograph(i))
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal `dexrt synth`-style dataset: only its train split's SE images are calibration data."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "se").mkdir()
    views = []
    for i, split in enumerate(["train"] * 6 + ["test"] * 2):
        write_image(root / "se" / f"view_{i:05d}.png", radiograph(100 + i))
        se = f"se/view_{i:05d}.png"  # calibration reads only SE: the DE files may name it too
        views.append({"id": f"view_{i:05d}", "split": split, "files": {"se": se, "bone": se, "soft": se}})
    identity = {"offset": 0.0, "scale": 1.0}
    (root / "manifest.json").write_text(json.dumps({
        "format": "dexrt-dataset", "format_version": 1, "views": views,
        "encoding": {c: identity for c in ("se", "bone", "soft")}}))
    return root


def build(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["build-engine", *args])
    return result.exit_code, result.output


def test_int8_engine_close_to_fp32(plain_onnx: Path, calibration_folder: Path, tmp_path: Path) -> None:
    code, out = build([str(plain_onnx), "--precision", "int8", "--calibration", str(calibration_folder),
                       "--size-multiple", "64", "-o", str(tmp_path / "int8.dexrt")])
    assert code == 0, out
    assert "int8" in out
    fp32 = dexrt.Engine(build_fp32(plain_onnx, tmp_path))
    int8 = dexrt.Engine(tmp_path / "int8.dexrt")
    assert int8.precision == "int8"
    m = dexrt.runtime.bundle.read_manifest(tmp_path / "int8.dexrt")
    q = m["quantization"]
    # 12 images: every fifth (3) held out to measure INT8 against FP32, 9 calibrate
    assert q["calibration_images"] == 9 and q["calibration_shapes"] == [[128, 128]]
    assert q["vs_fp32"]["images"] == 3 and set(q["vs_fp32"]["psnr_db"]) == {"bone", "soft"}
    assert all(30 < v < 90 for v in q["vs_fp32"]["psnr_db"].values())  # close, and not identical
    assert q["layers"] == {"convolutions": 1, "int8": 1}
    assert q["accuracy_control"] is None  # plain images: no truth to measure the loss against
    assert "nncf" in m["libraries"]
    image = radiograph(999, 192)  # not in the calibration set, another size
    for a, b in zip(fp32.infer(image), int8.infer(image)):
        diff = np.abs(a.astype(np.int64) - b.astype(np.int64)) / 65535
        assert diff.mean() < 0.004, diff.mean()  # INT8 is 1/256 of the activation range per step
        assert diff.max() < 0.03, diff.max()
        assert not np.array_equal(a, b)  # it did quantize


@pytest.fixture(scope="module")
def truth_dataset(plain_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset whose bone and soft images are the FP32 engine's own outputs: FP32 is then almost exact, and any
    INT8 error shows as a large loss against the truth."""
    root = tmp_path_factory.mktemp("truth")
    fp32 = dexrt.Engine(build_fp32(plain_onnx, root))
    views = []
    for i in range(10):
        se = radiograph(200 + i)
        files = {"se": f"se/v{i}.png", "bone": f"bone/v{i}.png", "soft": f"soft/v{i}.png"}
        for c, image in zip(files, (se, *fp32.infer(se))):
            (root / c).mkdir(exist_ok=True)
            write_image(root / files[c], image)
        views.append({"id": f"v{i}", "split": "train", "files": files})
    identity = {"offset": 0.0, "scale": 1.0}
    (root / "manifest.json").write_text(json.dumps({
        "format": "dexrt-dataset", "format_version": 1, "views": views,
        "encoding": {c: identity for c in ("se", "bone", "soft")}}))
    return root


def test_accuracy_control_gives_layers_back_to_float(plain_onnx: Path, truth_dataset: Path,
                                                    tmp_path: Path) -> None:
    """Over budget, the one convolution goes back to float and the engine is the FP32 engine again; within
    budget it stays INT8. Either way the manifest says what was measured and chosen."""
    fp32 = dexrt.Engine(truth_dataset / "fp32.dexrt")
    image = radiograph(999, 192)
    for budget, floated in (("0.3", True), ("1000", False)):
        out = tmp_path / f"int8-{budget}.dexrt"
        code, text = build([str(plain_onnx), "--precision", "int8", "--calibration", str(truth_dataset),
                            "--size-multiple", "64", "--max-loss-db", budget, "-o", str(out)])
        assert code == 0, text
        q = dexrt.runtime.bundle.read_manifest(out)["quantization"]
        acc = q["accuracy_control"]
        assert "no bias correction" in q["method"] and acc["views"] == 2 and acc["max_loss_db"] == float(budget)
        assert min(acc["ptq_loss_db"].values()) > 3.0  # INT8 against a truth FP32 meets to the LSB
        assert acc["candidates"] == 1 and len(acc["float_layers"]) == int(floated)
        assert q["layers"] == {"convolutions": 1, "int8": int(not floated)}
        same = [np.array_equal(a, b) for a, b in zip(fp32.infer(image), dexrt.Engine(out).infer(image))]
        if floated:
            assert acc["loss_db"] == {"bone": 0.0, "soft": 0.0} and all(same)
        else:
            assert acc["loss_db"] == acc["ptq_loss_db"] and not any(same)


def test_accuracy_control_off_is_plain_ptq(plain_onnx: Path, truth_dataset: Path, tmp_path: Path) -> None:
    code, text = build([str(plain_onnx), "--precision", "int8", "--calibration", str(truth_dataset),
                        "--size-multiple", "64", "--max-loss-db", "off", "-o", str(tmp_path / "ptq.dexrt")])
    assert code == 0, text
    q = dexrt.runtime.bundle.read_manifest(tmp_path / "ptq.dexrt")["quantization"]
    assert q["accuracy_control"] is None and "fast bias correction" in q["method"]
    for bad in ("-1", "nan", "lots"):
        code, text = build([str(plain_onnx), "--precision", "int8", "--calibration", str(truth_dataset),
                            "--max-loss-db", bad, "-o", str(tmp_path / "bad.dexrt")])
        assert code == 2 and "--max-loss-db" in text and not (tmp_path / "bad.dexrt").exists()


def test_resize_upsampling_unet_runs_every_convolution_in_int8(calibration_folder: Path, tmp_path: Path) -> None:
    """With nearest 2x + 3x3 conv upsampling there is no transposed convolution left to stay in f32."""
    torch = pytest.importorskip("torch")
    from dexrt_train.export import export_onnx
    from dexrt_train.networks import GeneratorConfig, define_G

    torch.manual_seed(0)
    config = GeneratorConfig(ngf=4, depth=6, upsample="resize", dropout=0.0)
    onnx_path = export_onnx(define_G(config), config, tmp_path / "resize.onnx")
    code, out = build([str(onnx_path), "--precision", "int8", "--calibration", str(calibration_folder),
                       "-o", str(tmp_path / "int8.dexrt")])
    assert code == 0, out
    layers = dexrt.runtime.bundle.read_manifest(tmp_path / "int8.dexrt")["quantization"]["layers"]
    assert layers["convolutions"] == 12 and layers["int8"] == 12


def build_fp32(onnx: Path, folder: Path) -> Path:
    code, out = build([str(onnx), "--size-multiple", "64", "-o", str(folder / "fp32.dexrt")])
    assert code == 0, out
    return folder / "fp32.dexrt"


def test_dataset_calibrates_on_train_split(dataset: Path) -> None:
    files = calibration_files(dataset)
    assert [f.name for f in files] == [f"view_{i:05d}.png" for i in range(6)]
    assert [f.name for f in calibration_files(dataset, limit=3)] == ["view_00000.png", "view_00002.png",
                                                                      "view_00005.png"]


def test_int8_needs_calibration(plain_onnx: Path, calibration_folder: Path, tmp_path: Path) -> None:
    code, out = build([str(plain_onnx), "--precision", "int8", "-o", str(tmp_path / "a.dexrt")])
    assert code == 2 and "--calibration" in out
    code, out = build([str(plain_onnx), "--calibration", str(calibration_folder), "-o", str(tmp_path / "b.dexrt")])
    assert code == 2 and "only used with --precision int8" in out
    code, out = build([str(plain_onnx), "--device", "gpu", "--precision", "int8", "--calibration",
                       str(calibration_folder), "-o", str(tmp_path / "c.dexrt")])
    assert code == 2 and "--device cpu" in out
    assert not any(tmp_path.iterdir())


def test_calibration_without_images(plain_onnx: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    code, out = build([str(plain_onnx), "--precision", "int8", "--calibration", str(empty),
                       "-o", str(tmp_path / "x.dexrt")])
    assert code != 0 and "no images" in out and str(empty) in out
    assert not (tmp_path / "x.dexrt").exists()


def test_dataset_without_train_views(tmp_path: Path) -> None:
    identity = {"offset": 0.0, "scale": 1.0}
    files = {c: "se/v.png" for c in ("se", "bone", "soft")}
    manifest = {"format": "dexrt-dataset", "format_version": 1, "views": [{"id": "v", "split": "test", "files": files}],
                "encoding": {c: identity for c in ("se", "bone", "soft")}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(dexrt.InputError, match="no train views"):
        calibration_files(tmp_path)


def test_calibration_refuses_a_manifest_pointing_outside_the_dataset(tmp_path: Path) -> None:
    """The one dataset reader checks containment for calibration too (it used to follow '../x.png')."""
    identity = {"offset": 0.0, "scale": 1.0}
    files = {c: "../outside.png" for c in ("se", "bone", "soft")}
    manifest = {"format": "dexrt-dataset", "format_version": 1, "views": [{"id": "v", "split": "train", "files": files}],
                "encoding": {c: identity for c in ("se", "bone", "soft")}}
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(dexrt.InputError, match="points outside the dataset folder"):
        calibration_files(tmp_path / "ds")


def test_precision_loss_is_the_mean_of_per_view_losses() -> None:
    """One view with a large error must not hide a loss every other view has (the summed MSE would read ~0 dB)."""
    from dexrt.build.quantize import psnr_loss_db

    base = np.array([[100.0, 1.0], [1e-4, 1.0], [1e-4, 1.0]])  # (views, channels)
    int8 = np.array([[100.0, 1.0], [2e-4, 1.0], [2e-4, 1.0]])  # views 2 and 3 lose 3 dB on channel 0
    loss = psnr_loss_db(int8, base)
    assert loss[0] == pytest.approx(2.0 * 10 * np.log10(2.0) / 3.0) and loss[1] == pytest.approx(0.0)
    assert 10 * np.log10(int8[:, 0].sum() / base[:, 0].sum()) < 1e-5  # what the summed errors said


def test_reference_views_of_a_normalised_engine_are_the_processed_pair(tmp_path: Path) -> None:
    """A chained dataset stores two DE pairs; a scale-free engine's truth is the one its processing shows, whichever
    way the views were listed (calibration lists them from the dataset opened plainly)."""
    from types import SimpleNamespace

    from dexrt.build.quantize import reference_views
    from dexrt.io.dataset import open_dataset
    from dexrt.runtime.contract import NORMALISATION, NORMALISED_WINDOW

    channels = ("se", "bone", "soft", "bone_processed", "soft_processed")
    views = []
    for i in range(3):
        files = {c: f"{c}/v{i}.png" for c in channels}
        for k, c in enumerate(channels):
            (tmp_path / c).mkdir(exist_ok=True)
            write_image(tmp_path / files[c], radiograph(300 + 10 * i + k, 64))
        views.append({"id": f"v{i}", "split": "train", "files": files})
    (tmp_path / "manifest.json").write_text(json.dumps({
        "format": "dexrt-dataset", "format_version": 1, "views": views, "channels": list(channels),
        "encoding": {c: {"offset": 0.0, "scale": 1.0} for c in channels}}))
    contract = SimpleNamespace(normalisation=NORMALISATION, encodings=None, channels=("bone", "soft"),
                               output_windows=(NORMALISED_WINDOW, NORMALISED_WINDOW), input_window=NORMALISED_WINDOW,
                               size_multiple=64)
    listed_plainly = reference_views(contract, tmp_path, open_dataset(tmp_path).split("train"))
    processed = reference_views(contract, tmp_path, open_dataset(tmp_path, processed=True).split("train"))
    for a, b in zip(listed_plainly.targets, processed.targets):
        np.testing.assert_array_equal(a, b)
