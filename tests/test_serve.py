"""`dexrt serve`: a DICOM node tested with real DICOM clients on 127.0.0.1 (pynetdicom; DCMTK where installed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pynetdicom")

import dexrt  # noqa: E402
from dexrt._errors import ConfigError, InputError  # noqa: E402
from dexrt.pipelines.convert import FOLDER_ENGINE_OPTIONS  # noqa: E402
from dexrt.pipelines.serve import Node, build_config  # noqa: E402
from dexrt.pipelines.serve.config import parse_allow, parse_forward  # noqa: E402
from serve_helpers import (  # noqa: E402
    CR, DX, DX_PROCESSING, LOOPBACK, RF, XA, Destination, client, free_port, radiograph, send, wait_until,
)

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


def test_echo_and_round_trip_of_each_storage_class(make_node: Callable[..., Node], destination: Destination,
                                          tmp_path: Path) -> None:
    node = make_node(destination.address, output=tmp_path / "out")
    assoc = client().associate(LOOPBACK, node.port, ae_title="DEXRT")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    sources = [radiograph(128, CR, 1), radiograph(96, DX, 2), radiograph(64, DX_PROCESSING, 3),
               radiograph(64, XA, 4, frames=3), radiograph(64, RF, 5, frames=2)]
    assert send(sources, node.port) == [0x0000] * 5
    wait_until(lambda: len(destination.unique()) == 10, TIMEOUT, "ten derived instances at the destination")
    assert_derived(destination, sources)
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 10
    wait_until(lambda: node.spool.counts()[f"outbox:{node.config.forward[0].key}"] == 0, TIMEOUT, "empty outbox")
    assert node.spool.counts()["received"] == 0 and node.stats["received"] == node.stats["converted"] == 5


def test_compressed_instance_round_trip(make_node: Callable[..., Node], destination: Destination) -> None:
    """An RLE Lossless instance is accepted; its derived instances (RLE too, when pydicom can encode it) reach a
    destination that takes only uncompressed syntaxes, decompressed on the way."""
    from pydicom.uid import RLELossless

    node = make_node(destination.address)
    ds = radiograph(64, DX, 5)
    ds.compress(RLELossless, generate_instance_uid=False)
    ae = client()
    ae.add_requested_context(DX, RLELossless)
    assoc = ae.associate(LOOPBACK, node.port, ae_title="DEXRT")
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    wait_until(lambda: len(destination.unique()) == 2, TIMEOUT, "the outputs")
    assert_derived(destination, [ds])
    assert {str(d.file_meta.TransferSyntaxUID) for d in destination.received} <= {"1.2.840.10008.1.2.1",
                                                                                  "1.2.840.10008.1.2"}


def test_unknown_calling_ae_rejected(make_node: Callable[..., Node], destination: Destination) -> None:
    node = make_node(destination.address, allow=("MODALITY", "REMOTE@10.0.0.0/8"))
    for calling, called, reason in (("STRANGER", "DEXRT", 3), ("REMOTE", "DEXRT", 3), ("MODALITY", "OTHER", 7)):
        assoc = client(calling).associate(LOOPBACK, node.port, ae_title=called)
        assert assoc.is_rejected, (calling, called)
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, reason), (calling, called)
    assert node.stats["associations_rejected"] == 2
    assert send([radiograph(64)], node.port) == [0x0000]  # the node still serves the allowed one


def test_association_limit(make_node: Callable[..., Node], destination: Destination) -> None:
    node = make_node(destination.address, max_associations=1)
    first = client().associate(LOOPBACK, node.port, ae_title="DEXRT")
    assert first.is_established
    try:
        second = client().associate(LOOPBACK, node.port, ae_title="DEXRT")
        assert second.is_rejected
        rj = second.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)  # transient, local limit
    finally:
        first.release()


def test_corrupt_instance_fails_alone(make_node: Callable[..., Node], destination: Destination) -> None:
    node = make_node(destination.address)
    good = [radiograph(64, CR, 1), radiograph(64, DX, 2)]
    corrupt = radiograph(64, DX, 3)
    corrupt.PixelData = corrupt.PixelData[:1000]  # truncated pixel data
    colour = radiograph(64, DX, 4)
    colour.PhotometricInterpretation = "RGB"
    statuses = send([good[0], corrupt, colour, good[1]], node.port)
    assert statuses[0] == statuses[3] == 0x0000
    assert statuses[1] == statuses[2] == 0xC000
    wait_until(lambda: len(destination.unique()) == 4, TIMEOUT, "the good instances' outputs")
    assert_derived(destination, good)
    assert node.stats["store_failed"] == 2
    assert not list(node.spool.incoming.iterdir()) and node.spool.counts()["received"] == 0


def test_deflate_bomb_over_c_store_is_refused_in_bounded_memory(make_node: Callable[..., Node],
                                                                destination: Destination, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A deflated data set of about 1 MB inflating to 1 GiB, sent as it is on disk (not re-encoded): refused with
    0xC000 naming the bound, the node's Python allocations peaking far below 256 MiB, and the node goes on."""
    import tracemalloc

    from pydicom.uid import DeflatedExplicitVRLittleEndian
    from pynetdicom import _config

    from infer_helpers import deflate_bomb

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes, do not decode them
    bomb = deflate_bomb(tmp_path / "bomb.dcm", 1 << 30, 64, 64)
    node = make_node(destination.address)
    ae = client()
    ae.add_requested_context(DX, DeflatedExplicitVRLittleEndian)
    assoc = ae.associate(LOOPBACK, node.port, ae_title="DEXRT")
    assert assoc.is_established
    tracemalloc.start()
    try:
        rsp = assoc.send_c_store(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        assoc.release()
    assert rsp.Status == 0xC000 and "inflates to more than" in rsp.ErrorComment
    assert peak < 256 << 20, f"{peak >> 20} MiB"
    assert node.stats["store_failed"] == 1 and not list(node.spool.incoming.iterdir())
    assert send([radiograph(64)], node.port) == [0x0000]


def test_path_like_study_uid_refused_patient_id_never_a_path(make_node: Callable[..., Node],
                                                            destination: Destination, tmp_path: Path) -> None:
    """A StudyInstanceUID `../x` is not a UID: refused (0xC000), nothing kept. A PatientID `../../y` is a valid
    LO value: the instance is accepted and its outputs carry it unchanged, but no file name is made from it."""
    node = make_node(destination.address, output=tmp_path / "out")
    bad_study = radiograph(64, DX, 1, study_uid="../x")
    odd_patient = radiograph(64, DX, 2, patient_id="../../y")
    assert send([bad_study, odd_patient], node.port) == [0xC000, 0x0000]
    wait_until(lambda: len(destination.unique()) == 2, TIMEOUT, "the outputs of the accepted instance")
    assert_derived(destination, [odd_patient])
    assert {d.PatientID for d in destination.received} == {"../../y"}
    assert node.stats["store_failed"] == 1 and str(bad_study.SOPInstanceUID) not in destination.by_source()
    made = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert not any("y" in p.parts or "x" in p.parts for p in made)  # nothing named after either value
    uid = str(odd_patient.SOPInstanceUID)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{uid}_bone.dcm", f"{uid}_soft.dcm"]


def test_resent_instance_recognised(make_node: Callable[..., Node], destination: Destination) -> None:
    node = make_node(destination.address)
    ds = radiograph(64)
    assert send([ds, ds], node.port) == [0x0000, 0x0000]  # the second while the first may still be converting
    wait_until(lambda: len(destination.unique()) == 2, TIMEOUT, "the outputs")
    assert send([ds], node.port) == [0x0000]  # again, long after it was handed on
    time.sleep(0.5)
    assert node.stats["received"] == 1 and node.stats["duplicates"] == 2
    assert len(destination.received) == 2


def test_destination_down_is_retried_until_it_comes_up(make_node: Callable[..., Node]) -> None:
    later = Destination()  # its port is chosen but nothing listens yet
    node = make_node(later.address)
    sources = [radiograph(64, DX, i) for i in range(3)]
    assert send(sources, node.port) == [0x0000] * 3
    key = f"outbox:{node.config.forward[0].key}"
    wait_until(lambda: node.spool.counts()[key] == 6 and node.stats["forward_retries"] >= 2, TIMEOUT,
               "results held in the outbox and retried")
    later.start()
    try:
        wait_until(lambda: len(later.unique()) == 6, TIMEOUT, "delivery once the destination is up")
        assert_derived(later, sources)
        wait_until(lambda: node.spool.counts()[key] == 0, TIMEOUT, "empty outbox")
    finally:
        later.stop()


def test_slow_destination_gets_per_file_backoff_and_no_overlapping_copies(make_node: Callable[..., Node]) -> None:
    """A destination slower than timeout_s: the unanswered file waits on its own backoff (at least twice timeout_s)
    while the others go on; it is never sent again while the destination may still be storing the first copy,
    and each resend (a possible duplicate there) is counted."""
    slow = Destination(slow_first_s=1.5).start()  # every UID's first C-STORE is answered after 1.5 s
    try:
        node = make_node(slow.address, timeout_s=1.0)
        sources = [radiograph(64, DX, 1)]
        assert send(sources, node.port) == [0x0000]
        wait_until(lambda: node.stats["forwarded"] == 2, TIMEOUT, "both outputs answered")
        assert_derived(slow, sources)
        assert not slow.overlaps, "a file was sent again while its first C-STORE was still being handled"
        assert sorted(slow.attempts.values()) == [2, 2]  # each: one unanswered C-STORE, one resend; not fourteen
        assert node.stats["forward_resent"] == 2
        assert node.spool.counts()[f"outbox:{node.config.forward[0].key}"] == 0
    finally:
        slow.stop()


def test_restart_resumes_the_spool(make_node: Callable[..., Node], destination: Destination,
                                   tmp_path: Path) -> None:
    """Instances acknowledged but not converted when a node stops are converted by the next one."""
    first = make_node(destination.address, jobs=1)
    first._stopping.set()  # workers take nothing: everything acknowledged stays in received/
    sources = [radiograph(64, DX, i) for i in range(3)]
    assert send(sources, first.port) == [0x0000] * 3
    first.stop(grace_s=2)
    assert first.spool.counts()["received"] == 3 and not destination.received
    make_node(destination.address)
    wait_until(lambda: len(destination.unique()) == 6, TIMEOUT, "the resumed instances' outputs")
    assert_derived(destination, sources)


def test_engine_failure_sets_one_instance_aside(make_node: Callable[..., Node], destination: Destination,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from dexrt._errors import EngineError

    node = make_node(destination.address)
    doomed = radiograph(64, DX, 7)
    convert = node.converter._convert

    def failing(source: Path, outcome: Any) -> None:
        if source.name == f"{doomed.SOPInstanceUID}.dcm":
            raise EngineError("simulated engine failure")
        convert(source, outcome)

    monkeypatch.setattr(node.converter, "_convert", failing)
    others = [radiograph(64, DX, 8), radiograph(64, CR, 9)]
    assert send([others[0], doomed, others[1]], node.port) == [0x0000] * 3  # acknowledged: it is safe on disk
    wait_until(lambda: len(destination.unique()) == 4 and node.stats["convert_failed"] == 1, TIMEOUT,
               "the others' outputs and the failure")
    assert_derived(destination, others)
    kept = node.spool.failed / f"{doomed.SOPInstanceUID}.dcm"
    assert kept.is_file() and "simulated engine failure" in kept.with_suffix(".txt").read_text()
    assert not list(node.spool.work.iterdir())


def test_retry_failed_puts_failed_instances_back(make_node: Callable[..., Node], destination: Destination,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dexrt serve --retry-failed`: refused while a node holds the spool; once it is stopped, every failed/ item
    goes back to received/ and the next start converts it."""
    from click.testing import CliRunner

    from dexrt._errors import EngineError
    from dexrt.cli import cli

    node = make_node(destination.address)
    doomed = radiograph(64, DX, 7)

    def failing(source: Path, outcome: Any) -> None:
        raise EngineError("simulated engine failure")

    monkeypatch.setattr(node.converter, "_convert", failing)
    assert send([doomed], node.port) == [0x0000]
    wait_until(lambda: node.stats["convert_failed"] == 1, TIMEOUT, "the failure")
    retry = ["serve", "--retry-failed", "--json", "--spool", str(tmp_path / "spool")]
    busy = CliRunner().invoke(cli, retry)
    assert busy.exit_code == 1 and "in use by another running node" in busy.output
    node.stop(grace_s=2)
    moved = CliRunner().invoke(cli, retry)
    assert moved.exit_code == 0, moved.output
    assert json.loads(moved.stdout)["moved_to_received"] == [str(doomed.SOPInstanceUID)]
    assert not list((tmp_path / "spool" / "failed").iterdir())
    make_node(destination.address)  # the next start, with a working engine
    wait_until(lambda: len(destination.unique()) == 2, TIMEOUT, "the retried instance's outputs")
    assert_derived(destination, [doomed])


def test_disk_full_while_converting_is_retried_not_failed(make_node: Callable[..., Node], destination: Destination,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An instance acknowledged before the disk filled up is the sender's no longer: a conversion that cannot write
    its outputs (ENOSPC) is retried with backoff until space is freed, never set aside in failed/."""
    import errno

    import dexrt.pipelines.convert as convert_module

    write_dicom, full = convert_module.write_dicom, {"writes_left_to_fail": 3}

    def write(path: Path, *args: Any, **kwargs: Any) -> None:
        if full["writes_left_to_fail"] > 0:
            full["writes_left_to_fail"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_dicom(path, *args, **kwargs)

    monkeypatch.setattr(convert_module, "write_dicom", write)
    node = make_node(destination.address)
    sources = [radiograph(64, DX, 1), radiograph(64, CR, 2)]
    assert send(sources, node.port) == [0x0000] * 2
    wait_until(lambda: len(destination.unique()) == 4, TIMEOUT, "every output once space is back")
    assert_derived(destination, sources)
    assert node.stats["convert_failed"] == 0 and node.stats["convert_retries"] == 3
    assert node.spool.counts()["failed"] == 0 and not list(node.spool.failed.iterdir())


def test_spool_is_one_nodes_and_survives_a_torn_ledger(tmp_path: Path) -> None:
    from dexrt.pipelines.serve.spool import Spool

    spool = Spool(tmp_path / "spool")
    with pytest.raises(ConfigError, match="in use by another running node"):
        Spool(tmp_path / "spool")
    spool.close()
    (tmp_path / "spool" / "ledger").write_bytes(b"1.2.3\n1.2.4\n1.2.")  # died while appending the last line
    (tmp_path / "spool" / "incoming" / "1.2.9.dcm").write_bytes(b"partial")  # died while receiving
    spool = Spool(tmp_path / "spool")
    try:
        assert not list(spool.incoming.iterdir())  # never acknowledged: removed at start
        assert spool.admit("1.2.3", b"x", lambda p: None) is False  # handed on before the crash: a resend
        assert spool.admit("1.2.5", b"x", lambda p: None) is True
        assert spool.admit("1.2.5", b"x", lambda p: None) is False  # already waiting in received/
        with pytest.raises(InputError, match="SOP Instance UID '1.2./../x' is not a valid UID"):
            spool.admit("1.2./../x", b"x", lambda p: None)

        def bad(path: Path) -> None:
            raise InputError(f"{path}: corrupt")

        with pytest.raises(InputError, match="corrupt"):
            spool.admit("1.2.6", b"x", bad)
        assert [p.name for p in spool.pending()] == ["1.2.5.dcm"] and not list(spool.incoming.iterdir())
    finally:
        spool.close()


def test_torn_ledger_line_is_cut_off_not_glued_to_the_next(tmp_path: Path) -> None:
    """A crash mid-append leaves `1.2.` without its newline: the next UID must start a line of its own, so that a
    resend after the restart is recognised instead of converted and forwarded again."""
    from dexrt.pipelines.serve.spool import Spool

    (tmp_path / "spool").mkdir()
    ledger = tmp_path / "spool" / "ledger"
    ledger.write_bytes(b"1.2.3\n1.2.")
    spool = Spool(tmp_path / "spool")
    source = spool.received / "1.2.5.dcm"
    source.write_bytes(b"x")
    spool.deliver(source, [], None)
    spool.close()
    assert ledger.read_bytes() == b"1.2.3\n1.2.5\n"
    spool = Spool(tmp_path / "spool")
    try:
        assert spool.admit("1.2.5", b"x", lambda p: None) is False  # the resend after the restart
    finally:
        spool.close()


def test_ledger_is_compacted_to_its_bound(tmp_path: Path) -> None:
    from dexrt.pipelines.serve.spool import Spool

    spool = Spool(tmp_path / "spool", ledger_entries=3)
    try:
        for i in range(1, 11):
            source = spool.received / f"1.2.{i}.dcm"
            source.write_bytes(b"x")
            spool.deliver(source, [], None)
            assert len((tmp_path / "spool" / "ledger").read_bytes().splitlines()) < 2 * 3
        assert [spool.admit(f"1.2.{i}", b"x", lambda p: None) for i in (8, 9, 10)] == [False] * 3
    finally:
        spool.close()
    lines = (tmp_path / "spool" / "ledger").read_bytes().splitlines()
    assert lines[-3:] == [b"1.2.8", b"1.2.9", b"1.2.10"] and b"1.2.1" not in lines
    spool = Spool(tmp_path / "spool", ledger_entries=3)  # the bound holds across a restart
    try:
        assert spool.admit("1.2.1", b"x", lambda p: None) is True  # forgotten: stored (and converted) again
        assert spool.admit("1.2.10", b"x", lambda p: None) is False
    finally:
        spool.close()


@pytest.mark.parametrize("first_outcome", ["fails", "stored"])
def test_resend_racing_an_unfinished_receive_waits_for_it(tmp_path: Path, first_outcome: str) -> None:
    """The same UID arriving on a second association while the first receive is still being checked: the second
    waits. If the first then fails, the second stores the instance itself (acknowledged means on disk); if the
    first stores it, the second is a duplicate. Never a Success for an instance that is then lost."""
    from dexrt.pipelines.serve.spool import Spool

    spool = Spool(tmp_path / "spool")
    checking, release = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def slow_check(path: Path) -> None:
        checking.set()
        release.wait(TIMEOUT)
        if first_outcome == "fails":
            raise InputError(f"{path}: not decodable")

    def first() -> None:
        try:
            results["first"] = spool.admit("1.2.7", b"first", slow_check)
        except InputError as exc:
            results["first"] = exc

    def second() -> None:
        results["second"] = spool.admit("1.2.7", b"second", lambda p: None)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    try:
        threads[0].start()
        assert checking.wait(TIMEOUT)
        threads[1].start()
        threads[1].join(0.5)
        assert threads[1].is_alive(), "the resend was answered while the first receive could still fail"
        release.set()
        for t in threads:
            t.join(TIMEOUT)
        stored = (spool.received / "1.2.7.dcm").read_bytes()
        if first_outcome == "fails":
            assert isinstance(results["first"], InputError) and results["second"] is True and stored == b"second"
        else:
            assert results == {"first": True, "second": False} and stored == b"first"
    finally:
        release.set()
        spool.close()


def test_resend_waits_only_so_long(tmp_path: Path) -> None:
    from dexrt.pipelines.serve.spool import Spool

    spool = Spool(tmp_path / "spool", wait_s=0.2)
    release = threading.Event()
    first = threading.Thread(target=lambda: spool.admit("1.2.8", b"x", lambda p: release.wait(TIMEOUT)))
    try:
        first.start()
        wait_until(lambda: "1.2.8" in spool._reserved, TIMEOUT, "the first receive")
        with pytest.raises(TimeoutError, match="still being received"):  # the node answers 0xA700: try again
            spool.admit("1.2.8", b"x", lambda p: None)
    finally:
        release.set()
        first.join(TIMEOUT)
        spool.close()


def test_tls_in_and_out(make_node: Callable[..., Node], tmp_path: Path) -> None:
    """TLS on the listening port, and to a destination that speaks only TLS."""
    import ssl

    from dexrt.pipelines.serve.config import Destination as Forward
    from dexrt.pipelines.serve.contexts import server_tls

    cert, key = _self_signed(tmp_path)
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


def _self_signed(folder: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    cert, key = folder / "node.pem", folder / "node.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _pki(folder: Path) -> dict[str, Path]:
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


def _sender_tls(pki: dict[str, Path], who: str | None) -> Any:
    import ssl

    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if who is not None:
        context.load_cert_chain(pki[who], pki[f"{who}_key"])
    return context


def _idle(port: int, count: int) -> list[Any]:
    """`count` TCP connections to the node that never send a byte (no ClientHello, no A-ASSOCIATE-RQ)."""
    import socket

    return [socket.create_connection((LOOPBACK, port), timeout=5) for _ in range(count)]


def _echo_within_15_s(port: int, tls: Any = None) -> None:
    """An allowed sender's C-ECHO, failing unless it completes within 15 s (5 s to connect, 10 s to associate)."""
    ae = client()
    ae.connection_timeout, ae.acse_timeout, ae.dimse_timeout = 5, 10, 10
    assoc = ae.associate(LOOPBACK, port, ae_title="DEXRT", tls_args=(tls, "localhost") if tls else None)
    assert assoc.is_established, "the allowed sender got no association"
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def _closed_by_node(sockets: list[Any], within_s: float) -> bool:
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


def test_idle_connections_never_take_the_allowed_senders_slots(make_node: Callable[..., Node],
                                                               destination: Destination) -> None:
    """Connections that never send their association request are handled off pynetdicom's hands: 17 of them
    against max_associations 4 lock nobody out, 40 held open leave an allowed C-ECHO working, and each is closed
    by the node after handshake_s."""
    node = make_node(destination.address, max_associations=4, handshake_s=1.0)
    burst = _idle(node.port, 17)
    try:
        _echo_within_15_s(node.port)
        time.sleep(1.0)
    finally:
        for sock in burst:  # the red team's script: 17 connections closed after a second; then a real sender
            sock.close()
    _echo_within_15_s(node.port)
    held = _idle(node.port, 40)
    try:
        _echo_within_15_s(node.port)
        assert _closed_by_node(held, within_s=5.0)
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
    pki = _pki(tmp_path)
    node = make_node(destination.address, tls_cert=pki["node"], tls_key=pki["node_key"], handshake_s=1.0)
    silent = _idle(node.port, 40)
    try:
        _echo_within_15_s(node.port, _sender_tls(pki, None))
        assert _closed_by_node(silent, within_s=5.0)
    finally:
        for sock in silent:
            sock.close()
    lingering = _idle(node.port, 1)
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

    pki = _pki(tmp_path)
    node = make_node(destination.address, tls_cert=pki["node"], tls_key=pki["node_key"], tls_ca=pki["ca"])
    _echo_within_15_s(node.port, _sender_tls(pki, "sender"))
    dropped: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: dropped.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("dexrt.pipelines.serve").addHandler(handler)
    try:
        for who in (None, "rogue"):
            ae = client()
            ae.acse_timeout = 5
            assoc = ae.associate(LOOPBACK, node.port, ae_title="DEXRT", tls_args=(_sender_tls(pki, who), "localhost"))
            assert not assoc.is_established, who
        wait_until(lambda: len([m for m in dropped if "TLS handshake failed" in m]) == 2, TIMEOUT, "two refusals")
    finally:
        logging.getLogger("dexrt.pipelines.serve").removeHandler(handler)
    assert node.stats["connections_dropped"] == 2
    _echo_within_15_s(node.port, _sender_tls(pki, "sender"))  # and the right sender still gets in


def test_a_flood_of_connections_drops_the_oldest_first(make_node: Callable[..., Node], destination: Destination,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """More connections waiting than MAX_PENDING: the oldest are closed at once (not after handshake_s), so file
    descriptors stay bounded, and a sender arriving now, whose request follows its connection within
    milliseconds, still gets in."""
    from dexrt.pipelines.serve import gate

    monkeypatch.setattr(gate, "MAX_PENDING", 8)
    node = make_node(destination.address, handshake_s=30.0)
    flood = _idle(node.port, 12)
    try:
        assert _closed_by_node(flood[:4], within_s=5.0)
        _echo_within_15_s(node.port)
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
    [web] = _idle(node.port, 1)
    try:
        web.sendall(b"GET / HTTP/1.1\r\nHost: dexrt\r\n\r\n")
        assert _closed_by_node([web], within_s=5.0)  # at once, not after handshake_s
    finally:
        web.close()
    wait_until(lambda: node.stats["connections_dropped"] == 1, TIMEOUT, "the drop counted")
    _echo_within_15_s(node.port)


# -- configuration and the command line -----------------------------------------------------------------------
def test_config_file_with_overrides(tmp_path: Path) -> None:
    (tmp_path / "serve.toml").write_text(
        'ae_title = "BONES"\nport = 4242\nspool = "spool"\n[[allow]]\nae_title = "CR1"\nhosts = ["10.1.0.0/16"]\n'
        '[[forward]]\nae_title = "PACS"\nhost = "10.1.9.9"\nport = 104\n[retry]\nmax_s = 60\n')
    config = build_config(tmp_path / "serve.toml", port=11112)
    assert (config.ae_title, config.port, config.spool) == ("BONES", 11112, tmp_path / "spool")
    assert config.allow[0].admits("CR1", "10.1.2.3") and not config.allow[0].admits("CR1", "10.2.0.1")
    assert config.forward[0].name == "PACS@10.1.9.9:104" and config.retry_max_s == 60
    replaced = build_config(tmp_path / "serve.toml", forward=(parse_forward("OTHER@[::1]:11113"),))
    assert [d.name for d in replaced.forward] == ["OTHER@::1:11113"]


_VALID = 'spool = "s"\noutput = "o"\n[[allow]]\nae_title = "A"\n'  # a complete file, to which a case adds one line


@pytest.mark.parametrize("text, message", [
    ('spool = "s"\nalow = []\n', "unknown key"),
    ('spool = "s"\n[[forward]]\nae_title = "P"\nhost = "h"\nport = 1\n', "no calling AE title"),
    ('spool = "s"\nport = "x"\n[[allow]]\nae_title = "A"\n', "'port' must be an integer"),
    ('spool = "s"\n[[allow]]\nae_title = "WAY_TOO_LONG_AE_TITLE"\n', "not an AE title"),
    ('spool = "s"\n[[allow]]\nae_title = "A"\n', "would go nowhere"),
    ('spool = [\n', "not valid TOML"),
    (f'timeout_s = inf\n{_VALID}', "timeout_s must be a number from 0.1 to 3600, got inf"),
    (f'timeout_s = nan\n{_VALID}', "timeout_s must be a number from 0.1 to 3600, got nan"),
    (f'jobs = 1000000000\n{_VALID}', "jobs must be an integer from 1 to 256, got 1000000000"),
    (f'max_associations = 0\n{_VALID}', "max_associations must be an integer from 1 to 1024"),
    (f'handshake_s = 1e9\n{_VALID}', "handshake_s must be a number"),
    (f'host = "999.1.1.1"\n{_VALID}', "host must be an IP address to listen on"),
    (f'host = "dexrt.example.org"\n{_VALID}', "host must be an IP address to listen on"),
    (f'nested = {"[" * 5000}{"]" * 5000}\n{_VALID}', "nested too deeply"),
    (f'{_VALID}[[forward]]\nae_title = "P"\nhost = "999.1.1.1"\nport = 104\n', "neither an IP address nor a host"),
    (f'{_VALID}[[allow]]\nae_title = "B"\nhosts = [5]\n', "5 is not an IP address or network"),
    (f'{_VALID}[retry]\ninitial_s = 10\nmax_s = 5\n', "initial_s .* is more than max_s"),
    (f'ledger_entries = 10\n{_VALID}', "ledger_entries must be an integer from 1000"),
    (f'require_signed = false\n{_VALID}', "allow_unsigned = true"),
], ids=["unknown-key", "no-allow", "port-type", "ae-title", "no-destination", "syntax", "timeout-inf", "timeout-nan",
        "jobs-huge", "associations-0", "handshake-huge", "host-999", "host-name", "nesting-5000", "forward-999",
        "allow-int", "retry-order", "ledger-tiny", "require-signed-false"])
def test_config_errors(tmp_path: Path, text: str, message: str) -> None:
    """Every value out of bounds is a ConfigError naming the key: never an OverflowError or RecursionError
    traceback at start, never a node that accepts a billion jobs or an impossible address."""
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_config(tmp_path / "bad.toml")


def test_config_file_too_large_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big.toml").write_text(_VALID + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="larger than"):
        build_config(tmp_path / "big.toml")


def test_command_line_values_are_bounded_too(tmp_path: Path, plain_engine_path: Path) -> None:
    from click.testing import CliRunner

    from dexrt.cli import cli

    base = ["serve", "--check", "--allow-ae", "MODALITY", "--spool", str(tmp_path / "spool"),
            "--output", str(tmp_path / "o"), "--engine", str(plain_engine_path), "--allow-unsigned"]
    for extra, message in ((["--jobs", "1000000000"], "jobs must be an integer from 1 to 256"),
                           (["--host", "999.1.1.1"], "host must be an IP address to listen on")):
        result = CliRunner().invoke(cli, [*base, *extra])
        assert result.exit_code == 1 and message in result.output, result.output


@pytest.mark.parametrize("text", ["PACS", "PACS@host", "@host:104", "PACS@host:0", "PACS@host:http"])
def test_bad_forward_option(text: str) -> None:
    with pytest.raises(ConfigError, match="--forward"):
        parse_forward(text)


def test_check_echoes_each_destination(destination: Destination, tmp_path: Path, plain_engine_path: Path) -> None:
    from click.testing import CliRunner

    from dexrt.cli import cli

    dead = f"GONE@{LOOPBACK}:{free_port()}"
    base = ["serve", "--check", "--json", "--allow-ae", "MODALITY", "--spool", str(tmp_path / "spool"),
            "--engine", str(plain_engine_path), "--allow-unsigned", "--forward", destination.address]
    ok = CliRunner().invoke(cli, base)
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout)
    assert report["ok"] and [c["check"] for c in report["checks"]] == ["engine", "spool",
                                                                       f"destination {destination.address}"]
    bad = CliRunner().invoke(cli, [*base, "--forward", dead])
    assert bad.exit_code == 1
    assert [c["ok"] for c in json.loads(bad.stdout)["checks"]] == [True, True, True, False]
    usage = CliRunner().invoke(cli, ["serve", "--spool", str(tmp_path / "s"), "--output", str(tmp_path / "o")])
    assert usage.exit_code == 1 and "no calling AE title" in usage.output


def test_port_in_use_is_a_clear_error(tmp_path: Path, plain_engine_path: Path) -> None:
    import socket

    from click.testing import CliRunner

    from dexrt.cli import cli

    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        result = CliRunner().invoke(cli, ["serve", "--host", LOOPBACK, "--port", str(taken.getsockname()[1]),
                                          "--allow-ae", "MODALITY", "--output", str(tmp_path / "out"),
                                          "--spool", str(tmp_path / "spool"), "--engine", str(plain_engine_path),
                                          "--allow-unsigned"])
    assert result.exit_code == 1 and "cannot listen on" in result.output, result.output


# -- the node as a process: crash, restart, SIGTERM, DCMTK ---------------------------------------------------------
class NodeProcess:
    """`dexrt serve --json` in a subprocess; its JSON log lines are read from a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.port = free_port()
        command = [sys.executable, "-c", "from dexrt.cli import main; main()", "serve", "--json", "--host",
                   LOOPBACK, "--port", str(self.port), *args]
        with open(log, "ab") as stderr:
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        wait_until(lambda: self.events("listening") or self.proc.poll() is not None, 60, "the node to listen")
        assert self.proc.poll() is None, log.read_text()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.read(self.log) if name is None or e.get("event") == name]

    @staticmethod
    def read(log: Path) -> list[dict[str, Any]]:
        """The JSON log lines (every line the node writes to stderr must be one)."""
        return [json.loads(line) for line in log.read_text().splitlines()]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(TIMEOUT)


def test_killed_mid_stream_and_restarted_loses_nothing(destination: Destination, tmp_path: Path,
                                                       plain_engine_path: Path) -> None:
    args = ["--allow-ae", "MODALITY", "--forward", destination.address, "--spool", str(tmp_path / "spool"),
            "--engine", str(plain_engine_path), "--allow-unsigned", "--jobs", "2"]
    sources = [radiograph(128, DX, i) for i in range(40)]
    acked: list[str] = []
    node = NodeProcess(args, tmp_path / "node.log")
    try:
        def on_ack(ds: Any, status: int) -> None:
            assert status == 0x0000
            acked.append(str(ds.SOPInstanceUID))
            if len(acked) == 12:
                node.kill()  # SIGKILL mid-stream: no chance to tidy up

        sender = threading.Thread(target=lambda: send(sources, node.port, on_ack=on_ack))
        sender.start()
        sender.join(TIMEOUT)
        assert not sender.is_alive() and node.proc.returncode == -signal.SIGKILL
        assert 12 <= len(acked) < len(sources)
        # What the sender saw acknowledged is on disk; the rest it sends again to the restarted node.
        node = NodeProcess(args, tmp_path / "restarted.log")
        assert send([s for s in sources if str(s.SOPInstanceUID) not in acked], node.port) == [0] * (
            len(sources) - len(acked))
        # SIGTERM at once, with conversions in flight: the node finishes those, keeps the rest, exits cleanly.
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(TIMEOUT) == 0
        assert node.events("stopping")[-1]["signal"] == "SIGTERM" and node.events("stopped")
        assert {"listening", "received"} <= {e.get("event") for e in node.events()}
        node = NodeProcess(args, tmp_path / "third.log")
        wait_until(lambda: len(destination.unique()) == 2 * len(sources), 40, "every source's outputs")
        assert_derived(destination, sources)
        wait_until(lambda: not list((tmp_path / "spool" / "received").glob("*.dcm")), TIMEOUT, "an empty spool")
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(TIMEOUT) == 0
        logged = {e.get("event") for log in ("node", "restarted", "third")
                  for e in NodeProcess.read(tmp_path / f"{log}.log")}
        assert {"received", "converted", "forwarded", "stopped"} <= logged
    finally:
        if node.proc.poll() is None:
            node.kill()


def test_sigterm_stops_within_drain_time_whatever_the_network_does(tmp_path: Path, plain_engine_path: Path) -> None:
    """`dexrt serve` with TLS, three connections that never send a ClientHello and an allowed sender holding an
    idle association: SIGTERM ends the process cleanly within drain_s (plus its own exit)."""
    pki = _pki(tmp_path)
    (tmp_path / "serve.toml").write_text(
        f'spool = "spool"\noutput = "out"\nengine = "{plain_engine_path}"\nallow_unsigned = true\n'
        'handshake_s = 60\ndrain_s = 2\n[[allow]]\nae_title = "MODALITY"\n'
        f'[tls]\ncert = "{pki["node"]}"\nkey = "{pki["node_key"]}"\n')
    node = NodeProcess(["--config", str(tmp_path / "serve.toml")], tmp_path / "node.log")
    silent = _idle(node.port, 3)
    holder = client().associate(LOOPBACK, node.port, ae_title="DEXRT", tls_args=(_sender_tls(pki, None), "localhost"))
    try:
        assert holder.is_established
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(2 + 10) == 0  # drain_s, then the engine closes and the process exits
        assert node.events("stopping")[-1]["signal"] == "SIGTERM" and node.events("stopped")
    finally:
        for sock in silent:
            sock.close()
        if holder.is_established:
            holder.abort()
        if node.proc.poll() is None:
            node.kill()


# -- deployment: the systemd unit and the example configuration in docs/deploy/ ------------------------------------
DEPLOY = Path(__file__).parent.parent / "docs" / "deploy"


def _unit() -> dict[str, str]:
    import configparser

    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "dexrt-serve.service")
    return dict(parser["Service"])


def test_example_configuration_is_valid() -> None:
    config = build_config(DEPLOY / "serve.toml")
    assert config.require_signed and config.forward[0].name == "PACS@10.1.9.9:104"
    assert config.drain_s < float(_unit()["TimeoutStopSec"]), "systemd would kill the node before it drains"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the unit (its dexrt path pointed at this installation's, which must exist)."""
    dexrt_bin = Path(sys.executable).parent / "dexrt"
    if not dexrt_bin.exists():
        pytest.skip(f"{dexrt_bin} is not installed (the console script)")
    unit = tmp_path / "dexrt-serve.service"
    unit.write_text((DEPLOY / "dexrt-serve.service").read_text().replace("/opt/dexrt/venv/bin/dexrt", str(dexrt_bin)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_unit_command_lines_start_check_and_stop(destination: Destination, tmp_path: Path) -> None:
    """The unit's own ExecStartPre (--check) and ExecStart lines, run as systemd would run them (without its
    sandbox: no systemd here), then its KillSignal: exit 0 within TimeoutStopSec."""
    import shlex

    unit = _unit()
    port = free_port()
    config = tmp_path / "serve.toml"
    config.write_text(f'host = "{LOOPBACK}"\nport = {port}\nspool = "spool"\noutput = "out"\ndrain_s = 2\n'
                      f'[[allow]]\nae_title = "MODALITY"\n[[forward]]\nae_title = "{destination.ae_title}"\n'
                      f'host = "{LOOPBACK}"\nport = {destination.port}\n')

    def command(key: str) -> list[str]:
        words = shlex.split(unit[key])
        assert words[0] == "/opt/dexrt/venv/bin/dexrt" and "/etc/dexrt/serve.toml" in words
        return [sys.executable, "-c", "from dexrt.cli import main; main()", *words[1:]]

    env = {**os.environ, "DEXRT_TRUSTED_KEYS": ""}  # the unit's /etc/dexrt/trusted_keys does not exist here
    check = subprocess.run([w.replace("/etc/dexrt/serve.toml", str(config)) for w in command("ExecStartPre")],
                           check=False, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    log = tmp_path / "node.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([w.replace("/etc/dexrt/serve.toml", str(config)) for w in command("ExecStart")],
                                stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=tmp_path)
    try:
        wait_until(lambda: '"event": "listening"' in log.read_text() or proc.poll() is not None, 60, "listening")
        assert send([radiograph(64)], port) == [0x0000]
        wait_until(lambda: len(destination.unique()) == 2, TIMEOUT, "the outputs")
        proc.send_signal(getattr(signal, unit["KillSignal"]))
        assert proc.wait(float(unit["TimeoutStopSec"])) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


dcmtk = pytest.mark.skipif(any(shutil.which(tool) is None for tool in ("storescu", "echoscu", "storescp")),
                           reason="DCMTK (storescu, echoscu, storescp) is not installed: apt-get install dcmtk")


@dcmtk
def test_dcmtk_echoscu_and_storescu(make_node: Callable[..., Node], destination: Destination,
                                    tmp_path: Path) -> None:
    node = make_node(destination.address)
    echo = subprocess.run(["echoscu", "-aet", "MODALITY", "-aec", "DEXRT", LOOPBACK, str(node.port)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert echo.returncode == 0, echo.stderr
    files = []
    for i, sop_class in enumerate((CR, DX)):
        ds = radiograph(96, sop_class, i)
        files.append(tmp_path / f"in{i}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    store = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "DEXRT", LOOPBACK, str(node.port),
                            *map(str, files)], capture_output=True, text=True, timeout=TIMEOUT)
    assert store.returncode == 0, store.stderr
    wait_until(lambda: len(destination.unique()) == 4, TIMEOUT, "outputs of the DCMTK-sent instances")
    from pydicom import dcmread

    assert_derived(destination, [dcmread(f) for f in files])
    stranger = subprocess.run(["echoscu", "-aet", "STRANGER", "-aec", "DEXRT", LOOPBACK, str(node.port)],
                              capture_output=True, text=True, timeout=TIMEOUT)
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr


@dcmtk
def test_dcmtk_sender_over_mutual_tls(make_node: Callable[..., Node], destination: Destination,
                                      tmp_path: Path) -> None:
    """A third-party TLS client (DCMTK's echoscu +tls): with a certificate the node's --tls-ca signed it gets its
    C-ECHO answered; with one that CA did not sign it gets no association."""
    pki = _pki(tmp_path)
    node = make_node(destination.address, tls_cert=pki["node"], tls_key=pki["node_key"], tls_ca=pki["ca"])

    def echoscu(who: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["echoscu", "+tls", str(pki[f"{who}_key"]), str(pki[who]), "+cf", str(pki["ca"]),
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
    scp = subprocess.Popen(["storescp", "-aet", "ARCHIVE", "-od", str(received), str(port)],
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


def test_a_node_that_requires_signed_engines_refuses_an_unsigned_one(tmp_path: Path, plain_engine_path: Path
                                                                     ) -> None:
    """`--require-signed` (or `require_signed = true`): --check reports it, and the node does not start."""
    from click.testing import CliRunner

    from dexrt.cli import cli

    base = ["serve", "--allow-ae", "MODALITY", "--spool", str(tmp_path / "spool"), "--output", str(tmp_path / "o"),
            "--engine", str(plain_engine_path), "--require-signed", "--host", LOOPBACK, "--port", "0"]
    checked = CliRunner().invoke(cli, [*base, "--check", "--json"])
    assert checked.exit_code == 1
    engine_check = json.loads(checked.stdout)["checks"][0]
    assert engine_check["check"] == "engine" and not engine_check["ok"]
    assert "a signed engine is required" in engine_check["detail"]
    started = CliRunner().invoke(cli, base)
    assert started.exit_code == 1 and "a signed engine is required" in started.output
    signed_default = CliRunner().invoke(cli, [a for a in base if a != str(plain_engine_path) and a != "--engine"]
                                        + ["--check", "--json"])
    assert signed_default.exit_code == 0, signed_default.output  # the bundled model is signed by the project key


def test_strict_and_input_spacing_reach_the_conversion(tmp_path: Path, plain_engine_path: Path) -> None:
    from dexrt.pipelines.serve.config import build_config

    config = build_config(spool=tmp_path / "spool", output=tmp_path / "out", allow=(parse_allow("MODALITY"),),
                          strict=True, input_spacing_mm=0.2, engine=plain_engine_path)
    node = Node(config, dexrt.Engine(plain_engine_path))
    assert node.converter.strict and node.converter.input_spacing_mm == 0.2
    with pytest.raises(ConfigError, match="input_spacing_mm"):
        build_config(spool=tmp_path / "spool", output=tmp_path / "out", allow=(parse_allow("MODALITY"),),
                     input_spacing_mm=-1.0)
