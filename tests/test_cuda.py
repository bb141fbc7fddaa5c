"""The NVIDIA path: CUDA pre/post kernels against the CPU pre/post bit for bit (`gpu` marker), and everything
about it that can be checked without a GPU: what _core reports, the FP16 ONNX conversion, the TensorRT build's
errors and options, and the refusal of plans built for another GPU or TensorRT release."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dexrt
from dexrt import _core
from dexrt._errors import BundleError, EngineError, MissingExtraError
from dexrt.runtime.gpu import GpuRuntime, check_plan, gpu_available, same_release

from conftest import gpu_unavailable_reason


# -- CPU reference bindings ------------------------------------------------------------------------------------
def numpy_preprocess(images: np.ndarray, window: tuple[float, float], m: int) -> np.ndarray:
    """The value contract in numpy float32 (a rounded multiply, then a rounded add) and reflect padding."""
    lo, hi = np.float32(window[0]), np.float32(window[1])
    scale = np.float32(2.0) / (hi - lo)
    offset = np.float32(-1.0) - lo * scale
    n, h, w = images.shape
    hp, wp = -(-h // m) * m, -(-w // m) * m
    top, left = (hp - h) // 2, (wp - w) // 2
    x = images.astype(np.float32) * scale + offset
    pad = ((0, 0), (top, hp - h - top), (left, wp - w - left))
    return np.pad(x, pad, mode="reflect")[:, np.newaxis]


@pytest.mark.parametrize("dtype", [np.uint16, np.float32], ids=["uint16", "float32"])
def test_cpu_preprocess_binding_matches_numpy(dtype: type) -> None:
    rng = np.random.default_rng(1)
    images = (rng.random((2, 37, 50)) * 60000).astype(dtype)
    got = _core.prepost.preprocess(images, (100.0, 60000.0), 16)
    want = numpy_preprocess(images, (100.0, 60000.0), 16)
    assert got.shape == (2, 1, 48, 64) and got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_cpu_postprocess_binding_rounds_and_clips() -> None:
    net = np.array([-1.0, 1.0, 2.0, np.nan, 0.0, -3.0], np.float32).reshape(1, 1, 1, 6)
    got = _core.prepost.postprocess(net, 1, 6, [(0.0, 65535.0)], 1, "uint16")
    assert got.tolist() == [[[[0, 65535, 65535, 0, 32768, 0]]]]  # 32767.5 rounds half to even


def image_windows_of(images: np.ndarray) -> list[tuple[float, float, float]]:
    """Each image's own window (lo, span, inv_span) as the runtime computes it from its robust range."""
    return [tuple(_core.prepost.image_window(*_core.robust_range(image))) for image in images]


@pytest.mark.parametrize("dtype", [np.uint16, np.float32], ids=["uint16", "float32"])
def test_cpu_per_image_windows_match_numpy(dtype: type) -> None:
    """Per-image windows on the CPU: (x - lo) * inv_span before the network window, y * span (+ lo where the part
    carries the offset) after it; each a rounded float32 operation, image by image."""
    rng = np.random.default_rng(4)
    images = (rng.random((2, 37, 50)) * 30000).astype(dtype)
    images[1] = (images[1] * 0.5 + 20000).astype(dtype)
    own = image_windows_of(images)
    window = (-0.25, 1.25)
    got = _core.prepost.preprocess(images, window, 16, image_windows=own)
    normalised = np.stack([(images[b].astype(np.float32) - np.float32(lo)) * np.float32(inv)
                           for b, (lo, _, inv) in enumerate(own)])
    want = numpy_preprocess(normalised, window, 16)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))

    net = rng.uniform(-1, 1, (2, 2, 48, 64)).astype(np.float32)
    out = _core.prepost.postprocess(net, 37, 50, [window, window], 16, "float32", image_windows=own,
                                    offsets=[False, True])  # bone, soft
    plain = _core.prepost.postprocess(net, 37, 50, [window, window], 16, "float32")  # (C, N, H, W)
    for b, (lo, span, _) in enumerate(own):
        assert np.array_equal(out[0, b], plain[0, b] * np.float32(span))  # bone: no offset
        assert np.array_equal(out[1, b], plain[1, b] * np.float32(span) + np.float32(lo))


# -- what this build reports -------------------------------------------------------------------------------------
def test_core_reports_cuda_state_consistently() -> None:
    status = _core.cuda.status()
    assert set(status) == {"compiled", "runtime_version", "driver_version", "device_count", "error"}
    assert status["compiled"] is _core.cuda.compiled
    assert len(_core.cuda.devices()) == status["device_count"]
    assert gpu_available() == (status["device_count"] > 0)
    if status["device_count"] == 0:
        assert isinstance(status["error"], str) and status["error"]
    if status["compiled"]:
        assert status["runtime_version"] >= 12000


@pytest.mark.skipif(not os.environ.get("CI") or shutil.which("nvcc") is None,
                    reason="checked in CI on machines with the CUDA toolkit")
def test_ci_builds_the_cuda_kernels() -> None:
    """DEXRT_WITH_CUDA=AUTO must not skip the kernels silently where nvcc exists."""
    assert _core.cuda.compiled


def test_core_does_not_need_the_driver_library() -> None:
    """_core links the CUDA runtime statically and never libcuda: it imports on machines without a driver."""
    so = Path(_core.__file__)
    libs = subprocess.run(["ldd", str(so)], capture_output=True, text=True, check=True).stdout
    assert "libcuda.so" not in libs and "libcudart.so" not in libs
    # and a fresh interpreter imports dexrt and asks CUDA for its status, whatever the machine has
    code = "import dexrt, dexrt._core as c; s = c.cuda.status(); print(s['compiled'], s['device_count'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == str(_core.cuda.compiled)


@pytest.mark.skipif(not _core.cuda.compiled or gpu_unavailable_reason() is None,
                    reason="needs a CUDA build on a machine without a usable GPU")
def test_kernels_without_a_device_raise_engine_error() -> None:
    images = np.zeros((1, 8, 8), np.uint16)
    with pytest.raises(EngineError, match="cuda"):
        _core.cuda.preprocess(images, (0.0, 65535.0), 8)


# -- CUDA kernels, bit for bit ------------------------------------------------------------------------------------
CASES = [  # (N, H, W), size multiple, input window
    ((1, 1, 1), 4, (0.0, 65535.0)),
    ((2, 37, 50), 16, (100.0, 60000.0)),
    ((3, 64, 64), 64, (-1.0, 1.0)),
    ((1, 5, 300), 256, (1000.0, 1003.5)),
]


@pytest.mark.gpu
@pytest.mark.parametrize("shape, m, window", CASES, ids=["1x1", "odd", "exact", "wide-pad"])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32], ids=["uint16", "float32"])
@pytest.mark.parametrize("net_dtype", ["float32", "float16"])
def test_preprocess_matches_cpu_bit_for_bit(shape, m, window, dtype, net_dtype) -> None:
    rng = np.random.default_rng(2)
    images = (rng.random(shape) * 65535).astype(dtype)
    images.flat[0] = 0
    want = _core.prepost.preprocess(images, window, m)  # float32
    got = _core.cuda.preprocess(images, window, m, net_dtype=net_dtype)
    assert got.shape == want.shape and got.dtype == np.dtype(net_dtype)
    if net_dtype == "float16":
        want = want.astype(np.float16)  # round to nearest even, as __float2half_rn
        assert np.array_equal(got.view(np.uint16), want.view(np.uint16))
    else:
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def network_values(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Network outputs with the awkward cases: out of range, NaN, infinities, exact rounding ties."""
    net = rng.uniform(-1.2, 1.2, shape).astype(np.float32)
    flat = net.reshape(-1)
    specials = [np.nan, np.inf, -np.inf, -1.0, 1.0, 0.0, -0.0]
    flat[: len(specials)] = specials
    # values whose stored value is k + 0.5 in the (0, 65535) window: ties, rounded half to even
    ties = (np.arange(10, 20, dtype=np.float32) + np.float32(0.5)) / np.float32(32767.5) - np.float32(1.0)
    flat[len(specials) : len(specials) + len(ties)] = ties
    return net


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", ["uint16", "float32"])
@pytest.mark.parametrize("net_dtype", ["float32", "float16"])
def test_postprocess_matches_cpu_bit_for_bit(out_dtype: str, net_dtype: str) -> None:
    rng = np.random.default_rng(3)
    h, w, m = 37, 50, 16
    net = network_values((3, 2, 48, 64), rng).astype(net_dtype)
    windows = [(0.0, 65535.0), (250.0, 4000.0)]
    want = _core.prepost.postprocess(net.astype(np.float32), h, w, windows, m, out_dtype)  # float16 widens exactly
    got = _core.cuda.postprocess(net, h, w, windows, m, out_dtype)
    assert got.shape == want.shape == (2, 3, h, w) and got.dtype == want.dtype
    if out_dtype == "uint16":
        assert np.array_equal(got, want)
    else:  # NaN payloads differ between CPU and GPU; every other value must be the same bits
        nan = np.isnan(want)
        assert np.array_equal(nan, np.isnan(got))
        assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.uint16, np.float32], ids=["uint16", "float32"])
@pytest.mark.parametrize("net_dtype", ["float32", "float16"])
def test_per_image_windows_on_the_gpu_match_cpu_bit_for_bit(dtype: type, net_dtype: str) -> None:
    """The default (normalised) model's path on the GPU: the kernels take the same per-image windows, and the
    robust range of images that stay on the device (sampled there) is the host's."""
    rng = np.random.default_rng(5)
    images = (rng.random((3, 37, 50)) * 30000).astype(dtype)
    images[2] = (images[2] * 0.25 + 9000).astype(dtype)
    own = image_windows_of(images)
    assert _core.cuda.robust_ranges(images) == [_core.robust_range(image) for image in images]
    window = (-0.25, 1.25)
    want = _core.prepost.preprocess(images, window, 16, image_windows=own)
    got = _core.cuda.preprocess(images, window, 16, net_dtype=net_dtype, image_windows=own)
    if net_dtype == "float16":
        assert np.array_equal(got.view(np.uint16), want.astype(np.float16).view(np.uint16))
    else:
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    net = network_values((3, 2, 48, 64), rng).astype(net_dtype)
    for out_dtype in ("uint16", "float32"):
        want = _core.prepost.postprocess(net.astype(np.float32), 37, 50, [window, window], 16, out_dtype,
                                         image_windows=own, offsets=[False, True])
        got = _core.cuda.postprocess(net, 37, 50, [window, window], 16, out_dtype, image_windows=own,
                                     offsets=[False, True])
        nan = np.isnan(want) if out_dtype == "float32" else np.zeros(want.shape, bool)
        assert np.array_equal(nan, np.isnan(got) if out_dtype == "float32" else nan)
        assert np.array_equal(got[~nan], want[~nan])


# -- the TensorRT build, without TensorRT -------------------------------------------------------------------------
def test_build_without_tensorrt_says_what_to_install(monkeypatch: pytest.MonkeyPatch, plain_onnx: Path) -> None:
    from dexrt.build.openvino import read_onnx_contract
    from dexrt.build.tensorrt import build_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install \"?tensorrt-cu1\d"):
        build_tensorrt(read_onnx_contract(plain_onnx, size_multiple=64), plain_onnx)


def test_profile_shapes_defaults_and_checks() -> None:
    from dexrt.build.tensorrt import profile_shapes

    assert profile_shapes(256, None, None, None) == {"min": (1, 256, 256), "opt": (1, 2048, 2048),
                                                     "max": (4, 4096, 4096)}
    assert profile_shapes(96, None, None, None)["opt"] == (1, 2112, 2112)  # rounded up to the multiple
    with pytest.raises(ValueError, match="multiples"):
        profile_shapes(64, (1, 64, 64), (1, 100, 128), (2, 256, 256))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        profile_shapes(64, (2, 64, 64), (1, 128, 128), (4, 256, 256))


def test_psnr_and_sample_inputs() -> None:
    from dexrt.build.tensorrt import sample_inputs
    from dexrt.evaluation.metrics import psnr

    x = sample_inputs((2, 64, 96))
    assert x.shape == (2, 64, 96) and x.dtype == np.float32
    assert np.array_equal(x, sample_inputs((2, 64, 96)))  # deterministic
    assert -0.9 <= x.min() < -0.3 and 0.3 < x.max() <= 0.9
    assert psnr(x, x, data_range=2.0) == float("inf")
    assert psnr(x, x + 0.02, data_range=2.0) == pytest.approx(20 * np.log10(2 / 0.02), abs=1e-6)


# -- FP16 ONNX for strongly typed networks ------------------------------------------------------------------------
def run_openvino(path_or_model, x: np.ndarray) -> np.ndarray:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path_or_model)
    model.reshape(list(x.shape))
    return core.compile_model(model, "CPU")(x)[0]


def test_fp16_conversion_of_the_unet(unet_onnx: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto

    from dexrt.build.tensorrt import sample_inputs
    from dexrt.evaluation.metrics import psnr
    from dexrt.build.fp16 import convert_to_fp16

    model = onnx.load(str(unet_onnx))
    half = convert_to_fp16(model)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # the input is left alone
    for vi in (*half.graph.input, *half.graph.output):
        assert vi.type.tensor_type.elem_type == TensorProto.FLOAT16
    assert all(init.data_type != TensorProto.FLOAT for init in half.graph.initializer)
    onnx.save(half, tmp_path / "half.onnx")
    x = sample_inputs((1, 256, 256))[:, np.newaxis]
    want = run_openvino(str(unet_onnx), x)
    got = run_openvino(str(tmp_path / "half.onnx"), x.astype(np.float16))
    assert got.dtype == np.float16 and got.shape == want.shape
    assert psnr(want, got.astype(np.float32), data_range=2.0) > 50


def test_fp16_conversion_keeps_normalization_and_resize_scales_in_fp32(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from dexrt.build.fp16 import convert_to_fp16

    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.ones(4, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(4, np.float32), "beta"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(rng.normal(size=(2, 4, 1, 1)).astype(np.float32), "w2"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("InstanceNormalization", ["c", "gamma", "beta"], ["n"]),
            helper.make_node("Resize", ["n", "", "scales"], ["r"], mode="nearest"),
            helper.make_node("Conv", ["r", "w2"], ["y"]),
        ],
        "norm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, None, None])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    half = convert_to_fp16(model)
    types = {i.name: i.data_type for i in half.graph.initializer}
    assert types == {"w": TensorProto.FLOAT16, "gamma": TensorProto.FLOAT, "beta": TensorProto.FLOAT,
                     "scales": TensorProto.FLOAT, "w2": TensorProto.FLOAT16}
    casts = [(n.input[0], n.output[0]) for n in half.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2  # into float32 before the normalization, back to float16 after it
    x = rng.normal(size=(1, 1, 16, 16)).astype(np.float32)
    onnx.save(model, tmp_path / "f32.onnx")
    onnx.save(half, tmp_path / "f16.onnx")
    want = run_openvino(str(tmp_path / "f32.onnx"), x)
    got = run_openvino(str(tmp_path / "f16.onnx"), x.astype(np.float16)).astype(np.float32)
    assert want.shape == got.shape == (1, 2, 32, 32)
    assert np.max(np.abs(want - got)) < 0.05 * np.max(np.abs(want))


# -- plans bound to a GPU and a TensorRT release -------------------------------------------------------------------
HERE = GpuRuntime(gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", tensorrt_version="10.13.0")


def trt_manifest(name: str = HERE.gpu_name, cc: str = HERE.compute_capability, version: str = "10.13.0.35"):
    return {"tensorrt": {"version": version}, "gpu": {"name": name, "compute_capability": cc}}


def test_check_plan_accepts_the_machine_it_was_built_on() -> None:
    assert same_release("10.13.0.35", "10.13.0") and not same_release("10.13.1", "10.13.0")
    check_plan(trt_manifest(), "m.dexrt", HERE)


@pytest.mark.parametrize(
    "manifest, match",
    [
        (trt_manifest(version="10.12.0.36"), r"built with TensorRT 10\.12\.0\.36, this dexrt runs TensorRT 10\.13\.0"),
        (trt_manifest(version="11.4.0.106"), "only load in the release that built them"),
        (trt_manifest(name="NVIDIA GeForce RTX 4090", cc="8.9"), r"built for NVIDIA GeForce RTX 4090 \(compute capa"),
        (trt_manifest(name="NVIDIA H200"), "tuned for one GPU model"),
    ],
    ids=["older-trt", "newer-trt", "other-arch", "same-arch-other-gpu"],
)
def test_check_plan_refuses_another_gpu_or_release(manifest, match) -> None:
    with pytest.raises(EngineError, match=match) as info:
        check_plan(manifest, "m.dexrt", HERE)
    assert "dexrt build-engine" in str(info.value)


def test_check_plan_needs_the_manifest_sections() -> None:
    with pytest.raises(BundleError, match="'tensorrt' and 'gpu' sections"):
        check_plan({"tensorrt": {"version": "10.13.0"}}, "m.dexrt", HERE)


def write_trt_bundle(plain_onnx: Path, path: Path) -> Path:
    from dexrt.build.openvino import contract_manifest, read_onnx_contract
    from dexrt.runtime.bundle import write_bundle

    manifest = contract_manifest(read_onnx_contract(plain_onnx, size_multiple=64), plain_onnx)
    manifest.update(backend="tensorrt", device="gpu", precision="fp16", **trt_manifest(name="NVIDIA Imaginary 9000",
                                                                                       cc="99.0", version="0.0.0"))
    write_bundle(path, manifest, {"model.plan": b"not a plan"})
    return path


def test_engine_refuses_a_foreign_tensorrt_bundle(plain_onnx: Path, tmp_path: Path) -> None:
    path = write_trt_bundle(plain_onnx, tmp_path / "foreign.dexrt")
    # Without a TensorRT runtime: "no TensorRT backend"; with one: "built with TensorRT 0.0.0". Never a crash.
    with pytest.raises(EngineError, match="TensorRT"):
        dexrt.Engine(path)
    with pytest.raises(EngineError, match=r"GPU \(TensorRT\) engine"):
        dexrt.Engine(path, device="cpu")


class DeviceArray:
    """Something that describes itself as a CUDA array (the pointer is never read by these tests)."""

    def __init__(self, **cai) -> None:
        self.__cuda_array_interface__ = {"shape": (2, 8, 8), "typestr": "<u2", "data": (1 << 40, False),
                                         "version": 3, "strides": None, "stream": 1, **cai}


@pytest.mark.parametrize(
    "cai, match",
    [
        ({"typestr": "<f8"}, "uint16 or float32"),
        ({"shape": (2, 0, 8)}, "not empty"),
        ({"shape": (1, 2, 8, 8)}, r"\(H, W\) or \(N, H, W\)"),
        ({"strides": (256, 2, 16)}, "C-contiguous"),
        ({"mask": object()}, "masked"),
    ],
    ids=["dtype", "empty", "rank", "strides", "mask"],
)
def test_device_arrays_are_checked(plain_engine_path: Path, cai, match) -> None:
    with dexrt.Engine(plain_engine_path) as engine, pytest.raises(dexrt.InputError, match=match):
        engine.infer(DeviceArray(**cai))


def test_cpu_engine_refuses_device_arrays_without_reading_them(plain_engine_path: Path) -> None:
    with dexrt.Engine(plain_engine_path) as engine, pytest.raises(dexrt.InputError, match="host memory only"):
        engine.infer(DeviceArray())


# -- end to end on a GPU with TensorRT -----------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not _core.tensorrt.compiled, reason="dexrt was built without TensorRT")
def test_tensorrt_engine_end_to_end(plain_onnx: Path, plain_engine_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    from dexrt.build.openvino import read_onnx_contract
    from dexrt.build.tensorrt import build_tensorrt
    from dexrt.runtime.bundle import write_bundle

    contract = read_onnx_contract(plain_onnx, size_multiple=64)
    cache = tmp_path / "timing.cache"
    manifest, payload = build_tensorrt(contract, plain_onnx, min_shape=(1, 64, 64), opt_shape=(2, 128, 128),
                                       max_shape=(4, 256, 256), timing_cache=cache)
    assert cache.stat().st_size > 0
    assert manifest["accuracy"]["psnr_db"] > 40
    path = tmp_path / "gpu.dexrt"
    write_bundle(path, manifest, payload)
    gpu, cpu = dexrt.Engine(path, device="gpu"), dexrt.Engine(plain_engine_path)
    images = (np.random.default_rng(5).random((6, 100, 130)) * 60000).astype(np.uint16)  # 6 > max batch 4
    got, want = np.stack(gpu.infer(images)), np.stack(cpu.infer(images))
    assert gpu.backend == "tensorrt" and got.shape == want.shape
    assert np.max(np.abs(got.astype(np.int64) - want)) < 600  # fp16 network: ~1e-3 of the range
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        on_device = torch.from_numpy(images.astype(np.float32)).cuda()
        got_dev = np.stack(gpu.infer(on_device))
        assert np.array_equal(got_dev, np.stack(gpu.infer(images.astype(np.float32))))
    gpu.close()
    cpu.close()
