"""A network whose output is not (N, C, H, W) of its padded input is refused before any output is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dexrt
from helpers import build_bundle, make_plain_onnx

BROKEN = {"strided": {"stride": 2}, "batch-collapsing": {"reduce_batch": True}}


def _unchecked_bundle(onnx_path: Path, out: Path) -> Path:
    """A bundle written without the build's smoke test, as a hand-made or hostile bundle would be."""
    from dexrt.build.openvino import contract_manifest, convert_onnx, ir_payload, read_onnx_contract
    from dexrt.runtime.bundle import write_bundle

    contract = read_onnx_contract(onnx_path, size_multiple=8)
    manifest = contract_manifest(contract, onnx_path)
    manifest.update(backend="openvino", device="cpu", precision="fp32")
    write_bundle(out, manifest, ir_payload(convert_onnx(onnx_path), compress_to_fp16=False))
    return out


@pytest.mark.parametrize("kind", BROKEN, ids=list(BROKEN))
def test_build_engine_refuses_a_network_of_another_output_shape(tmp_path: Path, kind: str) -> None:
    onnx_path = make_plain_onnx(tmp_path / "broken.onnx", **BROKEN[kind])
    with pytest.raises(dexrt.EngineError, match="not .*N, C, H, W at the input's size"):
        build_bundle(onnx_path, tmp_path / "broken.dexrt", size_multiple=8)
    assert not (tmp_path / "broken.dexrt").exists()


@pytest.mark.parametrize("kind", BROKEN, ids=list(BROKEN))
@pytest.mark.parametrize("shape", [(2, 64, 64), (3, 2048, 2048)], ids=["2x64", "3x2048"])
def test_loaded_bundle_with_another_output_shape_raises_instead_of_reading_past_it(
        tmp_path: Path, kind: str, shape: tuple[int, int, int]) -> None:
    onnx_path = make_plain_onnx(tmp_path / "broken.onnx", **BROKEN[kind])
    with dexrt.Engine(_unchecked_bundle(onnx_path, tmp_path / "broken.dexrt")) as engine:
        images = np.full(shape, 1000, np.uint16)
        for _ in range(2):  # the refusal is not cached as a usable model
            with pytest.raises(dexrt.EngineError, match="network's output is"):
                engine.infer(images)
        if kind == "strided":  # a batch-collapsing network is right at batch 1, all a single submit may get
            with pytest.raises(dexrt.EngineError, match="network's output is"):
                engine.submit(images[0]).result(timeout=60)
