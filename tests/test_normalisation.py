"""The scale-free input of a normalised engine (dexrt.runtime.contract.NORMALISATION): any offset and scale in, the same
decomposition out, in the input's own grey values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dexrt
from dexrt.runtime.contract import (
    NORMALISATION,
    NORMALISED_WINDOW,
    areal_densities,
    denormalise,
    normalise,
    normalised_parts,
    robust_range,
    view_normalisation,
)
from helpers import build_bundle, make_plain_onnx


def chest_like(size: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    body = np.clip(1.0 - ((x - 0.5) / 0.45) ** 2 - ((y - 0.5) / 0.48) ** 2, 0, None) ** 0.5
    return (2.0 + 4.0 * body + 0.05 * rng.standard_normal((size, size))).astype(np.float64)


def test_robust_range_ignores_collimation_and_markers() -> None:
    image = chest_like()
    lo, hi = robust_range(image)
    marked = image.copy()
    marked[:8, :] = 60.0  # a collimation edge
    marked[-10:, -10:] = -50.0  # a burnt-in marker in a corner
    assert robust_range(marked) == pytest.approx((lo, hi))


@pytest.mark.parametrize(("scale", "offset"), [(1.0, 0.0), (3000.0, 5000.0), (0.01, -7.0)])
def test_normalisation_is_affine_invariant(scale: float, offset: float) -> None:
    image = chest_like()
    base, lo, span = normalise(image)
    moved, lo2, span2 = normalise(image * scale + offset)
    np.testing.assert_allclose(moved, base, atol=1e-5)
    assert lo2 == pytest.approx(lo * scale + offset) and span2 == pytest.approx(span * scale)
    bone, soft = denormalise([base * 0.2, base * 0.8], ("bone", "soft"), lo2, span2, np.dtype(np.float32))
    ref_bone, ref_soft = denormalise([base * 0.2, base * 0.8], ("bone", "soft"), lo, span, np.dtype(np.float32))
    np.testing.assert_allclose(bone, ref_bone * scale, rtol=1e-5, atol=1e-5 * scale)  # bone: no offset
    np.testing.assert_allclose(soft, ref_soft * scale + offset, rtol=1e-5, atol=1e-5 * scale)


def test_normalised_targets_come_back_through_denormalise_as_areal_densities() -> None:
    """What the trainer trains on (`normalised_parts`) and what the runtime gives back (`denormalise`) are the two
    ends of one map: the targets, denormalised and divided by the view's coefficients, are the areal densities."""
    rng = np.random.default_rng(3)
    soft = 10.0 + 8.0 * chest_like(seed=1)
    bone = np.clip(rng.normal(1.0, 0.6, soft.shape), 0, None)
    se = 0.05 + 0.29 * bone + 0.2 * soft + 0.002 * rng.standard_normal(soft.shape)  # nearly the linear mix
    norm = view_normalisation(se, bone, soft)
    lo, span, *coefficients = norm
    assert (lo, lo + span) == pytest.approx(robust_range(se))
    assert coefficients == pytest.approx([0.05, 0.29, 0.2], abs=0.01)
    se_n, bone_n, soft_n = normalised_parts(se, bone, soft, norm)
    np.testing.assert_allclose(se_n, normalise(se)[0], atol=1e-5)  # the same input the runtime makes
    assert np.abs(bone_n + soft_n - se_n).max() < 0.01  # bone + soft = SE in the engine's units
    back = denormalise([bone_n, soft_n], ("bone", "soft"), lo, span, np.dtype(np.float64))
    got_bone, got_soft = areal_densities(*back, tuple(coefficients))
    np.testing.assert_allclose(got_bone, bone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_soft, soft, rtol=1e-5)
    crop = (slice(20, 60), slice(30, 90))  # a crop keeps the whole view's map
    np.testing.assert_allclose(normalised_parts(se[crop], bone[crop], soft[crop], norm)[1], bone_n[crop])


@pytest.fixture(scope="module")
def normalised_engine(tmp_path_factory: pytest.TempPathFactory) -> dexrt.Engine:
    meta = json.dumps({"input": {"window": list(NORMALISED_WINDOW), "quantity": "se", "normalisation": NORMALISATION},
                       "output": {"windows": [list(NORMALISED_WINDOW)] * 2}})
    folder = tmp_path_factory.mktemp("normalised")
    onnx_path = make_plain_onnx(folder / "n.onnx", metadata=meta)
    return dexrt.Engine(build_bundle(onnx_path, folder / "n.dexrt", size_multiple=64))


def test_normalised_engine_outputs_follow_the_input_scale(normalised_engine: dexrt.Engine) -> None:
    """A processed image of another window gives the same decomposition in its own grey values."""
    assert normalised_engine.normalised
    assert normalised_engine.manifest["input"]["normalisation"] == NORMALISATION
    image = chest_like().astype(np.float32)
    bone, soft = normalised_engine.infer(image)
    bone2, soft2 = normalised_engine.infer(image * 1500.0 + 900.0)
    np.testing.assert_allclose(bone2, bone * 1500.0, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(soft2, soft * 1500.0 + 900.0, rtol=1e-3, atol=1e-2)


def test_normalised_engine_uint16_and_submit(normalised_engine: dexrt.Engine) -> None:
    image = np.clip(chest_like() * 8000, 0, 65535).astype(np.uint16)
    bone, soft = normalised_engine.infer(image)
    assert bone.dtype == soft.dtype == np.uint16 and bone.shape == image.shape
    as_float = normalised_engine.infer(image.astype(np.float32))
    # the same values, rounded once from float64 (the float32 result is itself rounded to float32 first)
    assert np.abs(soft.astype(np.int64) - np.clip(np.rint(as_float[1]), 0, 65535)).max() <= 1
    submitted = normalised_engine.submit(image).result(timeout=60)
    np.testing.assert_array_equal(submitted[0], bone)
    np.testing.assert_array_equal(submitted[1], soft)


def test_network_io_leaves_the_normalisation_to_the_caller(normalised_engine: dexrt.Engine) -> None:
    """Benchmarks and accuracy checks feed network values, which are normalised already: the network-io engine
    must not normalise them again (it then agrees with the ONNX model run directly)."""
    import onnxruntime as ort

    raw = dexrt.Engine.from_parts(normalised_engine.manifest, dexrt.runtime.bundle.read_bundle(normalised_engine.path).payload,
                                  network_io=True)
    assert not raw.normalised
    x = np.random.default_rng(3).uniform(-1, 1, (1, 64, 64)).astype(np.float32)
    onnx_path = normalised_engine.path.with_suffix(".onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x[:, None]})[0][0]
    np.testing.assert_allclose(np.stack(raw.infer(x[0])), want, atol=2e-5)


def test_a_normalisation_this_dexrt_does_not_apply_is_refused(tmp_path: Path) -> None:
    meta = json.dumps({"input": {"normalisation": {"method": "histogram-equalise"}}})
    onnx_path = make_plain_onnx(tmp_path / "x.onnx", metadata=meta)
    with pytest.raises(dexrt.ModelError, match="normalisation"):
        build_bundle(onnx_path, tmp_path / "x.dexrt", size_multiple=64)


def test_soft_keeps_the_inputs_resolution_when_resampled(tmp_path: Path) -> None:
    """A fine image runs at the model's scale; its soft image is the input minus the upsampled bone image, so
    the input's fine detail stays in the soft image."""
    from dexrt.pipelines.convert import Converter
    from dexrt.io.images import read_image, write_image

    meta = json.dumps({"input": {"window": list(NORMALISED_WINDOW), "quantity": "se", "normalisation": NORMALISATION},
                       "output": {"windows": [list(NORMALISED_WINDOW)] * 2}, "pixel_spacing_mm": 1.5})
    onnx_path = make_plain_onnx(tmp_path / "n.onnx", metadata=meta)
    engine = dexrt.Engine(build_bundle(onnx_path, tmp_path / "n.dexrt", size_multiple=64))
    image = np.clip(chest_like(384) * 8000, 0, 65535).astype(np.uint16)
    image[::2, ::2] += 300  # detail finer than the model's pixels
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "fine.png", image)
    [outcome] = Converter(engine, tmp_path / "out", input_spacing_mm=0.5).run([tmp_path / "in" / "fine.png"])
    assert outcome.ok, outcome.error
    assert outcome.geometry["resampled"] and outcome.geometry["working_size"] == [128, 128]
    bone, soft = read_image(tmp_path / "out" / "fine_bone.png"), read_image(tmp_path / "out" / "fine_soft.png")
    assert bone.shape == soft.shape == image.shape
    np.testing.assert_array_equal(soft.astype(np.int64), np.clip(image.astype(np.int64) - bone, 0, 65535))
    checker = soft[::2, ::2].astype(np.int64).mean() - soft[1::2, 1::2].astype(np.int64).mean()
    assert checker > 200  # the 2-pixel pattern survived in the soft image
