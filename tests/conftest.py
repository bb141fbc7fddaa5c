"""Shared fixtures: small ONNX generators with random weights and engine bundles built from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def make_plain_onnx(path: Path, *, out_channels: int = 2, seed: int = 0, metadata: str | None = None) -> Path:
    """A plain ONNX generator without torch: 3x3 conv (1 -> C) + tanh, dynamic N, H, W, no dexrt metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.5, (out_channels, 1, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, (out_channels,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
            helper.make_node("Tanh", ["y"], ["out"]),
        ],
        "plain_generator",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", out_channels, "H", "W"])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if metadata is not None:
        helper.set_model_props(model, {"dexrt": metadata})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def build_bundle(onnx_path: Path, out: Path, **options) -> Path:
    from dexrt.build import build_openvino, read_onnx_contract
    from dexrt.bundle import write_bundle

    precision = options.pop("precision", "fp32")
    contract = read_onnx_contract(onnx_path, **options)
    manifest, payload = build_openvino(contract, onnx_path, precision=precision)
    write_bundle(out, manifest, payload)
    return out


@pytest.fixture(scope="session")
def plain_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_plain_onnx(tmp_path_factory.mktemp("plain") / "plain.onnx")


@pytest.fixture(scope="session")
def plain_engine_path(plain_onnx: Path) -> Path:
    """A bundle of the plain conv generator, size multiple 64 (so padding is exercised on odd sizes)."""
    return build_bundle(plain_onnx, plain_onnx.with_suffix(".dexrt"), size_multiple=64)


@pytest.fixture(scope="session")
def unet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real pix2pix U-Net generator (depth 8, size multiple 256), narrow (ngf 8), random weights."""
    import torch

    from dexrt_train.export import export_onnx
    from dexrt_train.networks import GeneratorConfig, define_G

    torch.manual_seed(0)
    config = GeneratorConfig(ngf=8)
    path = tmp_path_factory.mktemp("unet") / "unet.onnx"
    export_onnx(define_G(config), config, path)
    return path


@pytest.fixture(scope="session")
def unet_engine_path(unet_onnx: Path) -> Path:
    return build_bundle(unet_onnx, unet_onnx.with_suffix(".dexrt"))
