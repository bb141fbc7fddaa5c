"""Helpers for the `dexrt serve` tests and benchmark: radiograph datasets, a sending client, a destination SCP.

Everything listens on 127.0.0.1 only, on ports the system picks.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

LOOPBACK = "127.0.0.1"
CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
XA = "1.2.840.10008.5.1.4.1.1.12.1"
RF = "1.2.840.10008.5.1.4.1.1.12.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll `condition` until it is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def radiograph(size: int = 128, sop_class: str = DX, seed: int = 0, study_uid: str | None = None,
               patient_id: str = "P0001", frames: int = 0) -> Any:
    """A 12-bit MONOCHROME2 radiograph dataset with file meta (Explicit VR Little Endian); `frames` > 0 makes a
    multi-frame one (for the XA/RF classes)."""
    from pydicom import uid
    from pydicom.dataset import Dataset, FileMetaDataset

    modality = {CR: "CR", XA: "XA", RF: "RF"}.get(sop_class, "DX")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid.generate_uid()
    ds.Modality = modality
    ds.PatientName, ds.PatientID = "Test^Serve", patient_id
    ds.StudyInstanceUID = study_uid or uid.generate_uid()
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    if sop_class == DX_PROCESSING:
        ds.PresentationIntentType = "FOR PROCESSING"
    shape = (frames, size, size) if frames else (size, size)
    pixels = (np.random.default_rng(seed).random(shape) * 4095).astype(np.uint16)
    ds.set_pixel_data(pixels, "MONOCHROME2", 12, generate_instance_uid=False)
    if frames:
        ds.FrameTime = 33.3
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
    return ds


def client(ae_title: str = "MODALITY") -> Any:
    from pynetdicom import AE

    from dexrt.pipelines.serve.contexts import STORAGE_CLASSES, VERIFICATION

    ae = AE(ae_title=ae_title)
    for sop_class in STORAGE_CLASSES:
        ae.add_requested_context(sop_class)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.connection_timeout = 5
    return ae


def send(datasets: list[Any], port: int, *, ae_title: str = "MODALITY", called: str = "DEXRT",
         on_ack: Callable[[Any, int], None] | None = None) -> list[int | None]:
    """C-STORE each dataset on one association; the statuses (None: no answer)."""
    assoc = client(ae_title).associate(LOOPBACK, port, ae_title=called)
    assert assoc.is_established, f"association to 127.0.0.1:{port} not established"
    statuses: list[int | None] = []
    try:
        for ds in datasets:
            if not assoc.is_established:  # aborted by the peer (or the peer died)
                break
            rsp = assoc.send_c_store(ds)
            status = int(rsp.Status) if "Status" in rsp else None
            statuses.append(status)
            if status is None:
                break
            if on_ack is not None:
                on_ack(ds, status)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


class Destination:
    """A C-STORE SCP on 127.0.0.1 that keeps what it receives (datasets, arrival times) in memory.

    ``slow_first_s`` makes it a slow archive: the first C-STORE of each SOP Instance UID is answered only after that
    many seconds. ``attempts`` counts the C-STOREs of each UID; ``overlaps`` lists the UIDs that arrived again while
    an earlier C-STORE of the same UID was still being handled."""

    def __init__(self, ae_title: str = "PACS", port: int | None = None, slow_first_s: float = 0.0) -> None:
        self.ae_title = ae_title
        self.port = port or free_port()
        self.slow_first_s = slow_first_s
        self.received: list[Any] = []
        self.arrivals: dict[str, float] = {}  # SOP Instance UID -> time.time() at arrival
        self.attempts: dict[str, int] = {}
        self.overlaps: list[str] = []
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._server: Any = None

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{LOOPBACK}:{self.port}"

    def start(self, ssl_context: Any = None) -> Destination:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        from dexrt.pipelines.serve.contexts import VERIFICATION

        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.add_supported_context(VERIFICATION)
        self._server = ae.start_server((LOOPBACK, self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)], ssl_context=ssl_context)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        uid = str(ds.SOPInstanceUID)
        with self._lock:
            if uid in self._busy:
                self.overlaps.append(uid)
            self._busy.add(uid)
            self.attempts[uid] = self.attempts.get(uid, 0) + 1
            first = self.attempts[uid] == 1
        try:
            if first and self.slow_first_s:
                time.sleep(self.slow_first_s)
            with self._lock:
                self.arrivals.setdefault(uid, time.time())
                self.received.append(ds)
        finally:
            with self._lock:
                self._busy.discard(uid)
        return 0x0000

    def by_source(self) -> dict[str, list[Any]]:
        """Received derived instances grouped by the SOP Instance UID of the source they reference; an instance
        received twice (delivery is at least once) counts once."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for ds in self.received:
                source = str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
                out.setdefault(source, {})[str(ds.SOPInstanceUID)] = ds
        return {source: list(instances.values()) for source, instances in out.items()}

    def unique(self) -> set[str]:
        with self._lock:
            return {str(ds.SOPInstanceUID) for ds in self.received}
