"""`dexrt eval` and the bundled-engine default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import dexrt
from dexrt.cli import cli
from dexrt.io.images import write_image


@pytest.fixture
def tiny_dataset(tmp_path: Path, plain_engine_path: Path) -> Path:
    """A dataset whose 'true' DE images are the plain engine's own outputs, with a lesion mask on one view."""
    root = tmp_path / "ds"
    for sub in ("se", "bone", "soft", "masks"):
        (root / sub).mkdir(parents=True)
    engine = dexrt.Engine(plain_engine_path)
    views = []
    for i, split in enumerate(["train", "test", "test"]):
        se = (np.random.default_rng(i).random((64, 64)) * 40000 + 10000).astype(np.uint16)
        bone, soft = engine.infer(se)
        name = f"view_{i:05d}.png"
        for sub, img in (("se", se), ("bone", bone), ("soft", soft)):
            write_image(root / sub / name, img)
        mask = None
        if i == 2:
            m = np.zeros((64, 64), np.uint16)
            m[20:30, 20:30] = 65535
            write_image(root / "masks" / name, m)
            mask = f"masks/{name}"
        views.append({"id": name[:-4], "split": split, "mask": mask,
                      "files": {"se": f"se/{name}", "bone": f"bone/{name}", "soft": f"soft/{name}"}})
    identity = {"offset": 0.0, "scale": 1.0}  # the plain engine records no encoding: values are what it makes
    manifest = {"format": "dexrt-dataset", "format_version": 1, "image_format": "png", "size": [64, 64],
                "encoding": {c: identity for c in ("se", "bone", "soft")}, "views": views}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_eval_of_the_engine_that_made_the_targets_is_perfect(tiny_dataset: Path, plain_engine_path: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = CliRunner().invoke(cli, ["eval", str(tiny_dataset), "--engine", str(plain_engine_path),
                                      "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["views"] == 2 and report["split"] == "test"
    m = report["metrics"]
    assert m["bone/ssim"] == pytest.approx(1.0) and m["soft/ssim"] == pytest.approx(1.0)
    assert m["bone/mae"] == 0 and m["soft/psnr"] == float("inf")
    assert m["cnr/soft_pred_over_true"] == pytest.approx(1.0)
    assert json.loads((out / "metrics.json").read_text())["views"] == 2
    assert (out / "panel.png").read_bytes()[:4] == b"\x89PNG"


def physical_dataset(root: Path, engine: dexrt.Engine, window: dict[str, tuple[float, float]]) -> Path:
    """Three test views of physical SE and the engine's physical outputs, stored in the given windows."""
    from dexrt.runtime.contract import Encoding

    enc = {c: Encoding.from_window(*w) for c, w in window.items()}
    views = []
    for i in range(3):
        rng = np.random.default_rng(i)
        se = 0.5 + 6.0 * rng.random((64, 64))  # attenuation
        bone, soft = engine.infer(engine.input_encoding.stored_float(se))
        images = {"se": se, "bone": engine.output_encodings[0].physical(bone),
                  "soft": engine.output_encodings[1].physical(soft)}
        files = {}
        for c, image in images.items():
            files[c] = f"{c}/v{i}.png"
            (root / c).mkdir(parents=True, exist_ok=True)
            write_image(root / files[c], enc[c].stored(image)[0])
        views.append({"id": f"v{i}", "split": "test", "mask": None, "files": files})
    manifest = {"format": "dexrt-dataset", "format_version": 1, "image_format": "png", "size": [64, 64],
                "encoding": {c: e.as_manifest() for c, e in enc.items()}, "views": views}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_same_views_in_two_storage_windows_score_the_same(tmp_path: Path) -> None:
    """Eval converts each dataset's stored values through its own encoding, and feeds the engine in the engine's."""
    from dexrt.runtime.contract import fixed_encoding
    from dexrt.evaluation.evaluate import evaluate
    from helpers import build_bundle, make_plain_onnx

    enc = [fixed_encoding(c).as_manifest() for c in ("se", "bone", "soft")]
    meta = json.dumps({"input": {"quantity": "se", "encoding": enc[0]}, "output": {"encodings": enc[1:]}})
    onnx_path = make_plain_onnx(tmp_path / "phys.onnx", metadata=meta)
    engine = dexrt.Engine(build_bundle(onnx_path, tmp_path / "phys.dexrt", size_multiple=64))
    assert engine.input_encoding == fixed_encoding("se")
    assert engine.manifest["output"]["encodings"] == enc[1:]
    narrow = physical_dataset(tmp_path / "a", engine, {"se": (-1.0, 9.0), "bone": (-4.0, 12.0),
                                                       "soft": (-8.0, 56.0)})
    wide = physical_dataset(tmp_path / "b", engine, {"se": (-3.0, 20.0), "bone": (-9.0, 20.0),
                                                     "soft": (-20.0, 90.0)})
    a, b = (evaluate(engine, d)["metrics"] for d in (narrow, wide))
    for c in ("bone", "soft"):
        assert a[f"{c}/psnr"] > 60 and b[f"{c}/psnr"] > 60  # only 16-bit storage separates them from the truth
        assert abs(a[f"{c}/ssim"] - b[f"{c}/ssim"]) <= 0.002
    assert abs(a["bone_suppression"] - b["bone_suppression"]) <= 0.002


def test_eval_refuses_a_folder_that_is_not_a_dataset(tmp_path: Path, plain_engine_path: Path) -> None:
    result = CliRunner().invoke(cli, ["eval", str(tmp_path), "--engine", str(plain_engine_path)])
    assert result.exit_code == 1
    assert "not a dexrt dataset" in result.output


def test_missing_split(tiny_dataset: Path, plain_engine_path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["eval", str(tiny_dataset), "--engine", str(plain_engine_path),
                                      "--split", "val"])
    assert result.exit_code == 1 and "no views in split 'val'" in result.output
    assert not (tmp_path / "dexrt-eval").exists()  # a failed run leaves no (default) output folder behind


def test_infer_uses_the_bundled_default_model(tmp_path: Path) -> None:
    from dexrt.models import DEFAULT_ENGINE

    examples = Path(__file__).parent.parent / "examples"
    result = CliRunner().invoke(cli, ["infer", str(examples), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"Using the bundled default model {DEFAULT_ENGINE}" in result.stderr
    # README command 1 runs clean: frontal DX files with their pixel spacing, nothing to warn about
    assert "Warning" not in result.output and "Converted 3 of 3 images" in result.output
    sources = sorted(examples.glob("*.dcm"))
    assert [s.name for s in sources] == ["chest_ap.dcm", "chest_ap_detector.dcm", "chest_pa.dcm"]
    for source in sources:
        for channel in ("bone", "soft"):
            assert (tmp_path / "out" / f"{source.stem}_{channel}.dcm").is_file()
    manifest = dexrt.Engine(DEFAULT_ENGINE).manifest
    assert manifest["precision"] == "fp16" and manifest["model"]["config"]["ngf"] == 16
    assert DEFAULT_ENGINE.stat().st_size <= 30e6


def test_engine_without_a_path_is_the_bundled_default_model() -> None:
    from dexrt.models import DEFAULT_ENGINE

    with dexrt.Engine() as engine:
        assert engine.path == DEFAULT_ENGINE and engine.channels == ("bone", "soft")
        # scale-free: each image is taken in its own grey values, so no stored encoding is assumed
        assert engine.normalised and engine.input_encoding is None
        assert engine.manifest["model"]["config"]["upsample"] == "resize"


def test_the_shipped_checkpoint_is_the_default_engine_s_weights() -> None:
    """`dexrt train --init default` fine-tunes exactly the weights the bundled engine was exported from."""
    pytest.importorskip("torch")
    from dexrt.models import DEFAULT_CHECKPOINT, DEFAULT_ENGINE
    from dexrt_train.checkpoint import load_checkpoint

    start = load_checkpoint(DEFAULT_CHECKPOINT)
    assert start.model_hash == dexrt.Engine(DEFAULT_ENGINE).manifest["model"]["model_hash"]
    assert start.raw_config["normalisation"] is not None and start.config.soft_from_se
