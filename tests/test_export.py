"""ONNX export: names, dynamic shapes, numerics against torch eval, metadata, and the `dexrt export` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dexrt.cli import cli  # noqa: E402
from dexrt_train.checkpoint import Windows, model_hash, save_checkpoint, state_dict_bytes  # noqa: E402
from dexrt_train.export import export_onnx, read_metadata  # noqa: E402
from dexrt_train.networks import GeneratorConfig, define_G  # noqa: E402


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory: pytest.TempPathFactory):
    """A narrow generator whose BatchNorm statistics moved (as after training), exported once."""
    config = GeneratorConfig(ngf=8, seed=3)
    g = define_G(config)
    with torch.no_grad():
        g.train()(torch.randn(4, 1, 256, 256) * 0.5)
    g.eval()
    path = export_onnx(g, config, tmp_path_factory.mktemp("export") / "g.onnx")
    return g, config, path


def test_graph_interface(trained_like) -> None:
    _, _, path = trained_like
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = model.graph.input, model.graph.output

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    assert inp.name == "se" and dims(inp) == ["N", 1, "H", "W"]
    assert out.name == "de" and dims(out) == ["N", 2, "H", "W"]
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ops = {n.op_type for n in model.graph.node}
    assert "Dropout" not in ops  # exported in eval mode


@pytest.mark.parametrize("size", [(256, 256), (512, 768)], ids=["256x256", "512x768"])
@pytest.mark.parametrize("batch", [1, 3], ids=["batch1", "batch3"])
def test_onnxruntime_matches_torch_eval(trained_like, size, batch) -> None:
    g, _, path = trained_like
    x = torch.rand(batch, 1, *size, generator=torch.Generator().manual_seed(batch)) * 2 - 1
    with torch.no_grad():
        expected = g(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(["de"], {"se": x.numpy()})
    assert y.shape == (batch, 2, *size) and y.dtype == np.float32
    np.testing.assert_allclose(y, expected, atol=1e-4, rtol=0)


def test_flip_average_is_the_mean_over_the_mirror_image(trained_like, tmp_path: Path) -> None:
    g, config, plain = trained_like
    path = export_onnx(g, config, tmp_path / "flip.onnx", flip_average=True)
    assert read_metadata(path)["flip_average"] is True and "flip_average" not in read_metadata(plain)
    x = torch.rand(3, 1, 256, 512, generator=torch.Generator().manual_seed(7)) * 2 - 1
    with torch.no_grad():
        expected = ((g(x) + g(x.flip(3)).flip(3)) / 2).numpy()
        unflipped = g(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(["de"], {"se": x.numpy()})
    np.testing.assert_allclose(y, expected, atol=1e-4, rtol=0)
    (y_mirror,) = session.run(["de"], {"se": np.ascontiguousarray(x.numpy()[..., ::-1])})
    np.testing.assert_allclose(y_mirror, y[..., ::-1], atol=1e-4, rtol=0)  # mirror in, mirror out
    assert np.abs(y - unflipped).max() > 1e-3  # the generator itself is not mirror-symmetric

    from dexrt.build.openvino import contract_manifest, read_onnx_contract

    assert contract_manifest(read_onnx_contract(path), path)["model"]["flip_average"] is True
    assert "flip_average" not in contract_manifest(read_onnx_contract(plain), plain)["model"]


def test_export_restores_training_mode(tmp_path: Path) -> None:
    config = GeneratorConfig(ngf=4)
    g = define_G(config).train()
    export_onnx(g, config, tmp_path / "g.onnx")
    assert g.training


def test_metadata_round_trip(tmp_path: Path) -> None:
    config = GeneratorConfig(ngf=4, depth=6)
    g = define_G(config)
    path = export_onnx(g, config, tmp_path / "g.onnx", input_window=(10, 60000),
                       output_windows=((0, 30000), (100, 50000)), model_hash="sha256:" + "ab" * 32)
    meta = read_metadata(path)
    assert meta == {
        "format_version": 1,
        "input": {"name": "se", "window": [10.0, 60000.0]},
        "output": {"name": "de", "channels": ["bone", "soft"], "windows": [[0.0, 30000.0], [100.0, 50000.0]]},
        "size_multiple": 64,
        "model_hash": "sha256:" + "ab" * 32,
        "model": {"in_channels": 1, "out_channels": 2, "ngf": 4, "depth": 6, "norm": "batch", "dropout": 0.5,
                  "dropout_blocks": 3, "init_gain": 0.02, "seed": 0, "upsample": "transpose",
                  "soft_from_se": False, "soft_offset": 0.0, "head": 0},
    }
    # without an explicit hash: the hash of the safetensors bytes a checkpoint would hold
    export_onnx(g, config, tmp_path / "h.onnx")
    assert read_metadata(tmp_path / "h.onnx")["model_hash"] == model_hash(state_dict_bytes(g))


def test_export_rejects_bad_arguments(tmp_path: Path) -> None:
    config = GeneratorConfig(ngf=4)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(define_G(config), config, tmp_path / "g.onnx", opset=13)
    with pytest.raises(ValueError, match="output windows"):
        export_onnx(define_G(config), config, tmp_path / "g.onnx", output_windows=((0, 1),))
    assert not list(tmp_path.iterdir())


def test_cli_export(tmp_path: Path) -> None:
    config = GeneratorConfig(ngf=4)
    g = define_G(config)
    windows = Windows(input=(0.0, 50000.0), outputs=((0.0, 20000.0), (0.0, 60000.0)))
    ckpt = save_checkpoint(tmp_path / "ckpt", g, config, windows)
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    meta = read_metadata(out)
    assert printed == {"path": str(out), "metadata": meta}
    assert meta["model_hash"] == model_hash((ckpt / "model.safetensors").read_bytes())
    assert meta["input"]["window"] == [0.0, 50000.0]
    assert meta["output"]["windows"] == [[0.0, 20000.0], [0.0, 60000.0]]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 1, 256, 256), np.float32)
    with torch.no_grad():
        expected = g.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"se": x})[0], expected, atol=1e-4, rtol=0)
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "flip.onnx"), "--flip-average"])
    assert result.exit_code == 0, result.output
    assert read_metadata(tmp_path / "flip.onnx")["flip_average"] is True


def test_cli_export_bad_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "ckpt"), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    assert "Error:" in result.stderr and "config.json" in result.stderr
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("command", ["export", "train"])
@pytest.mark.parametrize("blocked", ["torch", "dexrt_train"])
def test_cli_without_torch_says_how_to_install(tmp_path: Path, monkeypatch, command: str, blocked: str) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)  # `import <blocked>` now raises ImportError
    args = [command, str(tmp_path), "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "pip install 'dexrt[train]'" in result.stderr


def test_pixel_spacing_flows_to_the_engine(tmp_path: Path) -> None:
    """Checkpoint (as `dexrt train` writes it) -> ONNX metadata -> engine manifest -> `dexrt infer` resampling."""
    from dexrt.build.openvino import read_onnx_contract
    from dexrt.pipelines.convert import Converter
    from dexrt.runtime.engine import Engine

    config = GeneratorConfig(ngf=4)
    ckpt = save_checkpoint(tmp_path / "ckpt", define_G(config), config, Windows(), extra={"pixel_spacing_mm": 1.48})
    runner = CliRunner()
    result = runner.invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "a.onnx")])
    assert result.exit_code == 0, result.output
    assert read_metadata(tmp_path / "a.onnx")["pixel_spacing_mm"] == 1.48
    result = runner.invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "b.onnx"), "--pixel-spacing", "0.7"])
    assert result.exit_code == 0, result.output
    assert read_onnx_contract(tmp_path / "b.onnx").pixel_spacing_mm == 0.7
    result = runner.invoke(cli, ["build-engine", str(tmp_path / "a.onnx"), "-o", str(tmp_path / "a.dexrt")])
    assert result.exit_code == 0, result.output
    engine = Engine(tmp_path / "a.dexrt")
    assert engine.manifest["pixel_spacing_mm"] == 1.48
    assert Converter(engine, tmp_path / "out").model_spacing_mm == 1.48
    result = runner.invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "c.onnx"), "--pixel-spacing", "-1"])
    assert result.exit_code == 2 and not (tmp_path / "c.onnx").exists()


def test_onnx_with_bad_pixel_spacing_is_refused(tmp_path: Path) -> None:
    from dexrt import ModelError
    from dexrt.build.openvino import read_onnx_contract

    config = GeneratorConfig(ngf=4)
    path = export_onnx(define_G(config), config, tmp_path / "g.onnx", pixel_spacing_mm=1.0)
    model = onnx.load(str(path))
    meta = json.loads(model.metadata_props[0].value)
    meta["pixel_spacing_mm"] = "wide"
    model.metadata_props[0].value = json.dumps(meta)
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="pixel_spacing_mm"):
        read_onnx_contract(path)
