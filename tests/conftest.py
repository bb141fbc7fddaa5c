"""Shared fixtures: small ONNX generators with random weights and engine bundles built from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import build_bundle, make_plain_onnx


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
