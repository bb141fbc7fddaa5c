"""dexrt.Engine against ONNX Runtime on the same ONNX, through the value contract."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import dexrt


def reference(onnx_path: Path, images: np.ndarray, engine: dexrt.Engine) -> np.ndarray:
    """(N, H, W) -> (C, N, H, W): the value contract and mirror padding written out in numpy, run by ONNX Runtime."""
    import onnxruntime as ort

    lo, hi = engine.input_window
    n, h, w = images.shape
    m = engine.size_multiple
    hp, wp = -(-h // m) * m, -(-w // m) * m
    top, left = (hp - h) // 2, (wp - w) // 2
    x = (images.astype(np.float64) - lo) * (2.0 / (hi - lo)) - 1.0
    x = np.pad(x, ((0, 0), (top, hp - h - top), (left, wp - w - left)), mode="reflect")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    y = session.run(None, {name: x[:, None].astype(np.float32)})[0][:, :, top : top + h, left : left + w]
    out = np.empty((y.shape[1], n, h, w), np.float64)
    for c, (olo, ohi) in enumerate(engine.output_windows):
        out[c] = (y[:, c].astype(np.float64) + 1.0) * ((ohi - olo) / 2.0) + olo
    if images.dtype == np.uint16:
        out = np.clip(np.rint(out), 0, 65535)
    return out


def random_images(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth structure plus noise, spanning most of the window, like a radiograph
    base = rng.random(shape) * 50000 + 5000
    return base.astype(dtype)


@pytest.fixture(scope="module")
def unet(unet_engine_path: Path) -> dexrt.Engine:
    return dexrt.Engine(unet_engine_path)


@pytest.mark.parametrize("size", [(256, 256), (512, 768)], ids=["256x256", "512x768"])
@pytest.mark.parametrize("batch", [1, 3], ids=["batch1", "batch3"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint16], ids=["float32", "uint16"])
def test_unet_matches_onnxruntime(unet: dexrt.Engine, unet_onnx: Path, size, batch, dtype) -> None:
    images = random_images((batch, *size), dtype)
    outputs = unet.infer(images)
    expected = reference(unet_onnx, images, unet)
    assert len(outputs) == 2
    for c, out in enumerate(outputs):
        assert out.shape == images.shape and out.dtype == images.dtype
        if dtype == np.uint16:
            assert np.abs(out.astype(np.int64) - expected[c]).max() <= 1  # +-1 LSB
        else:
            lo, hi = unet.output_windows[c]
            # compare in the model's range [-1, 1]
            err = np.abs(out.astype(np.float64) - expected[c]).max() * 2.0 / (hi - lo)
            assert err <= 1e-4


@pytest.mark.parametrize("size", [(300, 411), (1, 1), (64, 64), (7, 130)], ids=str)
def test_padding_and_crop_match_reference(plain_engine_path: Path, plain_onnx: Path, size) -> None:
    engine = dexrt.Engine(plain_engine_path)
    images = random_images((2, *size), np.uint16, seed=1)
    bone, soft = engine.infer(images)
    expected = reference(plain_onnx, images, engine)
    assert np.abs(bone.astype(np.int64) - expected[0]).max() <= 1
    assert np.abs(soft.astype(np.int64) - expected[1]).max() <= 1


def test_single_image_returns_single_images(plain_engine_path: Path) -> None:
    engine = dexrt.Engine(plain_engine_path)
    image = random_images((100, 120), np.uint16)
    bone, soft = engine(image)
    assert bone.shape == soft.shape == (100, 120)
    batch_bone, _ = engine.infer(image[None])
    np.testing.assert_array_equal(bone, batch_bone[0])
    assert bone.flags.c_contiguous and soft.flags.c_contiguous


def test_non_contiguous_input_is_accepted(plain_engine_path: Path) -> None:
    engine = dexrt.Engine(plain_engine_path)
    images = random_images((2, 90, 80), np.float32)
    transposed = images.transpose(0, 2, 1)  # not C-contiguous
    expected = engine.infer(np.ascontiguousarray(transposed))
    for got, want in zip(engine.infer(transposed), expected):
        np.testing.assert_array_equal(got, want)


def test_uint16_outputs_are_clipped_and_float_outputs_are_not(tmp_path: Path) -> None:
    from helpers import build_bundle, make_plain_onnx

    # An output window narrower than the network's range pushes values past 0..65535 for uint16.
    onnx_path = make_plain_onnx(tmp_path / "m.onnx", seed=3)
    path = build_bundle(onnx_path, tmp_path / "m.dexrt", size_multiple=1,
                        output_windows=[(-30000.0, 90000.0), (-30000.0, 90000.0)])
    engine = dexrt.Engine(path)
    images = random_images((1, 64, 64), np.float32)
    bone_f, _ = engine.infer(images)
    bone_u, _ = engine.infer(images.astype(np.uint16))
    assert bone_f.min() < 0 or bone_f.max() > 65535  # float: window applied without clipping
    assert bone_u.min() >= 0 and bone_u.max() <= 65535


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((8, 8), np.int32), "uint16 or float32"),
        (np.zeros((8, 8), np.float64), "uint16 or float32"),
        (np.zeros((2, 2, 8, 8), np.uint16), r"\(H, W\) or \(N, H, W\)"),
        (np.zeros(8, np.uint16), r"\(H, W\) or \(N, H, W\)"),
        (np.zeros((0, 8), np.uint16), "empty"),
        (np.zeros((0, 8, 8), np.uint16), "empty"),
        (np.full((8, 8), np.nan, np.float32), "NaN"),
        (np.zeros((20000, 2), np.uint16), "at most"),
        ([[1, 2], [3, 4]], "numpy array"),
    ],
    ids=["int32", "float64", "rank4", "rank1", "empty-2d", "empty-batch", "nan", "huge", "list"],
)
def test_bad_images_raise_input_error(plain_engine_path: Path, images, message: str) -> None:
    engine = dexrt.Engine(plain_engine_path)
    with pytest.raises(dexrt.InputError, match=message):
        engine.infer(images)


def test_input_error_is_a_value_error_and_dexrt_error() -> None:
    assert issubclass(dexrt.InputError, ValueError)
    assert issubclass(dexrt.InputError, dexrt.DexrtError)
    assert issubclass(dexrt.BundleError, dexrt.EngineError)


def test_core_rejects_bad_arrays_with_typed_errors(plain_engine_path: Path) -> None:
    # The C++ layer checks too, for callers of dexrt._core.
    engine = dexrt.Engine(plain_engine_path)
    core = engine._core
    with pytest.raises(dexrt.InputError, match="3-D"):
        core.infer(np.zeros((4, 4), np.uint16))
    with pytest.raises(dexrt.InputError, match="uint16 or float32"):
        core.infer(np.zeros((1, 4, 4), np.int16))
    with pytest.raises(dexrt.InputError, match="positive"):
        core.infer(np.zeros((1, 0, 4), np.uint16))


def test_metadata(plain_engine_path: Path) -> None:
    engine = dexrt.Engine(plain_engine_path)
    assert engine.backend == "openvino"
    assert engine.device == "CPU"
    assert engine.channels == ("bone", "soft")
    assert engine.input_window == (0.0, 65535.0)
    assert engine.size_multiple == 64
    assert engine.precision == "fp32"
    assert "openvino" in repr(engine)


def test_bad_arguments(plain_engine_path: Path) -> None:
    with pytest.raises(ValueError, match="device"):
        dexrt.Engine(plain_engine_path, device="tpu")
    with pytest.raises(dexrt.EngineError, match="CPU"):
        dexrt.Engine(plain_engine_path, device="gpu")


def test_concurrent_calls_give_the_single_call_results(plain_engine_path: Path) -> None:
    engine = dexrt.Engine(plain_engine_path)
    inputs = [random_images((1, 96 + 32 * (i % 3), 128), np.uint16, seed=i) for i in range(12)]
    expected = [engine.infer(x) for x in inputs]
    results: dict[int, tuple[np.ndarray, ...]] = {}

    def work(i: int) -> None:
        results[i] = engine.infer(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        for got, w in zip(results[i], want):
            np.testing.assert_array_equal(got, w)


def test_fp16_weights_bundle_is_smaller_and_close(unet_onnx: Path, unet_engine_path: Path, tmp_path: Path) -> None:
    from helpers import build_bundle

    fp16 = build_bundle(unet_onnx, tmp_path / "fp16.dexrt", precision="fp16")
    assert fp16.stat().st_size < 0.6 * unet_engine_path.stat().st_size
    images = random_images((1, 256, 256), np.float32)
    a = dexrt.Engine(unet_engine_path).infer(images)
    b = dexrt.Engine(fp16).infer(images)
    for x, y in zip(a, b):
        assert np.abs(x - y).max() / 65535 < 1e-2


def test_uint16_output_is_the_float_output_rounded_half_to_even(plain_engine_path: Path) -> None:
    engine = dexrt.Engine(plain_engine_path)
    images = random_images((3, 130, 170), np.uint16, seed=4)
    as_float = engine.infer(images.astype(np.float32))
    as_uint16 = engine.infer(images)
    for f, u in zip(as_float, as_uint16):
        np.testing.assert_array_equal(np.clip(np.rint(f), 0, 65535).astype(np.uint16), u)


def test_model_cache_keeps_compiled_shapes_on_disk(plain_engine_path: Path, tmp_path: Path) -> None:
    """With cache_dir, OpenVINO writes a compiled blob per shape; a second engine reads it and computes the same."""
    cache = tmp_path / "cache"
    images = random_images((1, 100, 120), np.uint16)
    with dexrt.Engine(plain_engine_path, cache_dir=cache) as first:
        expected = first.infer(images)
    blobs = sorted(p.name for p in cache.iterdir())
    assert blobs, "no compiled model was cached"
    with dexrt.Engine(plain_engine_path, cache_dir=cache) as second:
        for a, b in zip(second.infer(images), expected):
            np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in cache.iterdir()) == blobs  # the same shape: read, not compiled again
