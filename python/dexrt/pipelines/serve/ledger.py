"""The ledger: the SOP Instance UIDs a node has handed on, so that a resent instance is recognised, not converted
and forwarded again.

    SPOOL/ledger    one UID a line, oldest first; a line counts only once its newline is on disk

Appending is one ``write`` of ``<uid>\\n`` and an ``fsync``. A node that dies in the middle leaves a last line
without its newline: at the next start that torn tail is cut off (its instance is still in ``received/`` and is
handed on again, which writes the line whole), so the next UID is never glued to it. Lines that are not UIDs
(a filesystem that filled a torn block with NULs) are dropped.

The ledger is bounded: it remembers the newest ``keep`` UIDs. When the file reaches ``2 * keep`` lines it is
rewritten with the newest ``keep`` (atomically: a crash leaves the old file or the new one), so the file and the
memory hold at most ``2 * keep`` UIDs. A resend older than the newest ``keep`` hand-ons is converted and
forwarded again; its derived instances carry the same UIDs as the first time, which a PACS recognises.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dexrt._atomic import atomic_write, sync_folder
from dexrt._errors import InputError
from dexrt.io.dicom import check_uid

log = logging.getLogger(__name__)


class Ledger:
    """The ledger file of one spool (see the module docstring). Not thread-safe: the spool serialises calls."""

    def __init__(self, path: Path, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.path, self.keep = path, keep
        self._uids: dict[str, None] = {}  # insertion-ordered: oldest first
        self._lines = 0  # lines in the file, dropped ones included
        self._read()
        self._file = open(self.path, "ab")  # noqa: SIM115 - open for the spool's lifetime
        if self._lines > 2 * self.keep:
            self.compact()

    def _read(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        whole = data.rfind(b"\n") + 1
        if whole < len(data):  # the node died while appending: that line never counted
            log.warning("%s: cutting off a torn last line (%d bytes) left by a crash", self.path, len(data) - whole)
            with open(self.path, "r+b") as f:
                f.truncate(whole)
                os.fsync(f.fileno())
        dropped = 0
        for line in data[:whole].split(b"\n")[:-1]:
            self._lines += 1
            try:
                uid = check_uid(line.decode("ascii"), "ledger line")
            except (UnicodeDecodeError, InputError):
                dropped += 1
                continue
            self._uids.pop(uid, None)
            self._uids[uid] = None
        if dropped:
            log.warning("%s: %d line(s) that are not UIDs ignored", self.path, dropped)

    def __contains__(self, uid: object) -> bool:
        return uid in self._uids

    def __len__(self) -> int:
        return len(self._uids)

    def add(self, uid: str) -> None:
        """Record `uid` as handed on, durably, before returning."""
        uid = check_uid(uid, "SOP Instance UID")
        self._file.write(uid.encode("ascii") + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._uids.pop(uid, None)
        self._uids[uid] = None
        self._lines += 1
        if self._lines >= 2 * self.keep:
            self.compact()

    def compact(self) -> None:
        """Rewrite the file with the newest `keep` UIDs (atomic replace, folder synced)."""
        newest = list(self._uids)[-self.keep:]
        with atomic_write(self.path) as f:
            f.write(b"".join(uid.encode("ascii") + b"\n" for uid in newest))
        sync_folder(self.path.parent)
        self._file.close()
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._uids = dict.fromkeys(newest)
        self._lines = len(newest)

    def close(self) -> None:
        self._file.close()
