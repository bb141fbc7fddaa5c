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
    back = (span * bone_n, lo + span * soft_n)  # the engine's way back (cpp/include/dexrt/parts.h): bone has no offset
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

    payload = dexrt.runtime.bundle.read_bundle(normalised_engine.path).payload
    raw = dexrt.Engine.from_parts(normalised_engine.manifest, payload, network_io=True)
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
    """A fine image runs at the model's scale; its soft image is the input minus the bone image brought up to its
    size (plus the network's smooth correction), so the input's fine detail stays in the soft image."""
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
    # soft = input - bone + the network's correction brought up smoothly (cpp/include/dexrt/parts.h): what soft adds
    # to input - bone has no detail finer than the model's pixels
    residual = soft.astype(np.int64) + bone - image
    kept = (soft > 0) & (soft < 65535) & (bone > 0) & (bone < 65535)  # neither output clipped
    even, odd = (np.s_[::2, ::2], np.s_[1::2, 1::2])
    # (the random network's correction is rough: its two lattices differ by its noise, far below the pattern's 300)
    assert abs(residual[even][kept[even]].mean() - residual[odd][kept[odd]].mean()) < 30
    def checker(x: np.ndarray) -> float:
        return float(x[even][kept[even]].astype(np.int64).mean() - x[odd][kept[odd]].astype(np.int64).mean())

    # the 2-pixel pattern survived: split between the parts (the guided filter gives bone the share that follows
    # the input locally), none of it lost, most of it in soft
    assert checker(soft) + checker(bone) == pytest.approx(checker(image), abs=30)
    assert checker(soft) > 120


# -- the contract executed once, in C++ ---------------------------------------------------------------------------
REFERENCE = Path(__file__).with_name("data") / "default_engine_reference.npz"
# The engine those outputs came from: Model v2.2, the default when the reference was made (signed by an earlier
# project key, so it loads with a warning that its key is not trusted).
REFERENCE_ENGINE = Path(__file__).with_name("data") / "default_v22.dexrt"


def test_default_engine_matches_the_python_normalisation_it_replaced() -> None:
    """tests/data holds Model v2.2's outputs computed when the robust range and the maps around the network ran in
    Python (numpy percentiles, two float32 maps on each side). The C++ executor gives the same numbers."""
    ref = np.load(REFERENCE)
    engine = dexrt.Engine(REFERENCE_ENGINE)
    cases = [("u16_batch", "out_u16_batch"), ("odd_u16", "out_odd_u16"), ("f32", "out_f32")]
    for images, outputs in cases:
        got, want = np.stack(engine.infer(ref[images])), ref[outputs]
        assert got.shape == want.shape and got.dtype == want.dtype
        if want.dtype == np.uint16:  # at most 1 LSB (identical on the machine that made the reference)
            assert np.abs(got.astype(np.int64) - want).max() <= 1, images
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    submitted = np.stack(engine.submit(ref["odd_u16"]).result(timeout=60))
    assert np.abs(submitted.astype(np.int64) - ref["out_odd_u16"]).max() <= 1


def numpy_robust_range(image: np.ndarray) -> tuple[float, float]:
    """The robust range as Python computed it before it moved into the runtime (the reference for its C++ copy)."""
    import math

    h, w = image.shape
    margin_y, margin_x = (round(n * (1 - 0.8) / 2) for n in (h, w))
    core = image[margin_y : h - margin_y or None, margin_x : w - margin_x or None]
    step = max(1, int(math.ceil(math.sqrt(core.size / 65536))))
    lo, hi = (float(v) for v in np.percentile(np.asarray(core[::step, ::step], np.float64), [1.0, 99.0]))
    if not hi > lo:
        hi = lo + max(1.0, abs(lo)) * 1e-3
    return lo, hi


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (37, 61), (256, 256), (1001, 777), (2048, 1536)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_robust_range_is_numpys_to_the_bit(shape: tuple[int, int], dtype: type) -> None:
    rng = np.random.default_rng(shape[0])
    image = (rng.gamma(2.0, 9000.0, shape)).clip(0, 65535).astype(dtype)
    if dtype != np.uint16:
        image = (image / 7.3 - 200.0).astype(dtype)
    assert robust_range(image) == numpy_robust_range(image)  # exactly: the same doubles


def test_robust_range_of_a_flat_image_and_bad_values() -> None:
    assert robust_range(np.full((9, 9), 500, np.uint16)) == (500.0, 500.5)
    assert robust_range(np.zeros((4, 4), np.float32)) == (0.0, 1e-3)
    bad = np.ones((16, 16), np.float32)
    bad[8, 8] = np.nan  # a sampled pixel (the centre)
    with pytest.raises(dexrt.InputError, match="NaN or infinite"):
        robust_range(bad)


def test_images_of_one_batch_keep_their_own_windows(normalised_engine_path: Path) -> None:
    """Per-image windows travel with each image: in one batch, images of different offsets and scales each come
    back in their own grey values, as when run alone."""
    engine = dexrt.Engine(normalised_engine_path)
    a = chest_like(96, seed=4).astype(np.float32)
    b = (a * 2500.0 + 10000.0).astype(np.float32)
    bone, soft = engine.infer(np.stack([a, b]))
    for i, image in enumerate((a, b)):
        alone = engine.infer(image)
        np.testing.assert_array_equal(bone[i], alone[0])
        np.testing.assert_array_equal(soft[i], alone[1])
    np.testing.assert_allclose(bone[1], bone[0] * 2500.0, rtol=1e-3, atol=1e-2)  # bone: no offset
    np.testing.assert_allclose(soft[1], soft[0] * 2500.0 + 10000.0, rtol=1e-3, atol=1e-1)


@pytest.mark.parametrize("where", ["infer", "submit", "infer_full", "submit_full"])
def test_values_that_overflow_float32_are_an_input_error(where: str) -> None:
    """Issue 31, row 9: float32 images near +-3e38 raise InputError (no RuntimeWarning, no infinite output), whether
    the range itself is too wide or only the results overflow."""
    import warnings

    engine = dexrt.Engine()
    wide = np.full((64, 64), 3e38, np.float32)
    wide[::2] = -3e38
    spikes = np.random.default_rng(1).random((64, 64)).astype(np.float32) + 1
    spikes[10, 10], spikes[40, 7] = 3e38, -3e38
    spacing = 0.5 if where.endswith("_full") else None
    for image, message in ((wide, "too wide"), (spikes, "not finite")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(dexrt.InputError, match=message):
                if where.startswith("infer"):
                    engine.infer(image, spacing_mm=spacing)
                else:
                    engine.submit(image, spacing_mm=spacing).result(timeout=60)
