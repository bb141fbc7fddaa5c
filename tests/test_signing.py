"""Signed engines: keygen, signing at build time and afterwards, trusted keys, and the load policy (unsigned or
wrongly signed bundles load only where signatures are not required, with a warning)."""

from __future__ import annotations

import json
import logging
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import dexrt
from dexrt.runtime.bundle import MANIFEST_NAME, SIGNATURE_NAME, read_bundle
from dexrt.cli import cli
from dexrt.models import DEFAULT_ENGINE
from dexrt.runtime.signing import ENV_TRUSTED_KEYS, PROJECT_KEYS, generate_keypair, read_trusted_keys

pytest.importorskip("cryptography")


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private key, public key file) made by `dexrt keygen`."""
    key = tmp_path_factory.mktemp("keys") / "team.pem"
    result = run("keygen", key, "--name", "team")
    assert result.exit_code == 0, result.output
    return key, Path(f"{key}.pub")


@pytest.fixture(scope="module")
def signed(plain_onnx: Path, keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("signed") / "signed.dexrt"
    result = run("build-engine", plain_onnx, "-o", path, "--size-multiple", "64", "--sign", keys[0])
    assert result.exit_code == 0, result.output
    assert "signed by key" in result.output
    return path


@pytest.fixture(autouse=True)
def no_user_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_TRUSTED_KEYS, "")  # the machine's own trusted-keys files never leak into a test
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def test_keygen_writes_a_private_key_only_its_owner_reads(keys: tuple[Path, Path]) -> None:
    key, pub = keys
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    [public] = read_trusted_keys(pub)
    assert public.name == "team" and len(public.raw) == 32
    again = run("keygen", key)
    assert again.exit_code == 1 and "refusing to overwrite" in again.output


def test_signed_by_a_trusted_key_loads_silently(signed: Path, keys: tuple[Path, Path], caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="dexrt.runtime.signing"):
        engine = dexrt.Engine(signed, trusted_keys=[keys[1]], require_signed=True)
    assert engine.signer is not None and engine.signer.name == "team"
    assert not caplog.records


def test_trusted_keys_from_the_environment(signed: Path, keys: tuple[Path, Path], monkeypatch) -> None:
    with pytest.raises(dexrt.BundleError, match="not a trusted key"):
        dexrt.Engine(signed, require_signed=True)
    monkeypatch.setenv(ENV_TRUSTED_KEYS, str(keys[1]))
    assert dexrt.Engine(signed, require_signed=True).signer.name == "team"


def test_trusted_keys_from_the_user_config(signed: Path, keys: tuple[Path, Path], monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(ENV_TRUSTED_KEYS)
    (tmp_path / "config" / "dexrt").mkdir(parents=True)
    shutil.copy(keys[1], tmp_path / "config" / "dexrt" / "trusted_keys")
    assert dexrt.Engine(signed, require_signed=True).signer.name == "team"


def test_unsigned_loads_only_where_not_required_and_says_so(plain_engine_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="dexrt.runtime.signing"):
        engine = dexrt.Engine(plain_engine_path)
    assert engine.signer is None
    assert "it is not signed; loading it anyway" in caplog.text
    with pytest.raises(dexrt.BundleError, match="a signed engine is required, and it is not signed"):
        dexrt.Engine(plain_engine_path, require_signed=True)


def test_untrusted_signer_loads_only_where_not_required(signed: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="dexrt.runtime.signing"):
        assert dexrt.Engine(signed).signer is None
    assert "which is not a trusted key" in caplog.text


def _edit_member(path: Path, name: str, edit) -> None:
    with zipfile.ZipFile(path) as z:
        data = {n: z.read(n) for n in z.namelist()}
    data[name] = edit(data[name])
    with zipfile.ZipFile(path, "w") as z:
        for n, blob in data.items():
            z.writestr(n, blob)


def test_manifest_altered_after_signing(signed: Path, keys: tuple[Path, Path], tmp_path: Path, caplog) -> None:
    # Checksums stay valid (the payload is untouched); only the signature notices the new window.
    path = Path(shutil.copy(signed, tmp_path / "altered.dexrt"))
    _edit_member(path, MANIFEST_NAME, lambda b: b.replace(b'"window": [\n      0.0,\n      65535.0',
                                                          b'"window": [\n      0.0,\n      65534.0'))
    assert read_bundle(path).manifest["input"]["window"] == [0.0, 65534.0]
    with pytest.raises(dexrt.BundleError, match="does not match its manifest"):
        dexrt.Engine(path, trusted_keys=[keys[1]], require_signed=True)
    with caplog.at_level(logging.WARNING, logger="dexrt.runtime.signing"):
        assert dexrt.Engine(path, trusted_keys=[keys[1]]).signer is None
    assert "does not match its manifest" in caplog.text


@pytest.mark.parametrize("garbage", [b"", b"{}", b"[[[[", b'{"algorithm": "ed25519", "public_key": "AAAA"}',
                                     json.dumps({"algorithm": "rsa"}).encode()])
def test_malformed_signature_member(signed: Path, keys: tuple[Path, Path], tmp_path: Path, garbage: bytes) -> None:
    path = Path(shutil.copy(signed, tmp_path / "bad.dexrt"))
    _edit_member(path, SIGNATURE_NAME, lambda _: garbage)
    with pytest.raises(dexrt.BundleError, match="malformed"):
        dexrt.Engine(path, trusted_keys=[keys[1]], require_signed=True)


def test_sign_an_existing_bundle(plain_engine_path: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "resigned.dexrt"
    result = run("sign", plain_engine_path, "--key", keys[0], "-o", out)
    assert result.exit_code == 0, result.output
    before, after = read_bundle(plain_engine_path), read_bundle(out)
    assert after.manifest_bytes == before.manifest_bytes and after.payload == before.payload
    assert dexrt.Engine(out, trusted_keys=[keys[1]], require_signed=True).signer.name == "team"


def test_sign_refuses_a_foreign_key(plain_engine_path: Path, tmp_path: Path) -> None:
    key = tmp_path / "rsa.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    result = run("build-engine", "missing.onnx", "-o", tmp_path / "x.dexrt", "--sign", key)
    assert result.exit_code == 1 and "dexrt signs with Ed25519 keys" in result.output


def test_default_model_is_signed_by_the_shipped_project_key() -> None:
    engine = dexrt.Engine(DEFAULT_ENGINE, require_signed=True)
    [project] = read_trusted_keys(PROJECT_KEYS)
    assert engine.signer == project


def test_no_private_key_in_the_package() -> None:
    root = Path(dexrt.__file__).parent
    leaks = [p for p in root.rglob("*") if p.is_file() and p.suffix != ".so" and b"PRIVATE KEY" in p.read_bytes()]
    assert not leaks


def test_infer_require_signed(plain_engine_path: Path, tmp_path: Path) -> None:
    import numpy as np

    from dexrt.io.images import write_image

    write_image(tmp_path / "a.png", np.full((16, 16), 1000, np.uint16))
    refused = run("infer", tmp_path / "a.png", "-o", tmp_path / "out", "--engine", plain_engine_path,
                  "--require-signed")
    assert refused.exit_code == 1 and "a signed engine is required" in refused.output
    assert not (tmp_path / "out").exists()
    default = run("infer", tmp_path / "a.png", "-o", tmp_path / "out", "--require-signed")
    assert default.exit_code == 0, default.output
    assert (tmp_path / "out" / "a_bone.png").exists()


def test_engine_from_in_memory_parts_is_trusted_without_a_warning(plain_engine_path: Path, caplog) -> None:
    # build-engine's smoke test and the benchmarks load parts made in this process: no "not signed" noise there.
    bundle = read_bundle(plain_engine_path)
    with caplog.at_level(logging.WARNING, logger="dexrt.runtime.signing"):
        engine = dexrt.Engine.from_parts(bundle.manifest, bundle.payload, require_signed=True)
    assert engine.signer is not None and not caplog.records


# -- trusted-keys files: only their owner may write them (as ssh's authorized_keys) --------------------------------
@pytest.mark.parametrize("unsafe", ["file-0666", "file-0620", "folder-0777"])
def test_trusted_keys_writable_by_others_are_refused(signed: Path, keys: tuple[Path, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, unsafe: str) -> None:
    from dexrt.runtime.signing import SigningError

    folder = tmp_path / "keys"
    folder.mkdir(mode=0o755)
    copy = folder / "trusted_keys"
    shutil.copy(keys[1], copy)
    copy.chmod(0o644)
    monkeypatch.setenv(ENV_TRUSTED_KEYS, str(copy))
    assert dexrt.Engine(signed, require_signed=True).signer.name == "team"  # safe as made: trusted
    if unsafe == "folder-0777":
        folder.chmod(0o777)
    else:
        copy.chmod(int(unsafe[-4:], 8))
    with pytest.raises(SigningError, match="writable by others"):
        dexrt.Engine(signed, require_signed=True)
    with pytest.raises(SigningError, match="writable by others"):  # also when passed by path
        dexrt.Engine(signed, trusted_keys=[copy], require_signed=True)


def test_sticky_folder_like_tmp_is_fine_for_ones_own_file(keys: tuple[Path, Path], tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o1777)  # like /tmp: others may add files, but cannot replace ours
    copy = Path(shutil.copy(keys[1], folder / "trusted_keys"))
    assert [k.name for k in read_trusted_keys(copy)] == ["team"]


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() != 0,
                    reason="giving a file to another user needs root")
def test_trusted_keys_owned_by_another_user_are_refused(keys: tuple[Path, Path], tmp_path: Path) -> None:
    import os

    from dexrt.runtime.signing import SigningError

    copy = Path(shutil.copy(keys[1], tmp_path / "theirs"))
    os.chown(copy, 65534, 65534)  # nobody
    with pytest.raises(SigningError, match="belongs to another user"):
        read_trusted_keys(copy)


def test_relative_trusted_keys_path_in_the_environment_is_refused(signed: Path, keys: tuple[Path, Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from dexrt.runtime.signing import SigningError

    monkeypatch.chdir(keys[1].parent)
    monkeypatch.setenv(ENV_TRUSTED_KEYS, keys[1].name)  # exists in this working folder, and only in this one
    with pytest.raises(SigningError, match="not an absolute path"):
        dexrt.Engine(signed, require_signed=True)


def test_serve_requires_a_signed_engine_unless_allowed(plain_engine_path: Path, tmp_path: Path) -> None:
    """`dexrt serve` refuses an unsigned engine by default; --allow-unsigned (allow_unsigned = true) runs it."""
    pytest.importorskip("pynetdicom")
    base = ["serve", "--check", "--json", "--allow-ae", "MODALITY", "--spool", tmp_path / "spool",
            "--output", tmp_path / "out", "--engine", plain_engine_path]
    refused = run(*base)
    assert refused.exit_code == 1
    engine = json.loads(refused.stdout)["checks"][0]
    assert engine["check"] == "engine" and not engine["ok"] and "a signed engine is required" in engine["detail"]
    allowed = run(*base, "--allow-unsigned")
    assert allowed.exit_code == 0, allowed.output
    both = run(*base, "--allow-unsigned", "--require-signed")
    assert both.exit_code == 2 and "contradict" in both.output
    (tmp_path / "serve.toml").write_text(f'spool = "spool"\noutput = "out"\nengine = "{plain_engine_path}"\n'
                                         'allow_unsigned = true\n[[allow]]\nae_title = "MODALITY"\n')
    from_file = run("serve", "--check", "--config", tmp_path / "serve.toml")
    assert from_file.exit_code == 0, from_file.output
