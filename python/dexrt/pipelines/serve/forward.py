"""Sending derived instances on: one forwarder thread per destination, draining that destination's outbox.

A file leaves the outbox only when the destination has answered its C-STORE with success (or a warning, which
means stored). Until then it stays on disk: a destination that is down, refuses the association or aborts it is
retried with exponential backoff (``retry_initial_s`` doubling up to ``retry_max_s``), and a file the destination
refuses is retried on its own schedule without holding up the others. Nothing is ever dropped.

A C-STORE left unanswered for ``timeout_s`` (a slow archive) ends its association, and that file waits on its own
backoff, starting at twice ``timeout_s``, while the next association sends the others: a slow destination is never
sent the same instance again while it may still be storing the first copy, and one slow file does not hold up the
rest. A file sent again after an unanswered C-STORE may reach the destination twice (same SOP Instance UID, which
an archive recognises); each such resend is counted (``forward_resent``) and logged.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dexrt.pipelines.serve.config import Destination, ServeConfig
from dexrt.pipelines.serve.contexts import add_scu_contexts, client_tls
from dexrt.pipelines.serve.logs import event
from dexrt.pipelines.serve.spool import Spool

_SENT_PER_ASSOCIATION = 256  # then release and open a new association (bounds one association's life)
_LINGER_S = 0.5  # an association idle this long is released; files arriving sooner go on the same one


def _scu(config: ServeConfig) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=config.ae_title)
    add_scu_contexts(ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = config.timeout_s
    ae.connection_timeout = min(config.timeout_s, 10.0)
    return ae


def _associate(ae: Any, dest: Destination) -> Any:
    tls = (client_tls(dest.tls_ca, dest.tls_cert, dest.tls_key), dest.host) if dest.tls else None
    return ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls)


def _why(assoc: Any) -> str:
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        return (f"association rejected (result {rj.result}, source {rj.result_source}, reason {rj.diagnostic}: "
                f"{rj.reason_str})") if rj is not None else "association rejected"
    # pynetdicom reports a refused or timed-out TCP connection as an abort too; its log line says which
    return "no association (connection refused or timed out, or aborted by the destination)"


def echo(config: ServeConfig, dest: Destination) -> tuple[bool, str]:
    """C-ECHO one destination: (answered with success, what happened)."""
    assoc = _associate(_scu(config), dest)
    if not assoc.is_established:
        return False, _why(assoc)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" not in status:
        return False, "no answer to C-ECHO (timeout or abort)"
    return status.Status == 0x0000, f"C-ECHO status 0x{status.Status:04X}"


class Forwarder:
    """Drains one destination's outbox in its own thread; :meth:`notify` when new files arrive."""

    def __init__(self, config: ServeConfig, dest: Destination, spool: Spool,
                 count: Callable[[str, int], None]) -> None:
        self.dest = dest
        self._config = config
        self._spool = spool
        self._count = count
        self._ae = _scu(config)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._file_retry: dict[str, tuple[int, float]] = {}  # file name -> (attempts, not before)
        self._unanswered: set[str] = set()  # files whose last C-STORE got no answer: a resend may duplicate
        self._thread = threading.Thread(target=self._run, name=f"dexrt-forward-{dest.key}", daemon=True)
        self._assoc: Any = None  # the association in use, for stop() to abort

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the C-STORE in progress, or abort it once `timeout` has passed (its file stays in the outbox,
        sent again at the next start); unsent files stay in the outbox."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        assoc = self._assoc
        if self._thread.is_alive() and assoc is not None and assoc.is_established:
            assoc.abort(block=False)
            self._thread.join(1.0)

    @property
    def busy(self) -> bool:
        """The forwarding thread is still running (after :meth:`stop`: it did not finish in time)."""
        return self._thread.is_alive()

    def _backoff(self, attempts: int) -> float:
        return min(self._config.retry_initial_s * 2 ** max(attempts - 1, 0), self._config.retry_max_s)

    def _unanswered_backoff(self, attempts: int) -> float:
        """After a C-STORE with no answer: the destination may still be storing it, so wait at least twice as long
        as it was given, doubling with each attempt."""
        first = max(2 * self._config.timeout_s, self._config.retry_initial_s)
        return min(first * 2 ** max(attempts - 1, 0), max(self._config.retry_max_s, first))

    def _defer(self, path: Path, unanswered: bool) -> tuple[int, float]:
        attempts = self._file_retry.get(path.name, (0, 0.0))[0] + 1
        delay = self._unanswered_backoff(attempts) if unanswered else self._backoff(attempts)
        self._file_retry[path.name] = (attempts, time.monotonic() + delay)
        if unanswered:
            self._unanswered.add(path.name)
        return attempts, delay

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._wake.clear()  # before looking: a notify from now on is not lost
            files = self._due()
            if not files:
                self._wake.wait(1.0)  # also a periodic look for files whose own retry time has come
                continue
            why: str | None = None
            try:
                reached = self._send(files)
            except Exception as exc:  # a bug or a library failure must not end forwarding for good
                logging.getLogger(__name__).debug("forwarding failed", exc_info=True)
                reached, why = False, f"unexpected {type(exc).__name__}: {exc}"
            if reached is True:
                failures = 0
                continue
            failures += 1
            delay = self._backoff(failures)
            event("destination_unavailable", logging.WARNING, destination=self.dest.name,
                  reason=why or reached, waiting=len(files), retry_in_s=round(delay, 2))
            self._count("forward_retries", 1)
            self._stop.wait(delay)

    def _due(self) -> list[Path]:
        """The outbox's files, oldest first, less those refused or left unanswered whose retry time has not come."""
        now = time.monotonic()
        waiting = self._spool.waiting(self.dest.key)
        if len(self._file_retry) > len(waiting):  # files an operator removed: forget their schedules
            names = {p.name for p in waiting}
            self._file_retry = {k: v for k, v in self._file_retry.items() if k in names}
            self._unanswered &= names
        return [p for p in waiting if self._file_retry.get(p.name, (0, 0.0))[1] <= now]

    def _send(self, files: list[Path]) -> bool | str:
        """Send `files`, and those arriving meanwhile, on one association: True if the destination was reached,
        else why not."""
        assoc = self._assoc = _associate(self._ae, self.dest)
        if not assoc.is_established:
            return _why(assoc)
        sent = 0
        try:
            while files and sent < _SENT_PER_ASSOCIATION and not self._stop.is_set():
                batch = files[: _SENT_PER_ASSOCIATION - sent]
                sent += len(batch)
                if (why := self._send_on(assoc, batch)) is not True:
                    return why
                if not assoc.is_established:  # a C-STORE went unanswered: that association is gone
                    return True
                self._wake.clear()
                files = self._due()
                if not files and self._wake.wait(_LINGER_S):
                    files = self._due()
        finally:
            if assoc.is_established:
                assoc.release()
        return True

    def _send_on(self, assoc: Any, files: list[Path]) -> bool | str:
        from pydicom import dcmread

        for path in files:
            if self._stop.is_set():
                break
            try:
                ds = dcmread(path)
            except FileNotFoundError:  # sent by an earlier association whose release timed out
                continue
            resent = path.name in self._unanswered
            if resent:
                self._count("forward_resent", 1)
            status, detail = self._store(assoc, ds)
            if status is None:  # no answer: the association died; the file stays, on its own backoff
                attempts, delay = self._defer(path, unanswered=True)
                event("forward_unanswered", logging.WARNING, destination=self.dest.name, file=path.name,
                      detail=detail, attempts=attempts, retry_in_s=round(delay, 2))
                return True  # the destination was reached, only slow: the next association sends the others
            if status == 0x0000 or status & 0xF000 == 0xB000:  # success, or stored with a warning
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                self._file_retry.pop(path.name, None)
                self._unanswered.discard(path.name)
                self._count("forwarded", 1)
                event("forwarded", destination=self.dest.name, sop_instance_uid=str(ds.SOPInstanceUID),
                      status=f"0x{status:04X}" if status else None,
                      resent="after an unanswered C-STORE: the destination may hold it twice" if resent else None)
            else:
                self._unanswered.discard(path.name)
                attempts, delay = self._defer(path, unanswered=False)
                event("forward_refused", logging.WARNING, destination=self.dest.name, file=path.name,
                      status=f"0x{status:04X}", detail=detail, attempts=attempts, retry_in_s=round(delay, 2))
        return True

    def _store(self, assoc: Any, ds: Any) -> tuple[int | None, str | None]:
        """C-STORE one dataset: (status or None if no answer, a detail). A compressed instance the destination
        has no context for goes uncompressed (dexrt writes only lossless compressed syntaxes)."""
        try:
            rsp = assoc.send_c_store(ds)
        except ValueError as exc:  # no accepted presentation context for this class and syntax
            if not ds.file_meta.TransferSyntaxUID.is_compressed:
                return 0xA900, f"destination accepts no context for it: {exc}"
            ds.decompress()
            try:
                rsp = assoc.send_c_store(ds)
            except ValueError as exc2:
                return 0xA900, f"destination accepts no context for it: {exc2}"
        if "Status" not in rsp:
            return None, "timeout or abort"
        return int(rsp.Status), str(rsp.get("ErrorComment", "")) or None
