"""The .dexrt bundle: manifest, checksums, and typed errors for damaged or foreign files."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

import dexrt
from dexrt.runtime.bundle import MANIFEST_NAME, read_bundle, read_manifest, write_bundle


@pytest.fixture
def bundle_copy(plain_engine_path: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(plain_engine_path, tmp_path / "copy.dexrt"))


def rewrite(path: Path, manifest_edit=None, payload_edit=None, extra: dict[str, bytes] | None = None) -> None:
    """Rewrite a bundle's zip members (without fixing checksums), as a tamperer would."""
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    manifest = json.loads(members.pop(MANIFEST_NAME))
    if manifest_edit:
        manifest_edit(manifest)
    if payload_edit:
        payload_edit(members)
    members.update(extra or {})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(MANIFEST_NAME, json.dumps(manifest))
        for name, data in members.items():
            z.writestr(name, data)


def test_manifest_describes_the_engine(plain_engine_path: Path) -> None:
    m = read_manifest(plain_engine_path)
    assert m["format"] == "dexrt-engine" and m["format_version"] == 1
    assert m["backend"] == "openvino" and m["device"] == "cpu" and m["precision"] == "fp32"
    assert m["input"]["shape"] == ["N", 1, "H", "W"]
    assert m["output"]["shape"] == ["N", 2, "H", "W"]
    assert m["output"]["channels"] == ["bone", "soft"]
    assert m["input"]["window"] == [0.0, 65535.0]
    assert m["size_multiple"] == 64
    assert set(m["payload"]) == {"model.xml", "model.bin"}
    assert {"dexrt", "openvino", "onnx"} <= set(m["libraries"])
    assert len(m["model"]["onnx_sha256"]) == 64
    bundle = read_bundle(plain_engine_path)
    assert set(bundle.payload) == {"model.xml", "model.bin"}


def test_metadata_windows_are_used_and_options_override(tmp_path: Path) -> None:
    from helpers import build_bundle, make_plain_onnx

    meta = json.dumps({
        "format_version": 1,
        "input": {"name": "x", "window": [100, 4000]},
        "output": {"name": "out", "channels": ["b", "s"], "windows": [[0, 1000], [0, 2000]]},
        "size_multiple": 32,
        "model_hash": "sha256:" + "ab" * 32,
    })
    onnx_path = make_plain_onnx(tmp_path / "meta.onnx", metadata=meta)
    m = read_manifest(build_bundle(onnx_path, tmp_path / "a.dexrt"))
    assert m["input"]["window"] == [100, 4000]
    assert m["output"]["windows"] == [[0, 1000], [0, 2000]]
    assert m["output"]["channels"] == ["b", "s"]
    assert m["size_multiple"] == 32
    assert m["model"]["model_hash"] == "sha256:" + "ab" * 32
    m = read_manifest(build_bundle(onnx_path, tmp_path / "b.dexrt", input_window=(0, 10), size_multiple=8))
    assert m["input"]["window"] == [0, 10] and m["size_multiple"] == 8


def test_truncated_bundle(bundle_copy: Path) -> None:
    data = bundle_copy.read_bytes()
    bundle_copy.write_bytes(data[: len(data) // 2])
    with pytest.raises(dexrt.BundleError, match="truncated"):
        dexrt.Engine(bundle_copy)


def test_tampered_payload(bundle_copy: Path) -> None:
    def flip(members: dict[str, bytes]) -> None:
        weights = bytearray(members["model.bin"])
        weights[len(weights) // 2] ^= 0xFF
        members["model.bin"] = bytes(weights)

    rewrite(bundle_copy, payload_edit=flip)
    with pytest.raises(dexrt.BundleError, match=r"checksum mismatch for 'model.bin'"):
        dexrt.Engine(bundle_copy)


def test_tampered_window_in_manifest_is_caught_by_schema(bundle_copy: Path) -> None:
    rewrite(bundle_copy, manifest_edit=lambda m: m["input"].update(window=[5, 5]))
    with pytest.raises(dexrt.BundleError, match="input.window"):
        dexrt.Engine(bundle_copy)


def test_unlisted_member(bundle_copy: Path) -> None:
    rewrite(bundle_copy, extra={"evil.so": b"\x7fELF"})
    with pytest.raises(dexrt.BundleError, match="does not list"):
        dexrt.Engine(bundle_copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format="something-else"), "format"),
        (lambda m: m.update(format_version=99), "newer than this dexrt reads"),
        (lambda m: m["payload"].update({"../escape.bin": {"size": 1, "sha256": "0" * 64}}), "plain file name"),
        (lambda m: m["payload"]["model.bin"].update(size=1 << 40), "impossible size"),
        (lambda m: m.update(size_multiple=0), "size_multiple"),
        (lambda m: m["output"].update(channels=["bone"]), "channels"),
    ],
    ids=["format", "version", "traversal", "absurd-size", "size-multiple", "channels"],
)
def test_hostile_manifests(bundle_copy: Path, edit, message: str) -> None:
    rewrite(bundle_copy, manifest_edit=edit)
    with pytest.raises(dexrt.BundleError, match=message):
        dexrt.Engine(bundle_copy)


def test_not_a_bundle(tmp_path: Path) -> None:
    path = tmp_path / "notes.dexrt"
    path.write_text("hello")
    with pytest.raises(dexrt.BundleError, match="not a dexrt engine bundle"):
        dexrt.Engine(path)
    with pytest.raises(dexrt.BundleError, match="no such engine file"):
        dexrt.Engine(tmp_path / "missing.dexrt")


def test_write_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "x.dexrt"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):
        write_bundle(target, {}, {"../bad": b""})
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.dexrt"]
