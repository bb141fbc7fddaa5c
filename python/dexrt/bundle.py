"""The engine bundle (`.dexrt`): one self-describing file holding a manifest and the engine payload.

Layout: a ZIP archive (stored, not compressed) with `manifest.json` first, then the payload files the
manifest lists (for the OpenVINO backend `model.xml` and `model.bin`). `unzip -l model.dexrt` shows it.
Nothing is ever extracted to disk; members are read by name, each checked against the size and SHA-256
the manifest records, and members the manifest does not list make the bundle invalid.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dexrt._atomic import atomic_write
from dexrt._errors import BundleError

FORMAT = "dexrt-engine"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_MAX_MANIFEST_BYTES = 1 << 20
_MAX_PAYLOAD_BYTES = 4 << 30  # refuse absurd declared sizes before allocating anything
# What zipfile raises on damaged archives: a damaged bundle is a BundleError, never another exception type.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
               RuntimeError, struct.error, zlib.error, UnicodeDecodeError, KeyError)
_PAYLOAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a plain file name: no folders, no '..'


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle."""

    path: Path
    manifest: dict[str, Any]
    payload: dict[str, bytes]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bundle(path: str | os.PathLike[str], manifest: dict[str, Any], payload: dict[str, bytes]) -> None:
    """Write `manifest` (completed with format fields and payload checksums) and `payload` atomically."""
    for name in payload:
        if not _PAYLOAD_NAME.match(name) or name == MANIFEST_NAME:
            raise ValueError(f"invalid payload name {name!r}")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **manifest,
        "payload": {name: {"size": len(data), "sha256": sha256_hex(data)} for name, data in payload.items()},
    }
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for name, data in payload.items():
            z.writestr(name, data)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check only the manifest (cheap: the payload is not read)."""
    path = Path(path)
    with _open_zip(path) as z:
        return _manifest_of(path, z)


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read a bundle, checking its format, manifest and every payload checksum."""
    path = Path(path)
    with _open_zip(path) as z:
        manifest = _manifest_of(path, z)
        declared: dict[str, Any] = manifest["payload"]
        present = {info.filename: info for info in z.infolist()}
        extra = sorted(set(present) - set(declared) - {MANIFEST_NAME})
        if extra:
            raise BundleError(f"{path}: holds files its manifest does not list ({', '.join(extra)}); it was altered")
        payload: dict[str, bytes] = {}
        for name, entry in declared.items():
            info = present.get(name)
            if info is None:
                raise BundleError(f"{path}: '{name}' listed in the manifest is missing from the bundle")
            if info.file_size != entry["size"]:
                raise BundleError(
                    f"{path}: '{name}' is {info.file_size} bytes, the manifest says {entry['size']}; "
                    "the bundle was altered or is corrupt"
                )
            try:
                data = z.read(info)
            except _ZIP_ERRORS as exc:
                raise BundleError(f"{path}: '{name}' cannot be read ({exc}); the file is truncated or corrupt") from exc
            if sha256_hex(data) != entry["sha256"]:
                raise BundleError(
                    f"{path}: checksum mismatch for '{name}'; the bundle was altered or is corrupt "
                    "(rebuild it with `dexrt build-engine`)"
                )
            payload[name] = data
    return Bundle(path=path, manifest=manifest, payload=payload)


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise BundleError(f"{path}: no such engine file")
    try:
        return zipfile.ZipFile(path, "r")
    except PermissionError as exc:
        raise BundleError(f"{path}: cannot be opened: {exc}") from exc
    except _ZIP_ERRORS as exc:
        raise BundleError(
            f"{path}: not a dexrt engine bundle, or truncated (not a readable ZIP archive: {exc})"
        ) from exc


def _manifest_of(path: Path, z: zipfile.ZipFile) -> dict[str, Any]:
    try:
        info = z.getinfo(MANIFEST_NAME)
    except KeyError:
        raise BundleError(f"{path}: not a dexrt engine bundle (no {MANIFEST_NAME})") from None
    if info.file_size > _MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: manifest is {info.file_size} bytes, larger than any dexrt manifest")
    try:
        manifest = json.loads(z.read(info).decode("utf-8"))
    except _ZIP_ERRORS as exc:
        raise BundleError(f"{path}: the manifest is not valid JSON ({exc})") from exc
    _check_manifest(path, manifest)
    return manifest


def _check_manifest(path: Path, m: Any) -> None:
    def bad(what: str) -> BundleError:
        return BundleError(f"{path}: invalid manifest: {what}")

    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise bad(f"'format' is not {FORMAT!r}")
    version = m.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad("'format_version' is not an integer")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version} is newer than this dexrt reads ({FORMAT_VERSION}); "
            "upgrade dexrt or rebuild the engine"
        )
    payload = m.get("payload")
    if not isinstance(payload, dict) or not payload:
        raise bad("'payload' must list the payload files")
    for name, entry in payload.items():
        if not isinstance(name, str) or not _PAYLOAD_NAME.match(name) or name == MANIFEST_NAME:
            raise bad(f"payload name {name!r} is not a plain file name")
        if not isinstance(entry, dict):
            raise bad(f"payload entry {name!r} is not an object")
        size, digest = entry.get("size"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= _MAX_PAYLOAD_BYTES:
            raise bad(f"payload {name!r} has an impossible size {size!r}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise bad(f"payload {name!r} has no valid sha256")
    for key in ("backend", "device", "precision"):
        if not isinstance(m.get(key), str):
            raise bad(f"'{key}' is missing")
    size_multiple = m.get("size_multiple")
    if not isinstance(size_multiple, int) or isinstance(size_multiple, bool) or not 1 <= size_multiple <= 4096:
        raise bad(f"'size_multiple' {size_multiple!r} is not an integer in [1, 4096]")
    inp, out = m.get("input"), m.get("output")
    if not isinstance(inp, dict) or not _is_window(inp.get("window")):
        raise bad("'input.window' must be [lo, hi] with lo < hi")
    if not isinstance(out, dict):
        raise bad("'output' is missing")
    windows, channels = out.get("windows"), out.get("channels")
    if not isinstance(windows, list) or not windows or not all(_is_window(w) for w in windows):
        raise bad("'output.windows' must be a list of [lo, hi] with lo < hi")
    if not isinstance(channels, list) or len(channels) != len(windows) or not all(isinstance(c, str) for c in channels):
        raise bad("'output.channels' must name each output window")


def _is_window(w: Any) -> bool:
    return (
        isinstance(w, list)
        and len(w) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in w)
        and all(abs(v) < 1e30 for v in w)
        and w[0] < w[1]
    )
