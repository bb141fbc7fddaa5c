"""Fixtures and helpers of the `dexrt serve` tests: the engine, a destination SCP, nodes made and stopped per test,
TLS material (a self-signed node, a small PKI for mutual TLS) and raw connections that never negotiate."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dexrt
from dexrt.pipelines.convert import FOLDER_ENGINE_OPTIONS
from dexrt.pipelines.serve import Node, build_config
from dexrt.pipelines.serve.config import parse_allow, parse_forward
from serve_helpers import LOOPBACK, Destination, client


TIMEOUT = 20.0  # seconds any single wait may take before the test fails


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`dexrt serve` (run in process by CliRunner) installs its own log handler, as a command should; put the
    test session's back afterwards."""
    import logging

    root, node = logging.getLogger(), logging.getLogger("dexrt.pipelines.serve")
    saved = (list(root.handlers), root.level, node.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    node.setLevel(saved[2])


@pytest.fixture(scope="module")
def engine(plain_engine_path: Path) -> Iterator[dexrt.Engine]:
    with dexrt.Engine(plain_engine_path, **FOLDER_ENGINE_OPTIONS) as e:
        yield e


@pytest.fixture
def destination() -> Iterator[Destination]:
    dest = Destination().start()
    yield dest
    dest.stop()


@pytest.fixture
def make_node(tmp_path: Path, engine: dexrt.Engine) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(*forward: str, allow: tuple[str, ...] = ("MODALITY",), start: bool = True, **options: Any) -> Node:
        settings = dict(spool=tmp_path / "spool", host=LOOPBACK, port=0, jobs=2, retry_initial_s=0.2,
                        retry_max_s=1.0, timeout_s=10.0, forward=tuple(parse_forward(f) for f in forward))
        settings.update(options)
        config = build_config(None, allow=tuple(parse_allow(a) for a in allow), **settings)
        node = Node(config, engine)
        nodes.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in nodes:
        if node._server is not None and not node._stopping.is_set():
            node.stop(grace_s=2)


def assert_derived(dest: Destination, sources: list[Any]) -> None:
    """Each source gave a bone and a soft instance: same patient, study and SOP class; new series and instances."""
    got = dest.by_source()
    assert set(got) == {str(s.SOPInstanceUID) for s in sources}
    for src in sources:
        derived = got[str(src.SOPInstanceUID)]
        assert sorted(d.ImageType[2] for d in derived) == ["BONE", "SOFT"]
        for d in derived:
            assert (d.PatientID, d.StudyInstanceUID, d.SOPClassUID) == (src.PatientID, src.StudyInstanceUID,
                                                                        src.SOPClassUID)
            assert d.SOPInstanceUID != src.SOPInstanceUID and d.SeriesInstanceUID != src.SeriesInstanceUID
            assert d.pixel_array.shape == src.pixel_array.shape
        assert derived[0].SeriesInstanceUID != derived[1].SeriesInstanceUID


# -- TLS material and raw connections --------------------------------------------------------------------------------
def self_signed(folder: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    cert, key = folder / "node.pem", folder / "node.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def make_pki(folder: Path) -> dict[str, Path]:
    """A test CA; a node certificate (localhost, 127.0.0.1) and a sender certificate it signed; a sender
    certificate it did not sign (self-signed). EC keys: quick to make."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (needed to make test certificates)")

    def run(*args: Any) -> None:
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    out = {name: folder / f"{name}.pem" for name in ("ca", "node", "sender", "rogue")}
    keys = {name: folder / f"{name}.key" for name in out}
    run("req", "-x509", *ec, "-days", "1", "-subj", "/CN=dexrt test CA", "-keyout", keys["ca"], "-out", out["ca"])
    for name, extension in (("node", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                            ("sender", "extendedKeyUsage=clientAuth")):
        (folder / f"{name}.ext").write_text(extension + "\n")
        run("req", "-new", *ec, "-subj", f"/CN={name}", "-keyout", keys[name], "-out", folder / f"{name}.csr")
        run("x509", "-req", "-in", folder / f"{name}.csr", "-CA", out["ca"], "-CAkey", keys["ca"], "-CAcreateserial",
            "-days", "1", "-extfile", folder / f"{name}.ext", "-out", out[name])
    run("req", "-x509", *ec, "-days", "1", "-subj", "/CN=rogue", "-keyout", keys["rogue"], "-out", out["rogue"])
    return {**out, **{f"{name}_key": key for name, key in keys.items()}}


def sender_tls(pki: dict[str, Path], who: str | None) -> Any:
    import ssl

    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if who is not None:
        context.load_cert_chain(pki[who], pki[f"{who}_key"])
    return context


def idle_connections(port: int, count: int) -> list[Any]:
    """`count` TCP connections to the node that never send a byte (no ClientHello, no A-ASSOCIATE-RQ)."""
    import socket

    return [socket.create_connection((LOOPBACK, port), timeout=5) for _ in range(count)]


def echo_within_15_s(port: int, tls: Any = None) -> None:
    """An allowed sender's C-ECHO, failing unless it completes within 15 s (5 s to connect, 10 s to associate)."""
    ae = client()
    ae.connection_timeout, ae.acse_timeout, ae.dimse_timeout = 5, 10, 10
    assoc = ae.associate(LOOPBACK, port, ae_title="DEXRT", tls_args=(tls, "localhost") if tls else None)
    assert assoc.is_established, "the allowed sender got no association"
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def closed_by_node(sockets: list[Any], within_s: float) -> bool:
    """Every socket sees the node close it (EOF or reset) within `within_s`."""
    for sock in sockets:
        sock.settimeout(within_s)
        try:
            if sock.recv(1):
                return False
        except ConnectionResetError:
            pass
        except TimeoutError:
            return False
    return True
