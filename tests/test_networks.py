"""The pix2pix generator and discriminator: shapes, layer placement, parameter counts, init, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from dexrt._errors import ModelError  # noqa: E402
from dexrt_train.checkpoint import Windows, load_checkpoint, model_hash, save_checkpoint  # noqa: E402
from dexrt_train.networks import (  # noqa: E402
    DiscriminatorConfig,
    GeneratorConfig,
    count_parameters,
    define_D,
    define_G,
)


@pytest.mark.parametrize("size", [(256, 256), (512, 768)], ids=["256x256", "512x768"])
def test_generator_shape(size: tuple[int, int]) -> None:
    g = define_G(GeneratorConfig(ngf=4)).eval()
    with torch.no_grad():
        y = g(torch.randn(2, 1, *size))
    assert y.shape == (2, 2, *size)
    assert y.abs().max() <= 1.0  # Tanh


@pytest.mark.parametrize("depth", [4, 6], ids=["depth4", "depth6"])
def test_generator_depth_sets_size_multiple(depth: int) -> None:
    config = GeneratorConfig(ngf=4, depth=depth)
    assert config.size_multiple == 2**depth
    with torch.no_grad():
        y = define_G(config).eval()(torch.randn(1, 1, 2**depth, 3 * 2**depth))
    assert y.shape == (1, 2, 2**depth, 3 * 2**depth)


def test_dropout_in_the_three_decoder_levels_above_the_innermost() -> None:
    g = define_G(GeneratorConfig(ngf=4))
    with_dropout = [i for i, level in enumerate(g.decoder) if any(isinstance(m, nn.Dropout) for m in level)]
    assert with_dropout == [4, 5, 6]  # of levels 0 (outermost) .. 7 (innermost), as in the reference unet_256
    assert all(m.p == 0.5 for m in g.modules() if isinstance(m, nn.Dropout))
    assert not any(isinstance(m, nn.Dropout) for m in g.encoder.modules())
    g1 = define_G(GeneratorConfig(ngf=4, dropout_blocks=1))
    assert [i for i, lv in enumerate(g1.decoder) if any(isinstance(m, nn.Dropout) for m in lv)] == [6]
    g0 = define_G(GeneratorConfig(ngf=4, dropout=0.0))
    assert not any(isinstance(m, nn.Dropout) for m in g0.modules())


def test_eval_mode_is_deterministic_and_batch_independent() -> None:
    g = define_G(GeneratorConfig(ngf=4, depth=6))
    x = torch.randn(3, 1, 128, 64)
    g.train()
    with torch.no_grad():
        g(x)  # moves the running statistics away from their initial values
    g.eval()
    with torch.no_grad():
        a, b, single = g(x), g(x), g(x[1:2])
    assert torch.equal(a, b)
    torch.testing.assert_close(a[1:2], single, atol=1e-6, rtol=0)


def _unet_parameters(ngf: int, c_in: int, c_out: int, depth: int = 8) -> int:
    """Parameter count of the reference unet_256 with BatchNorm, written out level by level."""
    ch = [ngf * min(2**i, 8) for i in range(depth)]
    k = 4 * 4
    n = c_in * ch[0] * k  # encoder level 0: conv, no bias (BatchNorm follows in the reference's convention)
    for i in range(1, depth):
        n += ch[i - 1] * ch[i] * k  # conv without bias
        if i < depth - 1:
            n += 2 * ch[i]  # BatchNorm weight + bias
    n += ch[depth - 1] * ch[depth - 2] * k + 2 * ch[depth - 2]  # innermost decoder: convT + BatchNorm
    for i in range(depth - 2, 0, -1):
        n += 2 * ch[i] * ch[i - 1] * k + 2 * ch[i - 1]  # convT on the concatenation + BatchNorm
    n += 2 * ch[0] * c_out * k + c_out  # outermost convT with bias
    return n


def test_parameter_count_unet_256() -> None:
    g = define_G(GeneratorConfig(ngf=64))
    assert count_parameters(g) == _unet_parameters(64, 1, 2) == 54_409_858
    # the RGB -> RGB reference network has 54.414 M parameters
    assert _unet_parameters(64, 3, 3) == 54_413_955


def test_patchgan_shape_and_parameters() -> None:
    d = define_D(DiscriminatorConfig())
    with torch.no_grad():
        y = d(torch.randn(2, 3, 256, 256))
    assert y.shape == (2, 1, 30, 30)  # 70x70 patches at stride 8
    k = 16
    expected = (3 * 64 * k + 64) + (64 * 128 * k + 2 * 128) + (128 * 256 * k + 2 * 256) \
        + (256 * 512 * k + 2 * 512) + (512 * 1 * k + 1)
    assert count_parameters(d) == expected


def test_instance_norm_option() -> None:
    g = define_G(GeneratorConfig(ngf=4, norm="instance"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    assert any(isinstance(m, nn.InstanceNorm2d) for m in g.modules())
    with torch.no_grad():
        assert g.eval()(torch.randn(1, 1, 256, 256)).shape == (1, 2, 256, 256)


def test_init_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = define_G(GeneratorConfig(ngf=4, seed=7)), define_G(GeneratorConfig(ngf=4, seed=7))
    c = define_G(GeneratorConfig(ngf=4, seed=8))
    assert torch.equal(torch.get_rng_state(), before)
    for (name, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(p, q), name
    conv = a.encoder[1][0].weight
    assert abs(conv.std().item() - 0.02) < 0.003 and abs(conv.mean().item()) < 0.003
    assert not torch.equal(conv, c.encoder[1][0].weight)


@pytest.mark.parametrize("bad", [{"norm": "group"}, {"depth": 1}, {"dropout": 1.0}, {"ngf": 0}],
                         ids=["norm", "depth", "dropout", "ngf"])
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        GeneratorConfig(**bad)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    config = GeneratorConfig(ngf=4)
    g = define_G(config)
    g.train()
    with torch.no_grad():
        g(torch.randn(2, 1, 256, 256))  # non-trivial BatchNorm running statistics
    windows = Windows(input=(100.0, 60000.0), outputs=((0.0, 40000.0), (500.0, 65535.0)))
    folder = save_checkpoint(tmp_path / "ckpt", g, config, windows)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    raw = json.loads((folder / "config.json").read_text())
    assert raw["output"] == {"name": "de", "channels": ["bone", "soft"], "windows": [[0.0, 40000.0], [500.0, 65535.0]]}

    ckpt = load_checkpoint(folder)
    assert ckpt.config == config and ckpt.windows == windows and not ckpt.generator.training
    assert ckpt.model_hash == model_hash((folder / "model.safetensors").read_bytes())
    for (name, p), q in zip(g.state_dict().items(), ckpt.generator.state_dict().values()):
        assert torch.equal(p, q), name
    # saving again replaces the folder as a whole
    save_checkpoint(folder, define_G(GeneratorConfig(ngf=4, seed=5)), GeneratorConfig(ngf=4, seed=5))
    assert load_checkpoint(folder).config.seed == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_checkpoint_errors(tmp_path: Path) -> None:
    config = GeneratorConfig(ngf=4)
    folder = save_checkpoint(tmp_path / "ckpt", define_G(config), config)
    with pytest.raises(ModelError, match="not a checkpoint folder"):
        load_checkpoint(tmp_path / "missing")
    (folder / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ModelError, match="safetensors"):
        load_checkpoint(folder)
    save_checkpoint(folder, define_G(GeneratorConfig(ngf=8)), config)  # weights of another width
    with pytest.raises(ModelError, match="do not match"):
        load_checkpoint(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="JSON"):
        load_checkpoint(folder)


def test_resize_upsampling_generator_exports_and_runs(tmp_path) -> None:
    """Nearest 2x + 3x3 conv instead of transposed convolutions: same shapes, exports to ONNX, runs in dexrt."""
    import numpy as np

    import dexrt
    from dexrt_train.export import export_onnx
    from helpers import build_bundle

    config = GeneratorConfig(ngf=4, depth=5, upsample="resize", dropout=0.0)
    G = define_G(config).eval()
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in G.modules())
    x = torch.rand(2, 1, 64, 96) * 2 - 1
    with torch.no_grad():
        y = G(x)
    assert y.shape == (2, 2, 64, 96)
    onnx_path = export_onnx(G, config, tmp_path / "resize.onnx")
    engine = dexrt.Engine(build_bundle(onnx_path, tmp_path / "resize.dexrt"))
    image = (np.random.default_rng(0).random((64, 96)) * 60000).astype(np.float32)
    bone, soft = engine.infer(image)
    assert bone.shape == image.shape and np.isfinite(soft).all()


def test_soft_from_se_is_se_minus_bone_plus_a_bounded_correction() -> None:
    offset = -2.0 / 3.0
    G = define_G(GeneratorConfig(ngf=4, depth=5, soft_from_se=True, soft_offset=offset, dropout=0.0)).eval()
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        bone, soft = G(x)[0]
    correction = soft - (x[0, 0] - bone + offset)
    assert correction.abs().max() <= 1.0 + 1e-6  # the Tanh-bounded second output
    with pytest.raises(ValueError, match="soft_from_se"):
        GeneratorConfig(out_channels=3, soft_from_se=True)
    with pytest.raises(ValueError, match="upsample"):
        GeneratorConfig(upsample="bilinear-ish")


def test_full_resolution_head(tmp_path: Path) -> None:
    """`head`: two 3x3 convolutions at the input's resolution on (SE, decoder features); exports, runs, round-trips."""
    import numpy as np

    import dexrt
    from dexrt_train.export import export_onnx
    from helpers import build_bundle

    config = GeneratorConfig(ngf=4, depth=5, upsample="resize", dropout=0.0, head=3)
    G = define_G(config).eval()
    full_res, head_inputs = [], []
    hooks = [m.register_forward_hook(lambda m, i, o: full_res.append(m) if o.shape[-2:] == (64, 96) else None)
             for m in G.modules() if isinstance(m, nn.Conv2d)]
    hooks.append(G.head[0].register_forward_hook(lambda m, i, o: head_inputs.append(i[0])))
    x = torch.rand(2, 1, 64, 96) * 2 - 1
    with torch.no_grad():
        y = G(x)
    for hook in hooks:
        hook.remove()
    assert y.shape == (2, 2, 64, 96)
    # the outermost decoder conv ends in the head's 3 features; the head's first conv takes them and the SE image
    assert [(m.in_channels, m.out_channels) for m in full_res] == [(8, 3), (1 + 3, 3), (3, 2)]
    assert torch.equal(head_inputs[0][:, :1], x)
    assert count_parameters(G) > count_parameters(define_G(GeneratorConfig(ngf=4, depth=5, upsample="resize")))

    folder = save_checkpoint(tmp_path / "ckpt", G, config)
    assert load_checkpoint(folder).config.head == 3
    raw = json.loads((folder / "config.json").read_text())
    del raw["generator"]["head"]  # a config without the key (written before the option) means no head...
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="do not match"):  # ...so the head's weights are refused
        load_checkpoint(folder)

    engine = dexrt.Engine(build_bundle(export_onnx(G, config, tmp_path / "head.onnx"), tmp_path / "head.dexrt"))
    bone, soft = engine.infer((np.random.default_rng(0).random((64, 96)) * 60000).astype(np.float32))
    assert bone.shape == (64, 96) and np.isfinite(soft).all()
    with pytest.raises(ValueError, match="head"):
        GeneratorConfig(head=-1)
