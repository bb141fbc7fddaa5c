"""`dexrt eval` and the bundled-engine default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import dexrt
from dexrt.cli import cli
from dexrt.images import write_image


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
    manifest = {"format": "dexrt-dataset", "format_version": 1, "image_format": "png", "size": [64, 64],
                "views": views}
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
    sources = sorted(examples.glob("*.png"))
    assert len(sources) == 4
    for source in sources:
        for channel in ("bone", "soft"):
            assert (tmp_path / "out" / f"{source.stem}_{channel}.png").is_file()
    manifest = dexrt.Engine(DEFAULT_ENGINE).manifest
    assert manifest["precision"] == "fp16" and manifest["model"]["config"]["ngf"] == 16
    assert DEFAULT_ENGINE.stat().st_size <= 30e6
