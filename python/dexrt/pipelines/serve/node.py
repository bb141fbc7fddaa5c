"""The DICOM node: associations in, instances into the spool, conversion workers, forwarders out.

    node = Node(config, engine)   # engine: a dexrt.Engine shared by every association
    node.start()                  # listens; resumes whatever the spool holds
    ...
    node.stop()                   # stop listening, finish what is in flight (within drain_s), leave the rest

Threads: the gate (gate.py) accepts connections and completes TLS and the association request off pynetdicom's
hands, with a deadline, so that connections that never complete cost no association slot; pynetdicom then runs one
thread per association; its C-STORE handler only writes the instance into the spool
(synced, checked) and answers, so a slow engine never holds a sender's association open. ``config.jobs``
conversion workers take instances from the spool and convert them with :class:`dexrt.pipelines.convert.Converter`, whose
frames go through ``engine.submit``: instances arriving on different associations batch together in the engine's
dynamic batcher. One :class:`Forwarder` per destination sends the results on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dexrt._errors import InputError
from dexrt.pipelines.convert import ConvertOptions, Converter
from dexrt.io.dicom import check_uid, read_dicom
from dexrt.runtime.engine import Engine
from dexrt.runtime.patient import engine_patient
from dexrt.pipelines.serve.config import ServeConfig
from dexrt.pipelines.serve.contexts import STORAGE_CLASSES, add_scp_contexts, server_tls
from dexrt.pipelines.serve.forward import Forwarder
from dexrt.pipelines.serve.gate import REJECT_CALLING_AE, Gate, association_server
from dexrt.pipelines.serve.logs import event
from dexrt.pipelines.serve.spool import Spool

# C-STORE statuses (PS3.4 B.2.3 and PS3.7 C)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900  # data set does not match SOP class
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


class Node:
    """A running `dexrt serve` node (see the module docstring)."""

    def __init__(self, config: ServeConfig, engine: Engine) -> None:
        from pynetdicom import AE

        self.config = config
        self.engine = engine
        self.spool = Spool(config.spool, [d.key for d in config.forward], ledger_entries=config.ledger_entries,
                           wait_s=config.timeout_s)
        self.converter = Converter(engine, self.spool.work, ConvertOptions(
            jobs=config.jobs, strict=config.strict, input_spacing_mm=config.input_spacing_mm))
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self.forwarders = [Forwarder(config, d, self.spool, self._count) for d in config.forward]
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._stopping = threading.Event()
        self._attempts: dict[Path, int] = {}  # instance -> failed attempts to hand it on (for the backoff)
        self._workers = [threading.Thread(target=self._convert_loop, name=f"dexrt-serve-convert-{i}", daemon=True)
                         for i in range(config.jobs)]
        self._ae = AE(ae_title=config.ae_title)
        add_scp_contexts(self._ae)
        self._ae.require_called_aet = True  # A-ASSOCIATE-RJ reason 7 for an association meant for another node
        self._ae.maximum_associations = config.max_associations  # beyond: rejected-transient, local limit
        self._ae.acse_timeout = self._ae.dimse_timeout = self._ae.network_timeout = config.timeout_s
        self._server: Any = None
        self._gate: Gate | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port listened on (the one the system chose, when configured as 0)."""
        assert self._gate is not None, "not started"
        return self._gate.address[1]

    def start(self) -> None:
        from pynetdicom import evt

        tls = server_tls(self.config.tls_cert, self.config.tls_key, self.config.tls_ca)  # fails before any thread
        self._gate = Gate(self.config.host, self.config.port, tls=tls, handshake_s=self.config.handshake_s,
                          timeout_s=self.config.timeout_s, admits=self._admits, hand_on=self._hand_on,
                          count=self._count)  # binds the port: a port in use fails here too
        handlers: list[Any] = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_ECHO, self._on_echo),
                               (evt.EVT_C_STORE, self._on_store)]
        self._server = association_server(self._ae, self._gate.address, handlers)
        resumed = self.spool.pending()
        for path in resumed:
            self._queue.put(path)
        for worker in self._workers:
            worker.start()
        for forwarder in self.forwarders:
            forwarder.start()
        self._gate.start()
        event("listening", ae_title=self.config.ae_title, host=self.config.host, port=self.port, tls=tls is not None,
              engine=self.engine.path.name, backend=self.engine.backend, resumed=len(resumed) or None,
              patient=(engine_patient(self.engine.manifest) or {}).get("patient_id"),  # a `dexrt fit` engine
              destinations=",".join(d.name for d in self.config.forward) or None,
              output=str(self.config.output) if self.config.output else None,
              outbox_waiting=sum(v for k, v in self.spool.counts().items() if k.startswith("outbox:")) or None)

    def stop(self, grace_s: float | None = None) -> int:
        """Stop within `grace_s` (default ``drain_s``), whatever the network does: stop listening (connections not
        yet handed on are dropped at once); let open associations finish, aborting those still open at the
        deadline; let the conversions and C-STOREs in progress finish by then. Whatever is unfinished at the
        deadline stays in the spool for the next start (instances in received/, files in the outboxes). Returns
        how many conversion or forwarding threads were still busy at the deadline (0: a clean stop)."""
        deadline = time.monotonic() + (self.config.drain_s if grace_s is None else grace_s)

        def left() -> float:
            return max(deadline - time.monotonic(), 0.0)

        if self._gate is not None:
            self._gate.close()
        while self._acceptors() and left():
            time.sleep(0.05)
        for assoc in self._acceptors():
            assoc.abort(block=False)  # their unacknowledged instances are the senders' to send again
        self._stopping.set()
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            if worker.ident is not None:  # started (a start that failed to bind started none)
                worker.join(left())
        for forwarder in self.forwarders:
            forwarder.stop(left())
        busy = sum(w.is_alive() for w in self._workers) + sum(f.busy for f in self.forwarders)
        if self._server is not None:
            self._server.server_close()
        if not busy:  # a straggler may still write to the spool; the process ends with it (daemon threads)
            self.spool.close()
        batches = self.engine.stats()["batch_sizes"]  # shows instances of different associations batching together
        event("stopped", **{k: v for k, v in sorted(self.stats.items())}, unfinished=busy or None,
              engine_batch_sizes=",".join(f"{size}x{count}" for size, count in batches.items()) or None)
        return busy

    def _acceptors(self) -> list[Any]:
        return [a for a in self._ae.active_associations if a.is_acceptor]

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[name] += n

    # -- admission: the gate's thread, then pynetdicom's ------------------------------------------------------
    def _admits(self, calling: str, address: str) -> bool:
        """May `calling` associate from `address`? A refusal is logged and counted here."""
        if any(a.admits(calling, address) for a in self.config.allow):
            return True
        known_title = any(a.ae_title == calling for a in self.config.allow)
        event("association_rejected", logging.WARNING, calling_ae=calling, address=address,
              reason="address not allowed for this AE title" if known_title else "calling AE title not allowed")
        self._count("associations_rejected")
        return False

    def _hand_on(self, sock: Any, address: Any) -> None:
        """A connection whose association request the gate read and admitted: pynetdicom negotiates it."""
        self._server.process_request(sock, address)

    # -- association handlers (pynetdicom threads) -------------------------------------------------------------
    def _on_requested(self, ev: Any) -> None:
        """The same check again, on pynetdicom's reading of the request (the gate has already applied it)."""
        assoc = ev.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        if not self._admits(calling, str(assoc.requestor.address)):
            assoc.acse.send_reject(*REJECT_CALLING_AE)
            assoc.kill()

    def _on_echo(self, ev: Any) -> int:
        event("echo", calling_ae=str(ev.assoc.requestor.ae_title).strip(), address=ev.assoc.requestor.address)
        return SUCCESS

    def _on_store(self, ev: Any) -> Any:
        from pydicom.dataset import Dataset

        start = time.perf_counter()
        req = ev.request
        calling = str(ev.assoc.requestor.ae_title).strip()
        sop_class = str(req.AffectedSOPClassUID)
        fields: dict[str, Any] = dict(calling_ae=calling, sop_instance_uid=str(req.AffectedSOPInstanceUID),
                                      sop_class=STORAGE_CLASSES.get(sop_class, sop_class))

        def refuse(status: int, why: str) -> Any:
            self._count("store_failed")
            event("store_failed", logging.WARNING, **fields, status=f"0x{status:04X}", reason=why)
            rsp = Dataset()
            rsp.Status = status
            rsp.ErrorComment = why[:64]  # LO
            return rsp

        try:
            uid = check_uid(req.AffectedSOPInstanceUID, "Affected SOP Instance UID")
            check_uid(sop_class, "Affected SOP Class UID")
        except InputError as exc:
            return refuse(CANNOT_UNDERSTAND, str(exc))
        data = ev.encoded_dataset(include_meta=True)

        def check(path: Path) -> None:
            """The instance must be one dexrt can convert, and be what the request says it is."""
            _, _, source = read_dicom(path)
            ds = source.dataset
            if str(ds.SOPInstanceUID) != uid:
                raise InputError(f"{path}: its SOP Instance UID {ds.SOPInstanceUID} is not the request's")
            if str(ds.SOPClassUID) != sop_class:
                raise _Mismatch(f"{path}: its SOP Class UID {ds.SOPClassUID} is not the request's {sop_class}")

        try:
            admitted = self.spool.admit(uid, data, check)
        except _Mismatch as exc:
            return refuse(DATASET_MISMATCH, _short(exc, uid))
        except InputError as exc:
            return refuse(CANNOT_UNDERSTAND, _short(exc, uid))
        except OSError as exc:  # disk full, spool unwritable: the sender keeps the instance and retries
            return refuse(OUT_OF_RESOURCES, f"cannot store: {exc.strerror or exc}")
        except Exception as exc:  # a library failing on one instance must not end the association or the node
            logging.getLogger(__name__).debug("C-STORE handler failed", exc_info=True)
            return refuse(PROCESSING_FAILURE, f"unexpected {type(exc).__name__}: {exc}")
        if not admitted:
            self._count("duplicates")
            event("duplicate", **fields, note="already received; acknowledged, not converted again")
            return SUCCESS
        self._count("received")
        self._queue.put(self.spool.received / f"{uid}.dcm")
        event("received", **fields, bytes=len(data), ms=round((time.perf_counter() - start) * 1000, 1))
        return SUCCESS

    # -- conversion workers ------------------------------------------------------------------------------------
    def _convert_loop(self) -> None:
        while True:
            path = self._queue.get()
            if path is None or self._stopping.is_set():
                return  # an instance not started stays in received/ for the next start
            try:
                self._convert(path)
                self._attempts.pop(path, None)
            except Exception as exc:  # e.g. the spool's disk is full: keep the instance, try again later
                logging.getLogger(__name__).debug("handing on %s failed", path, exc_info=True)
                if self._stopping.is_set():
                    return  # it stays in received/ for the next start
                attempts = self._attempts[path] = self._attempts.get(path, 0) + 1
                delay = min(self.config.retry_initial_s * 2 ** (attempts - 1), self.config.retry_max_s)
                self._count("convert_retries")
                event("convert_retry", logging.ERROR, file=path.name, attempts=attempts, retry_in_s=round(delay, 2),
                      reason=str(exc) if isinstance(exc, _Retry) else f"{type(exc).__name__}: {exc}")
                if self._stopping.wait(delay):
                    return
                self._queue.put(path)

    def _convert(self, path: Path) -> None:
        uid = path.name[: -len(".dcm")]
        if self.converter.is_done(path):  # converted before a restart, not yet handed on
            outputs, seconds = self.converter.targets(path), 0.0
        else:
            outcome = self.converter.convert(path)
            if not outcome.ok and self._stopping.is_set():  # e.g. cancelled by the engine closing: not the file's
                raise _Retry(f"stopped before {path.name} was converted; it stays in received/")
            if not outcome.ok and outcome.transient:  # disk full: the instance is fine, the machine is not
                raise _Retry(outcome.error or "")
            if not outcome.ok:
                failed = self.spool.fail(path, outcome.error or "", self.converter.targets(path))
                self._count("convert_failed")
                event("convert_failed", logging.ERROR, sop_instance_uid=uid, reason=outcome.error,
                      kept=str(failed))
                return
            outputs, seconds = outcome.outputs, outcome.seconds
            for warning in outcome.warnings:  # assumed spacing, out-of-domain content: also in the derived DICOM
                event("convert_warning", logging.WARNING, sop_instance_uid=uid, reason=warning)
        self.spool.deliver(path, outputs, self.config.output)
        for forwarder in self.forwarders:
            forwarder.notify()
        self._count("converted")
        event("converted", sop_instance_uid=uid, outputs=len(outputs), seconds=round(seconds, 3))


class _Retry(Exception):
    """A conversion failed for a reason outside the instance (disk full): it stays in received/ and is retried."""


class _Mismatch(InputError):
    """The dataset's SOP class is not the one the C-STORE request names."""


def _short(exc: Exception, uid: str) -> str:
    """The error without the spool path it names (the sender knows which instance it sent)."""
    text = str(exc)
    head, sep, rest = text.partition(": ")
    return rest if sep and head.endswith(f"{uid}.dcm") else text
