"""Crafted bundles (issue: Hardening II): hostile channel names, compression bombs, unknown and duplicate members,
degenerate windows and versions, absurd pixel spacings. Each is refused with a BundleError when the bundle is
read, before anything is allocated for it or written because of it."""

from __future__ import annotations

import json
import resource
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import dexrt
from dexrt.runtime.bundle import MANIFEST_NAME, read_bundle, read_manifest, write_bundle
from dexrt.cli import cli
from test_bundle import rewrite


@pytest.fixture
def bundle_copy(plain_engine_path: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(plain_engine_path, tmp_path / "copy.dexrt"))


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


@pytest.mark.parametrize("name", ["x/../../victim", "../victim", "a/b", "", "bone soft", "preview", "Preview",
                                  "1bone", "x" * 33, "bone\x00", "é"])
def test_channel_names_must_be_plain_identifiers(bundle_copy: Path, name: str) -> None:
    rewrite(bundle_copy, manifest_edit=lambda m: m["output"].update(channels=[name, "soft"]))
    with pytest.raises(dexrt.BundleError, match="channel name"):
        read_manifest(bundle_copy)


def test_duplicate_channel_names(bundle_copy: Path) -> None:
    rewrite(bundle_copy, manifest_edit=lambda m: m["output"].update(channels=["bone", "Bone"]))
    with pytest.raises(dexrt.BundleError, match="not unique"):
        dexrt.Engine(bundle_copy)


def test_traversal_channel_never_writes_outside_the_output_folder(bundle_copy: Path, tmp_path: Path) -> None:
    # The reported attack: output.channels holding x/../../victim made `dexrt infer` overwrite a file outside -o.
    from dexrt.io.images import write_image

    import numpy as np

    rewrite(bundle_copy, manifest_edit=lambda m: m["output"].update(channels=["x/../../victim", "soft"]))
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "a.png", np.full((16, 16), 1000, np.uint16))
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    result = CliRunner().invoke(cli, ["infer", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                                      "--engine", str(bundle_copy)])
    assert result.exit_code == 1
    assert "channel name 'x/../../victim' is not a plain identifier" in result.output
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "out").exists()


def test_write_bundle_refuses_what_a_reader_would_refuse(plain_engine_path: Path, tmp_path: Path) -> None:
    bundle = read_bundle(plain_engine_path)
    manifest = {k: v for k, v in bundle.manifest.items() if k not in ("format", "format_version", "payload")}
    manifest["output"] = {**manifest["output"], "channels": ["../bone", "soft"]}
    with pytest.raises(ValueError, match="channel name"):
        write_bundle(tmp_path / "x.dexrt", manifest, bundle.payload)
    assert not (tmp_path / "x.dexrt").exists()


def test_build_engine_refuses_unsafe_channel_names(plain_onnx: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["build-engine", str(plain_onnx), "-o", str(tmp_path / "e.dexrt"),
                                      "--channels", "../x,soft"])
    assert result.exit_code == 1 and "not a plain identifier" in result.output
    assert not (tmp_path / "e.dexrt").exists()


def test_deflated_member_is_refused_before_it_is_inflated(bundle_copy: Path) -> None:
    # The reported bomb: a listed extra member of 4 GiB of zeros, deflated to a few MB. Here 256 MiB (256 kB in
    # the file): refused from the archive directory, so reading the bundle costs no memory for it.
    data = members(bundle_copy)
    manifest = json.loads(data.pop(MANIFEST_NAME))
    zeros = bytes(256 << 20)
    manifest["payload"]["model.bin"] = {"size": len(zeros), "sha256": "0" * 64}
    with zipfile.ZipFile(bundle_copy, "w") as z:
        z.writestr(MANIFEST_NAME, json.dumps(manifest))
        z.writestr("model.xml", data["model.xml"])
        z.writestr("model.bin", zeros, compress_type=zipfile.ZIP_DEFLATED)
    del zeros
    assert bundle_copy.stat().st_size < 2 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(dexrt.BundleError, match="'model.bin' is compressed"):
        dexrt.Engine(bundle_copy)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10  # KiB: nothing was inflated


def test_extra_listed_member_is_refused(bundle_copy: Path) -> None:
    extra = b"\0" * 1000
    import hashlib

    rewrite(bundle_copy, manifest_edit=lambda m: m["payload"].update(
        {"extra.bin": {"size": len(extra), "sha256": hashlib.sha256(extra).hexdigest()}}),
        extra={"extra.bin": extra})
    with pytest.raises(dexrt.BundleError, match="must list exactly model.bin, model.xml"):
        dexrt.Engine(bundle_copy)


def test_duplicate_member_is_refused(bundle_copy: Path) -> None:
    data = members(bundle_copy)
    with zipfile.ZipFile(bundle_copy, "a") as z, pytest.warns(UserWarning, match="Duplicate name"):
        z.writestr("model.bin", data["model.bin"][:10])
    with pytest.raises(dexrt.BundleError, match="appears twice"):
        dexrt.Engine(bundle_copy)


def test_declared_sizes_beyond_the_file_are_refused(bundle_copy: Path) -> None:
    rewrite(bundle_copy, manifest_edit=lambda m: m["payload"]["model.bin"].update(size=3 << 30))
    with pytest.raises(dexrt.BundleError, match="declares .* bytes of payload in a file of"):
        dexrt.Engine(bundle_copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["output"].update(windows=[[0, 1e-45], [0, 65535]]), "too narrow"),
        (lambda m: m["input"].update(window=[1e6, 1e6 + 1e-3]), "too narrow"),
        (lambda m: m["input"].update(window=[0, 1e300]), "finite number"),
        (lambda m: m["output"].update(windows=[[10, 0], [0, 65535]]), "reversed"),
        (lambda m: m.update(format_version=-7), "format_version"),
        (lambda m: m.update(format_version=0), "format_version"),
        (lambda m: m.update(format_version=True), "format_version"),
        (lambda m: m.update(backend="onnxruntime"), "'backend'"),
        (lambda m: m.update(device="gpu"), "'device'"),
        (lambda m: m.update(precision="fp8"), "'precision'"),
        (lambda m: m.update(pixel_spacing_mm=1e-9), "pixel_spacing_mm.*plausible"),
        (lambda m: m["model"].update(pixel_spacing_mm=0.0), "pixel_spacing_mm.*plausible"),
        (lambda m: m["model"].setdefault("config", {}).update(pixel_spacing_mm=1e9), "pixel_spacing_mm.*plausible"),
        (lambda m: m.update(model=[]), "'model'"),
        (lambda m: m["input"].update(window=[0, 10**400]), "finite number"),
        (lambda m: m.update(pixel_spacing_mm=10**400), "pixel_spacing_mm.*plausible"),
    ],
    ids=["window-1e-45", "window-below-float32", "window-huge", "window-reversed", "version-negative",
         "version-zero", "version-bool", "backend", "device", "precision", "spacing-tiny", "spacing-zero",
         "spacing-huge", "model-not-object", "window-400-digits", "spacing-400-digits"],
)
def test_values_validated_when_read(bundle_copy: Path, edit, message: str) -> None:
    rewrite(bundle_copy, manifest_edit=edit)
    with pytest.raises(dexrt.BundleError, match=message):
        dexrt.Engine(bundle_copy)


def test_deeply_nested_manifest_json(bundle_copy: Path) -> None:
    data = members(bundle_copy)
    with zipfile.ZipFile(bundle_copy, "w") as z:
        z.writestr(MANIFEST_NAME, "[" * 100_000 + "]" * 100_000)
        for name, blob in data.items():
            if name != MANIFEST_NAME:
                z.writestr(name, blob)
    with pytest.raises(dexrt.BundleError, match="not valid JSON"):
        dexrt.Engine(bundle_copy)
