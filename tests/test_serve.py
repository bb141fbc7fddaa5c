"""`dexrt serve`: a DICOM node tested with real DICOM clients on 127.0.0.1 (pynetdicom): round trips, the spool,
the ledger, resends and retries."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pynetdicom")

from dexrt._errors import ConfigError, InputError  # noqa: E402
from dexrt.pipelines.serve import Node  # noqa: E402
from serve_helpers import (  # noqa: E402
    CR, DX, DX_PROCESSING, LOOPBACK, RF, XA, Destination, client, radiograph, send, wait_until,
)
from serve_fixtures import (  # noqa: E402,F401  (fixtures, by name)
    TIMEOUT, _restore_logging, assert_derived, destination, engine, make_node,
)


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
