"""Property tests: damaged bundles and hostile inputs give typed errors, never a crash or another exception."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dexrt

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # examples: conftest


@pytest.fixture(scope="module")
def pristine(plain_engine_path: Path) -> bytes:
    return plain_engine_path.read_bytes()


@FUZZ
@given(data=st.data())
def test_mutated_bundles(pristine: bytes, tmp_path: Path, data: st.DataObject) -> None:
    blob = bytearray(pristine)
    for _ in range(data.draw(st.integers(1, 8), label="mutations")):
        pos = data.draw(st.integers(0, len(blob) - 1), label="position")
        blob[pos] = data.draw(st.integers(0, 255), label="byte")
    path = tmp_path / "fuzzed.dexrt"
    path.write_bytes(bytes(blob))
    try:
        engine = dexrt.Engine(path)
    except dexrt.EngineError:  # BundleError included
        return
    # A mutation that loads must have left the checked content intact: the engine still computes.
    assert engine.infer(np.zeros((8, 8), np.uint16))[0].shape == (8, 8)


@FUZZ
@given(cut=st.integers(0, 10_000_000))
def test_truncated_bundles(pristine: bytes, tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.dexrt"
    path.write_bytes(pristine[: cut % len(pristine)])
    with pytest.raises(dexrt.BundleError):
        dexrt.Engine(path)


@FUZZ
@given(
    dtype=st.sampled_from([np.uint16, np.float32, np.float64, np.int16, np.uint8, np.bool_]),
    shape=st.lists(st.integers(0, 40), min_size=0, max_size=4).map(tuple),
    fill=st.sampled_from([0.0, -1.0, 1e30, -1e30, np.nan, np.inf, -np.inf, 65535.0]),
)
def test_hostile_arrays(plain_engine_path: Path, dtype, shape: tuple[int, ...], fill: float) -> None:
    engine = dexrt.Engine(plain_engine_path)
    with np.errstate(invalid="ignore", over="ignore"):
        images = np.full(shape, fill).astype(dtype)
    try:
        outputs = engine.infer(images)
    except dexrt.InputError:
        return
    assert images.dtype in (np.uint16, np.float32) and images.ndim in (2, 3)
    for out in outputs:
        assert out.shape == images.shape and out.dtype == images.dtype
        if dtype == np.float32:
            assert np.isfinite(out).all()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def test_no_pickle_on_any_load_path() -> None:
    """Source check: no pickle import, torch.load only with weights_only=True, np.load never with pickles."""
    root = Path(__file__).parent.parent
    sources = [*root.glob("python/dexrt/**/*.py"), *root.glob("trainer/**/*.py")]
    assert sources
    problems = []
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib") for n in names):
                    problems.append(f"{path}:{node.lineno}: imports pickle")
        for call in _calls(tree):
            name = ast.unparse(call.func)
            keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
            if name.endswith("torch.load") and keywords.get("weights_only") != "True":
                problems.append(f"{path}:{call.lineno}: torch.load without weights_only=True")
            if name.endswith("np.load") and keywords.get("allow_pickle") not in (None, "False"):
                problems.append(f"{path}:{call.lineno}: np.load with allow_pickle")
    assert not problems, "\n".join(problems)


def test_bundle_copy_is_usable(plain_engine_path: Path, tmp_path: Path) -> None:
    # The fuzz tests start from this file: make sure it loads as is, so their exceptions are the mutations'.
    copy = Path(shutil.copy(plain_engine_path, tmp_path / "ok.dexrt"))
    assert dexrt.Engine(copy).backend == "openvino"


def _image_bytes(tmp: Path) -> dict[str, bytes]:
    """One valid file of each input format: PNG16, TIFF, uncompressed and RLE DICOM."""
    from infer_helpers import make_dicom

    from dexrt.io.images import write_image

    image = (np.random.default_rng(0).random((24, 20)) * 65535).astype(np.uint16)
    write_image(tmp / "a.png", image)
    write_image(tmp / "a.tif", image)
    make_dicom(tmp / "a.dcm", image)
    from pydicom.uid import RLELossless

    make_dicom(tmp / "r.dcm", image, syntax=RLELossless)
    return {name: (tmp / name).read_bytes() for name in ("a.png", "a.tif", "a.dcm", "r.dcm")}


@pytest.fixture(scope="module")
def pristine_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return _image_bytes(tmp_path_factory.mktemp("pristine"))


@FUZZ
@given(data=st.data())
def test_mutated_image_files(pristine_images: dict[str, bytes], tmp_path: Path, data: st.DataObject) -> None:
    from dexrt.io.images import read_radiograph

    name = data.draw(st.sampled_from(sorted(pristine_images)), label="format")
    blob = bytearray(pristine_images[name])
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="cut")]
    else:
        for _ in range(data.draw(st.integers(1, 6), label="mutations")):
            blob[data.draw(st.integers(0, len(blob) - 1), label="position")] = data.draw(st.integers(0, 255))
    path = tmp_path / name
    path.write_bytes(bytes(blob))
    try:
        radiograph = read_radiograph(path)
    except dexrt.InputError as exc:
        assert str(path) in str(exc)  # the error names the file
        return
    assert radiograph is not None


@pytest.mark.parametrize("damage", ["truncated to 3 bytes", "byte 26 zeroed"])
def test_damaged_tiff_found_by_fuzzing(tmp_path: Path, damage: str) -> None:
    """Two TIFFs the fuzzer found that drove tifffile into TypeError and struct.error: both are InputErrors."""
    from dexrt.io.images import read_radiograph

    blob = bytearray(_image_bytes(tmp_path)["a.tif"])
    if damage == "truncated to 3 bytes":
        blob = blob[:3]
    else:
        blob[26] = 0
    path = tmp_path / "damaged.tif"
    path.write_bytes(bytes(blob))
    with pytest.raises(dexrt.InputError, match="corrupt or truncated TIFF") as info:
        read_radiograph(path)
    assert str(path) in str(info.value)
