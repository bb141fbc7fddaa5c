"""`dexrt serve` under a hostile network: TLS and mutual TLS, connections that never finish negotiating, floods,
bytes that are not DICOM; and DCMTK's clients and server (where installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")

from dexrt.pipelines.serve import Node  # noqa: E402
from serve_helpers import (  # noqa: E402
    CR, DX, LOOPBACK, Destination, client, free_port, radiograph, send, wait_until,
)
from serve_fixtures import (  # noqa: E402,F401  (fixtures, by name)
    TIMEOUT, _restore_logging, assert_derived, closed_by_node, destination, echo_within_15_s, engine,
    idle_connections, make_node, make_pki, self_signed, sender_tls,
)

def dcmtk_tool(name: str) -> str | None:
    """The path of DCMTK's `name` on PATH, passing over same-named tools of other packages (pynetdicom installs an
    echoscu and a storescu of its own into an environment's bin folder, which an activated venv puts first)."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which(name, path=folder)
        if path is None:
            continue
        try:
            version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (version.stdout + version.stderr).lower():
            return path
    return None


DCMTK = {tool: dcmtk_tool(tool) for tool in ("storescu", "echoscu", "storescp")}
dcmtk = pytest.mark.skipif(None in DCMTK.values(),
                           reason="DCMTK (storescu, echoscu, storescp) is not installed: apt-get install dcmtk")


def test_tls_in_and_out(make_node: Callable[..., Node], tmp_path: Path) -> None:
    """TLS on the listening port, and to a destination that speaks only TLS."""
    import ssl

    from dexrt.pipelines.serve.config import Destination as Forward
    from dexrt.pipelines.serve.contexts import server_tls

    cert, key = self_signed(tmp_path)
    secure = Destination().start(ssl_context=server_tls(cert, key, None))
    try:
        node = make_node(tls_cert=cert, tls_key=key,
                         forward=(Forward("PACS", LOOPBACK, secure.port, tls=True, tls_ca=cert),))
        context = ssl.create_default_context(cafile=str(cert))
        assoc = client().associate(LOOPBACK, node.port, ae_title="DEXRT", tls_args=(context, "localhost"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        ds = radiograph(64)
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
        wait_until(lambda: len(secure.unique()) == 2, TIMEOUT, "outputs at the TLS destination")
        assert_derived(secure, [ds])
        plain = client().associate(LOOPBACK, node.port, ae_title="DEXRT")  # no TLS: no association
        assert not plain.is_established
    finally:
        secure.stop()


def test_idle_connections_never_take_the_allowed_senders_slots(make_node: Callable[..., Node],
                                                               destination: Destination) -> None:
    """Connections that never send their association request are handled off pynetdicom's hands: 17 of them
    against max_associations 4 lock nobody out, 40 held open leave an allowed C-ECHO working, and each is closed
    by the node after handshake_s."""
    node = make_node(destination.address, max_associations=4, handshake_s=1.0)
    burst = idle_connections(node.port, 17)
    try:
        echo_within_15_s(node.port)
        time.sleep(1.0)
    finally:
        for sock in burst:  # the red team's script: 17 connections closed after a second; then a real sender
            sock.close()
    echo_within_15_s(node.port)
    held = idle_connections(node.port, 40)
    try:
        echo_within_15_s(node.port)
        assert closed_by_node(held, within_s=5.0)
    finally:
        for sock in held:
            sock.close()
    assert node.stats["connections_dropped"] >= 40 and not node.stats["associations_rejected"]


def test_tls_connection_that_never_says_hello_blocks_no_one_and_no_stop(make_node: Callable[..., Node],
                                                                        destination: Destination,
                                                                        tmp_path: Path) -> None:
    """A TLS node with connections that never send a ClientHello (40 of them): other senders complete TLS and
    associate at once, the silent ones are closed after handshake_s, and stop() returns within its grace time
    while one is still connected."""
    pki = make_pki(tmp_path)
    node = make_node(destination.address, tls_cert=pki["node"], tls_key=pki["node_key"], handshake_s=1.0)
    silent = idle_connections(node.port, 40)
    try:
        echo_within_15_s(node.port, sender_tls(pki, None))
        assert closed_by_node(silent, within_s=5.0)
    finally:
        for sock in silent:
            sock.close()
    lingering = idle_connections(node.port, 1)
    stopper = threading.Thread(target=node.stop, kwargs={"grace_s": 2.0})
    try:
        stopper.start()
        stopper.join(8.0)
    finally:
        lingering[0].close()
    assert not stopper.is_alive(), "stop() waited on a connection that never said hello"


def test_mutual_tls(make_node: Callable[..., Node], destination: Destination, tmp_path: Path) -> None:
    """--tls-ca: a sender with a certificate signed by that CA associates; one without a certificate, or with one
    the CA did not sign, gets no association, and the node says why."""
    import logging

    pki = make_pki(tmp_path)
    node = make_node(destination.address, tls_cert=pki["node"], tls_key=pki["node_key"], tls_ca=pki["ca"])
    echo_within_15_s(node.port, sender_tls(pki, "sender"))
    dropped: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: dropped.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("dexrt.pipelines.serve").addHandler(handler)
    try:
        for who in (None, "rogue"):
            ae = client()
            ae.acse_timeout = 5
            assoc = ae.associate(LOOPBACK, node.port, ae_title="DEXRT", tls_args=(sender_tls(pki, who), "localhost"))
            assert not assoc.is_established, who
        wait_until(lambda: len([m for m in dropped if "TLS handshake failed" in m]) == 2, TIMEOUT, "two refusals")
    finally:
        logging.getLogger("dexrt.pipelines.serve").removeHandler(handler)
    assert node.stats["connections_dropped"] == 2
    echo_within_15_s(node.port, sender_tls(pki, "sender"))  # and the right sender still gets in


def test_a_flood_of_connections_drops_the_oldest_first(make_node: Callable[..., Node], destination: Destination,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """More connections waiting than MAX_PENDING: the oldest are closed at once (not after handshake_s), so file
    descriptors stay bounded, and a sender arriving now, whose request follows its connection within
    milliseconds, still gets in."""
    from dexrt.pipelines.serve import gate

    monkeypatch.setattr(gate, "MAX_PENDING", 8)
    node = make_node(destination.address, handshake_s=30.0)
    flood = idle_connections(node.port, 12)
    try:
        assert closed_by_node(flood[:4], within_s=5.0)
        echo_within_15_s(node.port)
    finally:
        for sock in flood:
            sock.close()
    assert node.stats["connections_dropped"] >= 5  # four of the flood, then one more for the sender's connection


def test_a_sender_chosen_value_never_starts_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from dexrt.pipelines.serve.logs import event

    with caplog.at_level(logging.INFO, logger="dexrt.pipelines.serve"):
        event("association_rejected", calling_ae="EVIL\nforged line", address="127.0.0.1")
    assert "\n" not in caplog.records[0].getMessage() and '"EVIL\\nforged line"' in caplog.records[0].getMessage()


def test_first_bytes_that_are_not_an_association_request_are_dropped(make_node: Callable[..., Node],
                                                                      destination: Destination) -> None:
    node = make_node(destination.address, handshake_s=30.0)
    [web] = idle_connections(node.port, 1)
    try:
        web.sendall(b"GET / HTTP/1.1\r\nHost: dexrt\r\n\r\n")
        assert closed_by_node([web], within_s=5.0)  # at once, not after handshake_s
    finally:
        web.close()
    wait_until(lambda: node.stats["connections_dropped"] == 1, TIMEOUT, "the drop counted")
    echo_within_15_s(node.port)


@dcmtk
def test_dcmtk_echoscu_and_storescu(make_node: Callable[..., Node], destination: Destination,
                                    tmp_path: Path) -> None:
    node = make_node(destination.address)
    echo = subprocess.run([DCMTK["echoscu"], "-aet", "MODALITY", "-aec", "DEXRT", LOOPBACK, str(node.port)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert echo.returncode == 0, echo.stderr
    files = []
    for i, sop_class in enumerate((CR, DX)):
        ds = radiograph(96, sop_class, i)
        files.append(tmp_path / f"in{i}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    store = subprocess.run([DCMTK["storescu"], "-aet", "MODALITY", "-aec", "DEXRT", LOOPBACK, str(node.port),
                            *map(str, files)], capture_output=True, text=True, timeout=TIMEOUT)
    assert store.returncode == 0, store.stderr
    wait_until(lambda: len(destination.unique()) == 4, TIMEOUT, "outputs of the DCMTK-sent instances")
    from pydicom import dcmread

    assert_derived(destination, [dcmread(f) for f in files])
    stranger = subprocess.run([DCMTK["echoscu"], "-aet", "STRANGER", "-aec", "DEXRT", LOOPBACK, str(node.port)],
                              capture_output=True, text=True, timeout=TIMEOUT)
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr


@dcmtk
def test_dcmtk_sender_over_mutual_tls(make_node: Callable[..., Node], destination: Destination,
                                      tmp_path: Path) -> None:
    """A third-party TLS client (DCMTK's echoscu +tls): with a certificate the node's --tls-ca signed it gets its
    C-ECHO answered; with one that CA did not sign it gets no association."""
    pki = make_pki(tmp_path)
    node = make_node(destination.address, tls_cert=pki["node"], tls_key=pki["node_key"], tls_ca=pki["ca"])

    def echoscu(who: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DCMTK["echoscu"], "+tls", str(pki[f"{who}_key"]), str(pki[who]), "+cf", str(pki["ca"]),
                               "-aet", "MODALITY", "-aec", "DEXRT", LOOPBACK, str(node.port)],
                              check=False, capture_output=True, text=True, timeout=TIMEOUT)

    trusted = echoscu("sender")
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert echoscu("rogue").returncode != 0
    wait_until(lambda: node.stats["connections_dropped"] == 1, TIMEOUT, "the refusal counted")


@dcmtk
def test_forwarding_to_dcmtk_storescp(make_node: Callable[..., Node], tmp_path: Path) -> None:
    """A third-party C-STORE SCP as the destination: DCMTK's storescp writes what it receives to a folder."""
    from pydicom import dcmread

    port, received = free_port(), tmp_path / "storescp"
    received.mkdir()
    scp = subprocess.Popen([DCMTK["storescp"], "-aet", "ARCHIVE", "-od", str(received), str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        node = make_node(f"ARCHIVE@{LOOPBACK}:{port}")
        sources = [radiograph(64, CR, 1), radiograph(64, DX, 2)]
        assert send(sources, node.port) == [0x0000, 0x0000]
        # storescp answers Success only once a file is written: wait for the answers, not for the files to appear
        wait_until(lambda: node.stats["forwarded"] == 4, TIMEOUT, "four instances accepted by storescp")
        assert len(list(received.iterdir())) == 4
        got = [dcmread(p) for p in received.iterdir()]
        assert {str(d.SourceImageSequence[0].ReferencedSOPInstanceUID) for d in got} == {
            str(s.SOPInstanceUID) for s in sources}
    finally:
        scp.terminate()
        scp.wait(TIMEOUT)
