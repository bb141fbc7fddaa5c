"""Signed engines: who made a bundle, proven with an Ed25519 signature over its manifest.

A bundle's SHA-256s prove that its payload matches its manifest; anyone can recompute them. A signed bundle also
holds `signature.json`: an Ed25519 signature (by the ``cryptography`` package) over the exact bytes of
`manifest.json`, whose checksums cover every payload file, so one signature vouches for the whole engine.

Keys (`dexrt keygen`): the private key is a PKCS#8 PEM file, written readable by its owner only; the public key is
one line, ``ed25519 <base64 of the 32 key bytes> [name]``. A **trusted-keys file** holds such lines (blank lines
and ``#`` comments ignored). The keys an `Engine` trusts, unless ``trusted_keys=`` names them:

* the dexrt project's key, shipped in the package (`dexrt/models/trusted_keys`; it signs the bundled model);
* the files listed in ``DEXRT_TRUSTED_KEYS`` (absolute paths separated by ``os.pathsep``), or, when that variable
  is not set, ``$XDG_CONFIG_HOME/dexrt/trusted_keys`` (``~/.config/dexrt/trusted_keys``) if it exists.

A trusted-keys file decides which engines run, so, as ssh does with ``authorized_keys``, one that someone else could
have written is refused (:func:`check_private`): the file and every folder above it must belong to the current user
or root and must not be writable by group or others (a sticky folder such as ``/tmp`` may be: nobody else can
replace what is in it). A relative path in ``DEXRT_TRUSTED_KEYS`` is refused too: it would name a different file
from every working folder.

An unsigned bundle, one signed by a key not trusted, or one whose signature does not verify loads only where
signatures are not required, with a logged warning; with ``require_signed`` it is a `BundleError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dexrt._atomic import atomic_write
from dexrt._errors import BundleError, DexrtError, require_package

log = logging.getLogger(__name__)

ALGORITHM = "ed25519"
ENV_TRUSTED_KEYS = "DEXRT_TRUSTED_KEYS"
PROJECT_KEYS = Path(__file__).parent.parent / "models" / "trusted_keys"
_INSTALL = "install it with: pip install cryptography"


class SigningError(DexrtError, ValueError):
    """A key file is unreadable or not an Ed25519 key, or signing support is not installed."""


@dataclass(frozen=True)
class PublicKey:
    raw: bytes  # the 32 key bytes
    name: str = ""

    @property
    def key_id(self) -> str:
        """A short fingerprint: the first 16 hex digits of the SHA-256 of the key bytes."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def line(self) -> str:
        return f"{ALGORITHM} {base64.b64encode(self.raw).decode()}" + (f" {self.name}" if self.name else "")

    def __str__(self) -> str:
        return f"{self.name} ({self.key_id})" if self.name else self.key_id


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a bundle's signature: ``trusted`` with the key that signed it, or why not."""

    trusted: bool
    reason: str  # "signed by <key>" or why the bundle is not trusted
    signer: PublicKey | None = None


def _crypto() -> Any:
    return require_package("cryptography.hazmat.primitives.asymmetric.ed25519", "signing or checking an engine",
                           _INSTALL, "the 'cryptography' package")


# -- keys -------------------------------------------------------------------------------------------------------
def generate_keypair(private_path: str | os.PathLike[str], name: str = "") -> PublicKey:
    """Write a new Ed25519 private key to `private_path` (PEM, mode 0600) and its public key line to
    `private_path` + ``.pub``; returns the public key. Refuses to overwrite either file."""
    from cryptography.hazmat.primitives import serialization

    ed25519 = _crypto()
    private_path = Path(private_path)
    public_path = Path(f"{private_path}.pub")
    for p in (private_path, public_path):
        if p.exists():
            raise SigningError(f"{p}: already exists; refusing to overwrite a key")
    if not name.isprintable():
        raise ValueError(f"a key name must be one printable line, got {name!r}")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # Created 0600 before any byte is written: the key is never readable by others, not even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = public_key_of(key, name)
    with atomic_write(public_path) as f:
        f.write((public.line() + "\n").encode())
    return public


def ephemeral_key() -> Any:
    """A new Ed25519 private key that lives only in memory (for parts made and loaded in one process)."""
    return _crypto().Ed25519PrivateKey.generate()


def load_private_key(path: str | os.PathLike[str]) -> Any:
    """An Ed25519 private key from a PEM file (as `dexrt keygen` writes); SigningError otherwise."""
    from cryptography.hazmat.primitives import serialization

    ed25519 = _crypto()
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the signing key ({exc})") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:  # garbage, an encrypted key, an unsupported key type
        raise SigningError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningError(f"{path}: a {type(key).__name__}; dexrt signs with Ed25519 keys (dexrt keygen)")
    return key


def parse_public_key(text: str, where: str = "key") -> PublicKey:
    """``ed25519 <base64> [name]`` (or the base64 alone) -> PublicKey; SigningError naming `where` otherwise."""
    parts = text.strip().split(maxsplit=2)
    if parts and parts[0] == ALGORITHM:
        parts = parts[1:]
    if not parts:
        raise SigningError(f"{where}: no key")
    try:
        raw = base64.b64decode(parts[0], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise SigningError(f"{where}: not an Ed25519 public key (expected '{ALGORITHM} <base64 of 32 bytes>')")
    return PublicKey(raw, parts[1] if len(parts) > 1 else "")


def check_private(path: str | os.PathLike[str]) -> None:
    """SigningError unless `path` (a trusted-keys file) and every folder above it belong to this user or root and
    are not writable by group or others; a sticky folder (``/tmp``) may be, its entries are checked by owner."""
    given = Path(os.path.abspath(path))
    try:
        real = given.resolve(strict=True)
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the trusted keys ({exc.strerror or exc})") from exc
    me = os.geteuid()
    for chain in ((given, *given.parents), (real, *real.parents)):
        for i, p in enumerate(chain):
            try:
                st = os.stat(p)
            except OSError as exc:
                raise SigningError(f"{path}: cannot check {p} ({exc.strerror or exc})") from exc
            what = "trusted-keys file" if i == 0 else "folder"
            if i == 0 and not stat.S_ISREG(st.st_mode):
                raise SigningError(f"{path}: not a regular file")
            if st.st_uid not in (0, me):
                raise SigningError(f"{path}: refusing it: the {what} {p} belongs to another user (uid {st.st_uid}), "
                                   "who could change which engines are trusted")
            sticky_folder = i > 0 and st.st_mode & stat.S_ISVTX
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_folder:
                raise SigningError(f"{path}: refusing it: the {what} {p} is writable by others (mode "
                                   f"{stat.S_IMODE(st.st_mode):04o}), so anyone could add a key (chmod go-w {p})")


def read_trusted_keys(path: str | os.PathLike[str], *, private: bool = True) -> list[PublicKey]:
    """The keys of a trusted-keys file (one per line; blank lines and # comments ignored). With `private` (the
    default) the file must pass :func:`check_private`; the package's own file is read without it."""
    path = Path(path)
    if private:
        check_private(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningError(f"{path}: cannot read the trusted keys ({exc})") from exc
    return [parse_public_key(line, f"{path}:{n}") for n, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")]


def default_trusted_keys() -> list[PublicKey]:
    """The project's key plus the user's trusted-keys files (see the module docstring)."""
    # The package's own file: whoever can change it can change the code that checks it.
    keys = read_trusted_keys(PROJECT_KEYS, private=False) if PROJECT_KEYS.is_file() else []
    listed = os.environ.get(ENV_TRUSTED_KEYS)
    if listed is not None:
        files = [Path(p) for p in listed.split(os.pathsep) if p]
        for f in files:
            if not f.is_absolute():
                raise SigningError(f"{ENV_TRUSTED_KEYS}: {str(f)!r} is not an absolute path (a relative one would "
                                   "name another file from every working folder)")
    else:
        config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        files = [p for p in (config / "dexrt" / "trusted_keys",) if p.is_file()]
    for f in files:
        keys.extend(read_trusted_keys(f))
    return keys


def as_public_keys(keys: Iterable[Any]) -> list[PublicKey]:
    """``trusted_keys=`` items: PublicKey, a key line or base64 string, 32 raw bytes, or a path to a
    trusted-keys file (os.PathLike)."""
    out: list[PublicKey] = []
    for k in keys:
        if isinstance(k, PublicKey):
            out.append(k)
        elif isinstance(k, os.PathLike):
            out.extend(read_trusted_keys(k))
        elif isinstance(k, bytes) and len(k) == 32:
            out.append(PublicKey(k))
        elif isinstance(k, str):
            out.append(parse_public_key(k))
        else:
            raise TypeError(f"a trusted key is a key line, 32 raw bytes or a path to a keys file, got {k!r}")
    return out


def public_key_of(private_key: Any, name: str = "") -> PublicKey:
    from cryptography.hazmat.primitives import serialization

    return PublicKey(private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                           serialization.PublicFormat.Raw), name)


# -- signing and verifying ----------------------------------------------------------------------------------------
def signature_member(manifest: bytes, private_key: Any) -> bytes:
    """The `signature.json` member signing `manifest` (the exact bytes of `manifest.json`)."""
    member = {"algorithm": ALGORITHM, "public_key": base64.b64encode(public_key_of(private_key).raw).decode(),
              "signature": base64.b64encode(private_key.sign(manifest)).decode()}
    return (json.dumps(member, indent=2, sort_keys=True) + "\n").encode()


def verify(manifest: bytes, signature: bytes | None, trusted: Iterable[PublicKey]) -> Verdict:
    """Is `manifest` signed by one of `trusted`? Never raises for a bad signature: the verdict says why."""
    if signature is None:
        return Verdict(False, "it is not signed")
    try:
        member = json.loads(signature.decode("utf-8"))
        if not isinstance(member, dict) or member.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm is not {ALGORITHM}")
        key = parse_public_key(str(member.get("public_key", "")), "signature.json")
        sig = base64.b64decode(str(member.get("signature", "")), validate=True)
    except (ValueError, UnicodeDecodeError, RecursionError, binascii.Error) as exc:
        return Verdict(False, f"its signature.json is malformed ({exc})")
    by_raw = {k.raw: k for k in trusted}
    if key.raw not in by_raw:
        return Verdict(False, f"it is signed by key {key.key_id}, which is not a trusted key")
    ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature

    try:
        ed25519.Ed25519PublicKey.from_public_bytes(key.raw).verify(sig, manifest)
    except InvalidSignature:
        return Verdict(False, f"its signature by {by_raw[key.raw]} does not match its manifest (altered since "
                              "signing)")
    return Verdict(True, f"signed by {by_raw[key.raw]}", by_raw[key.raw])


def check_origin(path: Path, manifest: bytes, signature: bytes | None, *, trusted_keys: Iterable[Any] | None,
                 require_signed: bool) -> Verdict:
    """The signature policy of loading an engine: a trusted signature passes; anything else is a BundleError
    when `require_signed`, else a logged warning."""
    trusted = default_trusted_keys() if trusted_keys is None else as_public_keys(trusted_keys)
    try:
        verdict = verify(manifest, signature, trusted)
    except SigningError as exc:  # cryptography missing: a signature cannot be checked
        if require_signed:
            raise BundleError(f"{path}: a signed engine is required and {exc}") from exc
        verdict = Verdict(False, f"its signature cannot be checked ({exc})")
    if not verdict.trusted:
        if require_signed:
            raise BundleError(f"{path}: a signed engine is required, and {verdict.reason} "
                              f"(trusted keys: {', '.join(map(str, trusted)) or 'none'}; see docs/runtime.md)")
        log.warning("%s: %s; loading it anyway because signatures are not required", path, verdict.reason)
    return verdict
