"""The engine bundle (`.dexrt`): one self-describing file holding a manifest and the engine payload.

Layout: a ZIP archive (every member stored, never compressed) with `manifest.json` first, then the payload files
the manifest lists (for the OpenVINO backend `model.xml` and `model.bin`, for TensorRT `model.plan`), and, in a
signed bundle, `signature.json` (an Ed25519 signature over the exact bytes of `manifest.json`; see
`dexrt.runtime.signing`). `unzip -l model.dexrt` shows it. Nothing is ever extracted to disk; members are read by name,
each checked against the size and SHA-256 the manifest records, and a member that is compressed, duplicated, or
neither the manifest, the signature nor a payload file of the manifest's backend makes the bundle invalid.

The SHA-256s prove the payload matches the manifest, not who made it: anyone can recompute them. A signature by
a trusted key proves origin (`dexrt.runtime.signing`, `Engine(trusted_keys=..., require_signed=...)`).

The manifest's values are checked here, when the bundle is read (`check_manifest`), and also before one is
written: format and version, backend and payload members, windows, channel names (which become parts of output
file names), size multiple and pixel spacing. (The value encodings are checked by `dexrt.Engine` as it loads.)
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
from typing import Any, TypeGuard

from dexrt._atomic import atomic_write
from dexrt._errors import BundleError
from dexrt.runtime.pixel_spacing import recorded_spacings, spacing_problem

FORMAT = "dexrt-engine"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature.json"
# The payload members each backend reads; any other member is refused (it could only be waste or a bomb).
BACKEND_MEMBERS = {"openvino": frozenset({"model.xml", "model.bin"}), "tensorrt": frozenset({"model.plan"})}
BACKEND_DEVICES = {"openvino": "cpu", "tensorrt": "gpu"}
PRECISIONS = ("fp32", "fp16", "int8")
RESERVED_CHANNELS = ("preview",)  # NAME_preview.png is the preview sheet of `dexrt infer --preview`
_CHANNEL = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")  # a plain identifier: safe inside any file name
_MAX_MANIFEST_BYTES = 1 << 20
_MAX_SIGNATURE_BYTES = 4096
_MAX_PAYLOAD_BYTES = 4 << 30  # refuse absurd declared sizes before allocating anything
_MAX_MEMBERS = 8
_MAX_WINDOW_VALUE = 1e9
_CHUNK = 1 << 20
# What zipfile raises on damaged archives: a damaged bundle is a BundleError, never another exception type.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
               RuntimeError, struct.error, zlib.error, UnicodeDecodeError, KeyError, RecursionError)
_PAYLOAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a plain file name: no folders, no '..'


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle. ``manifest_bytes`` are what a signature covers; ``signature`` is the raw
    `signature.json` member, or None for an unsigned bundle (checked by `dexrt.runtime.signing`, not here)."""

    path: Path
    manifest: dict[str, Any]
    payload: dict[str, bytes]
    manifest_bytes: bytes = b""
    signature: bytes | None = None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def channel_name_problem(name: Any) -> str | None:
    """Why `name` cannot be an output channel name (it becomes part of file names), or None if it can."""
    if not isinstance(name, str) or not _CHANNEL.match(name):
        return (f"channel name {name!r} is not a plain identifier (a letter, then up to 31 letters, digits or "
                "underscores)")
    if name.lower() in RESERVED_CHANNELS:
        return f"channel name {name!r} is reserved (dexrt infer names its preview files NAME_{name}.png)"
    return None


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The serialized `manifest.json` (what `write_bundle` stores and a signature covers)."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")


def complete_manifest(manifest: dict[str, Any], payload: dict[str, bytes]) -> dict[str, Any]:
    """`manifest` with the format fields and the payload's sizes and checksums."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **manifest,
        "payload": {name: {"size": len(data), "sha256": sha256_hex(data)} for name, data in payload.items()},
    }


def write_bundle(path: str | os.PathLike[str], manifest: dict[str, Any], payload: dict[str, bytes], *,
                 signing_key: Any = None) -> None:
    """Write `manifest` (completed with format fields and payload checksums) and `payload` atomically.

    ``signing_key``: an Ed25519 private key (see `dexrt.runtime.signing.load_private_key`) to sign the manifest with.
    A manifest that a reader would refuse is never written (ValueError).
    """
    for name in payload:
        if not _PAYLOAD_NAME.match(name) or name in (MANIFEST_NAME, SIGNATURE_NAME):
            raise ValueError(f"invalid payload name {name!r}")
    manifest = complete_manifest(manifest, payload)
    try:
        check_manifest(Path(path), manifest)
    except BundleError as exc:
        raise ValueError(str(exc)) from None
    _write_members(path, manifest_bytes(manifest), payload, signing_key)


def sign_bundle(path: str | os.PathLike[str], signing_key: Any, output: str | os.PathLike[str] | None = None) -> None:
    """(Re-)sign a bundle: the same manifest bytes and payload, verified first, with a new signature; written
    atomically to `output` (default: in place)."""
    bundle = read_bundle(path)
    _write_members(output if output is not None else path, bundle.manifest_bytes, bundle.payload, signing_key)


def _write_members(path: str | os.PathLike[str], manifest: bytes, payload: dict[str, bytes], signing_key: Any) -> None:
    signature = None
    if signing_key is not None:
        from dexrt.runtime.signing import signature_member

        signature = signature_member(manifest, signing_key)
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(MANIFEST_NAME, manifest)
        for name, data in payload.items():
            z.writestr(name, data)
        if signature is not None:
            z.writestr(SIGNATURE_NAME, signature)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check only the manifest (cheap: the payload is not read)."""
    path = Path(path)
    with _open_zip(path) as z:
        members = _members(path, z)
        return _manifest_of(path, z, members)[0]


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read a bundle, checking its layout, manifest and every payload checksum (hashed as it streams in)."""
    path = Path(path)
    with _open_zip(path) as z:
        members = _members(path, z)
        manifest, raw = _manifest_of(path, z, members)
        declared: dict[str, Any] = manifest["payload"]
        extra = sorted(set(members) - set(declared) - {MANIFEST_NAME, SIGNATURE_NAME})
        if extra:
            raise BundleError(f"{path}: holds files its manifest does not list ({', '.join(extra)}); it was altered")
        total = sum(entry["size"] for entry in declared.values())
        if total > path.stat().st_size:  # stored members cannot hold more than the file: a lie, or a bomb
            raise BundleError(f"{path}: the manifest declares {total} bytes of payload in a file of "
                              f"{path.stat().st_size}; the bundle was altered or is corrupt")
        payload: dict[str, bytes] = {}
        for name, entry in declared.items():
            info = members.get(name)
            if info is None:
                raise BundleError(f"{path}: '{name}' listed in the manifest is missing from the bundle")
            if info.file_size != entry["size"]:
                raise BundleError(
                    f"{path}: '{name}' is {info.file_size} bytes, the manifest says {entry['size']}; "
                    "the bundle was altered or is corrupt"
                )
            payload[name] = _read_verified(path, z, info, entry["sha256"])
        signature = None
        if SIGNATURE_NAME in members:
            info = members[SIGNATURE_NAME]
            if info.file_size > _MAX_SIGNATURE_BYTES:
                raise BundleError(f"{path}: {SIGNATURE_NAME} is {info.file_size} bytes, larger than any signature")
            signature = _read(path, z, info)
    return Bundle(path=path, manifest=manifest, payload=payload, manifest_bytes=raw, signature=signature)


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


def _members(path: Path, z: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by name, after the layout checks that bound what reading them can cost."""
    infos = z.infolist()
    if len(infos) > _MAX_MEMBERS:
        raise BundleError(f"{path}: {len(infos)} members, more than any dexrt bundle has; it was altered")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if info.filename in members:  # zipfile would silently read only the last one
            raise BundleError(f"{path}: member '{info.filename}' appears twice; the bundle was altered")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            # Stored members cost exactly their bytes in the file; a compressed one could expand without bound.
            raise BundleError(f"{path}: member '{info.filename}' is compressed; dexrt bundles store every member "
                              "uncompressed (rebuild it with `dexrt build-engine`)")
        members[info.filename] = info
    return members


def _read(path: Path, z: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return z.read(info)
    except _ZIP_ERRORS as exc:
        raise _unreadable(path, info, exc) from exc


def _unreadable(path: Path, info: zipfile.ZipInfo, exc: BaseException) -> BundleError:
    return BundleError(f"{path}: '{info.filename}' cannot be read ({exc}); the file is truncated or corrupt")


def _read_verified(path: Path, z: zipfile.ZipFile, info: zipfile.ZipInfo, sha256: str) -> bytes:
    """A member's bytes, hashed chunk by chunk as they are read, never more than its recorded size."""
    digest, chunks, left = hashlib.sha256(), [], info.file_size
    try:
        with z.open(info) as f:
            while chunk := f.read(min(_CHUNK, left + 1)):
                left -= len(chunk)
                if left < 0:
                    raise BundleError(f"{path}: '{info.filename}' is longer than recorded; the bundle is corrupt")
                digest.update(chunk)
                chunks.append(chunk)
    except _ZIP_ERRORS as exc:
        raise _unreadable(path, info, exc) from exc
    if left or digest.hexdigest() != sha256:
        raise BundleError(
            f"{path}: checksum mismatch for '{info.filename}'; the bundle was altered or is corrupt "
            "(rebuild it with `dexrt build-engine`)"
        )
    return b"".join(chunks)


def _manifest_of(path: Path, z: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> tuple[dict[str, Any], bytes]:
    info = members.get(MANIFEST_NAME)
    if info is None:
        raise BundleError(f"{path}: not a dexrt engine bundle (no {MANIFEST_NAME})")
    if info.file_size > _MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: manifest is {info.file_size} bytes, larger than any dexrt manifest")
    raw = _read(path, z, info)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except _ZIP_ERRORS as exc:
        raise BundleError(f"{path}: the manifest is not valid JSON ({type(exc).__name__}: {exc})") from exc
    check_manifest(path, manifest)
    return manifest, raw


def check_manifest(path: Path, m: Any) -> None:
    """Every manifest value the runtime uses, checked; BundleError naming the first that is wrong."""

    def bad(what: str) -> BundleError:
        return BundleError(f"{path}: invalid manifest: {what}")

    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise bad(f"'format' is not {FORMAT!r}")
    version = m.get("format_version")
    if not _is_int(version) or version < 1:
        raise bad(f"'format_version' {version!r} is not a version number (1, 2, ...)")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version} is newer than this dexrt reads ({FORMAT_VERSION}); "
            "upgrade dexrt or rebuild the engine"
        )
    backend = m.get("backend")
    if not isinstance(backend, str) or backend not in BACKEND_MEMBERS:
        raise bad(f"'backend' {backend!r} is not one of {', '.join(BACKEND_MEMBERS)}")
    if m.get("device") != BACKEND_DEVICES[backend]:
        raise bad(f"'device' {m.get('device')!r} is not {BACKEND_DEVICES[backend]!r} for the {backend} backend")
    if m.get("precision") not in PRECISIONS:
        raise bad(f"'precision' {m.get('precision')!r} is not one of {', '.join(PRECISIONS)}")
    _check_payload(m.get("payload"), BACKEND_MEMBERS[backend], bad)
    size_multiple = m.get("size_multiple")
    if not _is_int(size_multiple) or not 1 <= size_multiple <= 4096:
        raise bad(f"'size_multiple' {size_multiple!r} is not an integer in [1, 4096]")
    inp, out = m.get("input"), m.get("output")
    if not isinstance(inp, dict) or window_problem(inp.get("window")):
        raise bad(f"'input.window': {window_problem(inp.get('window')) if isinstance(inp, dict) else 'missing'}")
    if not isinstance(out, dict):
        raise bad("'output' is missing")
    windows, channels = out.get("windows"), out.get("channels")
    if not isinstance(windows, list) or not windows or len(windows) > 16:
        raise bad("'output.windows' must be a list of 1 to 16 windows")
    for w in windows:
        if window_problem(w):
            raise bad(f"'output.windows': {window_problem(w)}")
    if not isinstance(channels, list) or len(channels) != len(windows):
        raise bad("'output.channels' must name each output window")
    for c in channels:
        if channel_name_problem(c):
            raise bad(str(channel_name_problem(c)))
    if len({c.lower() for c in channels}) != len(channels):  # a_Bone.png and a_bone.png are one file on some disks
        raise bad(f"'output.channels' {channels} are not unique")
    model = m.get("model", {})
    if not isinstance(model, dict) or not isinstance(model.get("config", {}), dict):
        raise bad("'model' must be an object")
    for where, value in recorded_spacings(m):
        if problem := spacing_problem(value):
            raise bad(f"'{where}' {problem}")


def _check_payload(payload: Any, expected: frozenset[str], bad: Any) -> None:
    if not isinstance(payload, dict):
        raise bad("'payload' must list the payload files")
    for name in payload:
        if not _PAYLOAD_NAME.match(name) or name in (MANIFEST_NAME, SIGNATURE_NAME):
            raise bad(f"payload name {name!r} is not a plain file name")
    if set(payload) != expected:
        raise bad(f"'payload' must list exactly {', '.join(sorted(expected))}, it lists {sorted(payload)}")
    for name, entry in payload.items():
        if not isinstance(entry, dict):
            raise bad(f"payload entry {name!r} is not an object")
        size, digest = entry.get("size"), entry.get("sha256")
        if not _is_int(size) or not 0 <= size <= _MAX_PAYLOAD_BYTES:
            raise bad(f"payload {name!r} has an impossible size {size!r}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise bad(f"payload {name!r} has no valid sha256")


def window_problem(w: Any) -> str | None:
    """Why `w` is not a usable [lo, hi] window of stored values, or None.

    The network's -1..+1 is spread over lo..hi in float32: the span must be one float32 resolves (at least
    1e-6, and 1e-5 of the larger bound), or every output collapses onto one value."""
    if not (isinstance(w, list) and len(w) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         for v in w)):
        return f"{w!r} is not [lo, hi]"
    lo, hi = w
    if not all(abs(v) <= _MAX_WINDOW_VALUE for v in w):  # False for NaN and inf; no float() of huge integers
        return f"{w!r} has a bound that is not a finite number within +-{_MAX_WINDOW_VALUE:g}"
    if not hi - lo >= max(1e-6, 1e-5 * max(abs(lo), abs(hi))):
        return f"{w!r} is empty, reversed or too narrow (lo < hi by at least 1e-6 and 1e-5 of the bounds)"
    return None


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)
