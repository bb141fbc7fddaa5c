"""Property tests for the two families of crafted input in Hardening II: bundle manifests (any value anywhere,
checksums intact) and image headers (any declared size over a few bytes of data). Fixed examples in the default
`ci` profile; `--hypothesis-profile explore` searches afresh (docs/testing.md)."""

from __future__ import annotations

import json
import math
import resource
import shutil
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dexrt
from dexrt._limits import MAX_SIDE
from dexrt.runtime.bundle import BACKEND_MEMBERS, FORMAT_VERSION, MANIFEST_NAME, read_manifest
from dexrt.io.layout import output_paths
from dexrt.io.images import read_radiograph
from infer_helpers import DECLARING

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Values an attacker would try: traversal and odd strings, extreme and non-finite numbers, wrong types, nesting.
HOSTILE_SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 1, 4096, 4097, 2**31, -7]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e-45, 1e-300, 1e300, -0.0, 5e-324, 10**400]),
    st.sampled_from(["x/../../victim", "../x", "/etc/passwd", "a\\b", "", ".", "..", "preview", "bone", "soft",
                     "model.bin", "manifest.json", "con", "b\x00", "é", "x" * 40]),
    st.text(max_size=12),
)
HOSTILE = st.recursive(
    HOSTILE_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)
PATHS = [("format",), ("format_version",), ("backend",), ("device",), ("precision",), ("size_multiple",),
         ("input",), ("input", "window"), ("input", "window", 0), ("input", "window", 1), ("output",),
         ("output", "channels"), ("output", "channels", 0), ("output", "channels", 1), ("output", "windows"),
         ("output", "windows", 0), ("output", "windows", 1, 1), ("payload",), ("payload", "model.bin", "size"),
         ("payload", "model.xml", "sha256"), ("pixel_spacing_mm",), ("model",), ("model", "config"),
         ("model", "pixel_spacing_mm"), ("model", "config", "pixel_spacing_mm")]


class Members(dict):
    """The pristine bundle's members; a short repr keeps Hypothesis' failure reports readable."""

    def __repr__(self) -> str:
        return f"<members {sorted(self)}>"


@pytest.fixture(scope="module")
def pristine_members(plain_engine_path: Path) -> Members:
    with zipfile.ZipFile(plain_engine_path) as z:
        return Members({name: z.read(name) for name in z.namelist()})


def _fits(node: object, key: object) -> bool:
    return (isinstance(node, dict) and isinstance(key, str)) or (
        isinstance(node, list) and isinstance(key, int) and key < len(node))


def _set(manifest: dict, path: tuple, value: object) -> None:
    """Put `value` at `path`, when an earlier edit has not already replaced what the path goes through."""
    node: object = manifest
    for key in path[:-1]:
        if not _fits(node, key) or (isinstance(node, dict) and key not in node):
            return
        node = node[key]  # type: ignore[index]
    if _fits(node, path[-1]):
        node[path[-1]] = value  # type: ignore[index]


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), HOSTILE), min_size=1, max_size=3))
def test_hostile_manifest_values(pristine_members: dict[str, bytes], tmp_path: Path, edits) -> None:
    manifest = json.loads(pristine_members[MANIFEST_NAME])
    for path, value in edits:
        _set(manifest, path, value)
    bundle = tmp_path / "m.dexrt"
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr(MANIFEST_NAME, json.dumps(manifest))  # NaN and Infinity included: Python's JSON reads them
        for name, data in pristine_members.items():
            if name != MANIFEST_NAME:
                z.writestr(name, data)
    try:
        m = read_manifest(bundle)
    except dexrt.BundleError:
        return
    # Whatever is accepted is safe to use: a known layout, usable windows, names that stay inside a folder.
    assert 1 <= m["format_version"] <= FORMAT_VERSION
    assert set(m["payload"]) == BACKEND_MEMBERS[m["backend"]] and 1 <= m["size_multiple"] <= 4096
    for lo, hi in [m["input"]["window"], *m["output"]["windows"]]:
        assert math.isfinite(lo) and math.isfinite(hi) and hi - lo >= 1e-6
    out = tmp_path / "out"
    for target in output_paths(Path("a.png"), out, m["output"]["channels"], preview=True):
        assert target.parent == out and target.resolve().is_relative_to(out.resolve())


@FUZZ
@given(kind=st.sampled_from(sorted(DECLARING)),
       height=st.one_of(st.integers(1, 64), st.integers(MAX_SIDE - 2, MAX_SIDE + 2), st.integers(1, 2**31 - 1)),
       width=st.one_of(st.integers(1, 64), st.integers(MAX_SIDE - 2, MAX_SIDE + 2), st.integers(1, 2**31 - 1)))
def test_declared_image_sizes(tmp_path: Path, kind: str, height: int, width: int) -> None:
    if kind == "dicom":  # Rows and Columns are 16-bit in DICOM
        height, width = min(height, 65535), min(width, 65535)
    path = DECLARING[kind](tmp_path / f"h.{ {'dicom': 'dcm'}.get(kind, kind)}", height, width)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        frames = read_radiograph(path).frames
    except dexrt.InputError as exc:
        assert str(path) in str(exc)
        if height > MAX_SIDE or width > MAX_SIDE:
            assert f"image too large: {height}x{width} pixels, more than the {MAX_SIDE}" in str(exc)
    else:
        assert frames.shape[-2:] == (height, width) and max(height, width) <= MAX_SIDE
    # Never a decode of what the header only claims: at most one 16384-wide strip of rows, not gigabytes.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1 << 20  # KiB


def test_fixtures_are_usable(plain_engine_path: Path, tmp_path: Path) -> None:
    # The manifest fuzz starts from this bundle: it must load as is, so refusals are the edits'.
    assert dexrt.Engine(Path(shutil.copy(plain_engine_path, tmp_path / "ok.dexrt"))).backend == "openvino"
    assert read_radiograph(DECLARING["png"](tmp_path / "p.png", 1, 2048)).frames.shape == (1, 1, 2048)
