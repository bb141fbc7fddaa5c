"""The spool: every acknowledged instance lives here until its derived instances are handed to every destination.

    SPOOL/
      lock                       held (flock) by the running node: two nodes never share a spool
      incoming/<uid>.dcm         being received: written, synced, checked; never acknowledged from here
      received/<uid>.dcm         acknowledged to the sender; waiting for conversion
      work/<uid>_bone.dcm ...    the converter's outputs (same UIDs on a rerun: they derive from the source's)
      outbox/<dest>/<uid>_bone.dcm   waiting for that destination (hard links to the work files)
      failed/<uid>.dcm, .txt     acknowledged but not convertible (engine failure); the reason beside it
                                 (`dexrt serve --retry-failed` puts them back into received/)
      ledger                     SOP Instance UIDs fully handed on, one a line: resent instances are recognised
                                 (bounded and crash-safe: ledger.py)

Each step is a rename or a hard link inside one filesystem, followed by syncing the folder, so at any instant an
instance is in exactly one durable place, and every step can be repeated after a crash (see docs/serve.md).
File names are SOP Instance UIDs, checked (dexrt.io.dicom.check_uid: digits and dots, at most 64 characters)
before they touch the filesystem, and again wherever one is read back (file names, ledger lines).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dexrt._atomic import atomic_write, sync_folder
from dexrt._errors import ConfigError, InputError
from dexrt.io.dicom import check_uid
from dexrt.pipelines.serve.ledger import Ledger

SUFFIX = ".dcm"
log = logging.getLogger(__name__)


def uid_of(name: str) -> str | None:
    """The SOP Instance UID a spool file is named after (``<uid>.dcm``), or None for any other name."""
    if not name.endswith(SUFFIX) or name.startswith("."):
        return None
    try:
        return check_uid(name[: -len(SUFFIX)])
    except InputError:
        return None


class Spool:
    """The spool folder of one node (see the module docstring). Thread-safe."""

    def __init__(self, root: str | os.PathLike[str], outboxes: Iterable[str] = (), *,
                 ledger_entries: int = 100_000, wait_s: float = 30.0) -> None:
        self.root = Path(root)
        for sub in ("incoming", "received", "work", "failed", "outbox"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.root / "lock", "a+b")  # noqa: SIM115 - held for the node's lifetime
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise ConfigError(f"{self.root}: the spool is in use by another running node") from None
        self.incoming, self.received, self.work, self.failed = (self.root / s for s in
                                                               ("incoming", "received", "work", "failed"))
        self.outboxes = {key: self.root / "outbox" / key for key in outboxes}
        for folder in self.outboxes.values():
            folder.mkdir(exist_ok=True)
        # Never acknowledged (the node died while receiving): the sender did not get a success and sends again.
        for entry in os.scandir(self.incoming):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        self._mutex = threading.Lock()
        self._settled = threading.Condition(self._mutex)  # notified whenever a receive ends, stored or not
        self._reserved: set[str] = set()  # being received right now
        self._wait_s = wait_s
        self._ledger = Ledger(self.root / "ledger", ledger_entries)

    def close(self) -> None:
        self._ledger.close()
        self._lock_file.close()  # releases the flock

    # -- receiving ----------------------------------------------------------------------------------------------
    def admit(self, uid: str, data: bytes, check: Callable[[Path], Any]) -> bool:
        """Store one received instance durably in received/; False if it is already in the spool (a resend).

        `check(path)` runs on the synced file before it is admitted and raises on a bad instance, which is then
        removed. Only when this returns (True or False) may the instance be acknowledged: either way it is on disk.

        The same UID being received on another association at this moment is waited for (up to ``wait_s``, then
        a TimeoutError, which the node answers with "out of resources": the sender tries again): if that receive
        stores it, this one is a resend; if it fails, this one is stored itself. A resend is never acknowledged
        on the strength of a receive that may still fail."""
        uid = check_uid(uid, "SOP Instance UID")
        with self._settled:
            if not self._settled.wait_for(lambda: uid not in self._reserved, self._wait_s):
                raise TimeoutError(f"SOP Instance UID {uid} is still being received on another association")
            if uid in self._ledger or (self.received / f"{uid}{SUFFIX}").exists():
                return False
            self._reserved.add(uid)
        staged = self.incoming / f"{uid}{SUFFIX}"
        try:
            with atomic_write(staged) as f:
                f.write(data)
            check(staged)
            os.replace(staged, self.received / staged.name)
            sync_folder(self.received)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
            raise
        finally:
            with self._settled:
                self._reserved.discard(uid)
                self._settled.notify_all()
        return True

    def pending(self) -> list[Path]:
        """The received instances not yet handed on, oldest first (a restart resumes from these)."""
        found = []
        for entry in os.scandir(self.received):
            uid = uid_of(entry.name)
            if uid is None:
                if not entry.name.startswith("."):
                    log.warning("%s: not named <SOP Instance UID>.dcm; left alone", entry.path)
                continue
            if uid in self._ledger:  # handed on; the node died before removing it
                self._remove(uid, [])
                continue
            found.append((entry.stat().st_mtime_ns, Path(entry.path)))
        return [p for _, p in sorted(found)]

    # -- handing on ---------------------------------------------------------------------------------------------
    def deliver(self, source: Path, outputs: list[Path], output_dir: Path | None) -> None:
        """Hand one converted instance on: its outputs into every outbox (and `output_dir`), then the ledger,
        then the source and work files are removed. Every step is idempotent, so a crash anywhere repeats it."""
        for folder in self.outboxes.values():
            for path in outputs:
                with contextlib.suppress(FileExistsError):
                    os.link(path, folder / path.name)
            sync_folder(folder)
        if output_dir is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
            for path in outputs:
                if not (output_dir / path.name).exists():
                    with open(path, "rb") as src, atomic_write(output_dir / path.name) as dst:
                        shutil.copyfileobj(src, dst)
        uid = source.name[: -len(SUFFIX)]
        with self._mutex:
            self._ledger.add(uid)
        self._remove(uid, outputs)

    def fail(self, source: Path, reason: str, outputs: list[Path]) -> Path:
        """Set aside an acknowledged instance that cannot be converted, with the reason beside it; `outputs`
        (any it got before failing) are removed."""
        target = self.failed / source.name
        with atomic_write(target.with_suffix(".txt")) as f:
            f.write(reason.encode("utf-8", "replace") + b"\n")
        os.replace(source, target)
        sync_folder(self.failed)
        self._remove(source.name[: -len(SUFFIX)], outputs)
        return target

    def retry_failed(self) -> list[str]:
        """Put every instance in failed/ back into received/ (its reason file removed), for the next start to
        convert; the UIDs moved. One that was meanwhile received again or handed on is simply removed."""
        moved = []
        for entry in sorted(os.scandir(self.failed), key=lambda e: e.name):
            uid = uid_of(entry.name)
            if uid is None:
                continue
            target = self.received / entry.name
            if uid in self._ledger or target.exists():
                os.unlink(entry.path)
            else:
                os.replace(entry.path, target)
                moved.append(uid)
            with contextlib.suppress(FileNotFoundError):
                (self.failed / f"{uid}.txt").unlink()
        sync_folder(self.received)
        sync_folder(self.failed)
        return moved

    def _remove(self, uid: str, outputs: list[Path]) -> None:
        for path in [self.received / f"{uid}{SUFFIX}", *outputs]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- outboxes -----------------------------------------------------------------------------------------------
    def waiting(self, key: str) -> list[Path]:
        """The files in one destination's outbox, oldest first."""
        found = [(e.stat().st_mtime_ns, e.name, Path(e.path)) for e in os.scandir(self.outboxes[key])
                 if e.name.endswith(SUFFIX) and not e.name.startswith(".")]
        return [p for *_, p in sorted(found)]

    def counts(self) -> dict[str, int]:
        """How many instances wait at each stage (for status lines and tests)."""
        def count(folder: Path) -> int:
            return sum(1 for e in os.scandir(folder) if e.name.endswith(SUFFIX) and not e.name.startswith("."))

        return {"received": count(self.received), "failed": count(self.failed), "handed_on": len(self._ledger),
                **{f"outbox:{k}": count(v) for k, v in self.outboxes.items()}}
