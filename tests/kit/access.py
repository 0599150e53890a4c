"""Peers for the access-control tests: a C-MOVE destination, a modality asking for storage
commitment, and what a peer received, reduced to what can be compared.

The destination is a pynetdicom AE in this process (STYLE rule 19) that counts the associations
the archive opens to it and the instances it receives. The commitment requester runs in a
process of its own, as `tests/pacs/test_commitment.py` explains: pynetdicom's process-global
options that the SCP sets in this process break its receipt of an N-EVENT-REPORT here.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

#: how long the requester waits for its N-EVENT-REPORT (the archive sends it a second after the answer)
REPORT_WAIT = 15.0


def identifier_bytes(ds: Dataset | None) -> bytes:
    """A response identifier as encoded on the wire (explicit VR little endian), to search for
    bytes that must not be there."""
    if ds is None:
        return b""
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def shape(responses: list[tuple[Dataset, Dataset | None]]) -> list[tuple[Any, ...]]:
    """A C-MOVE or C-GET answer as a peer can tell it apart: each response's status, sub-operation
    counts, Error Comment, and the keywords of its identifier."""
    out = []
    for status, ident in responses:
        counts = tuple(
            status.get(k)
            for k in (
                "NumberOfRemainingSuboperations",
                "NumberOfCompletedSuboperations",
                "NumberOfFailedSuboperations",
                "NumberOfWarningSuboperations",
            )
        )
        keywords = None if ident is None else tuple(sorted(e.keyword for e in ident))
        out.append((int(status.Status), counts, status.get("ErrorComment"), keywords))
    return out


@dataclass
class Destination:
    """A storage SCP in this process registered as a C-MOVE destination: what the archive sent it."""

    ae_title: str = "DEST"
    associations: int = 0
    received: list[str] = field(default_factory=list)  # SOP Instance UIDs, in order
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: Any = None

    def start(self) -> int:
        """Listen on an ephemeral port of 127.0.0.1; the port."""
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(CTImageStorage)
        handlers = [(evt.EVT_ACCEPTED, self._accepted), (evt.EVT_C_STORE, self._stored)]
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def _accepted(self, _event: evt.Event) -> None:
        with self._lock:
            self.associations += 1

    def _stored(self, event: evt.Event) -> int:
        with self._lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000


# ----- storage commitment, from a process of its own -----------------------------------------


def _ask(ae_title: str, port: int, refs: list[tuple[str, str]], transaction_uid: str, out: Any) -> None:
    """The requester: one N-ACTION, then wait on the association for the report; one dict on `out`."""
    reports: queue.Queue[dict[str, Any]] = queue.Queue()

    def on_report(event: evt.Event) -> tuple[int, None]:
        info = event.event_information
        reports.put(
            {
                "event_type": int(event.event_type),
                "transaction_uid": str(info.TransactionUID),
                "committed": [
                    (str(i.ReferencedSOPInstanceUID), str(i.ReferencedSOPClassUID))
                    for i in info.get("ReferencedSOPSequence", [])
                ],
                "failed": [
                    (str(i.ReferencedSOPInstanceUID), str(i.ReferencedSOPClassUID), int(i.FailureReason))
                    for i in info.get("FailedSOPSequence", [])
                ],
            }
        )
        return 0x0000, None

    ae = AE(ae_title=ae_title)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", port, ae_title="MUNIPACS", evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    result: dict[str, Any] = {"established": assoc.is_established}
    if not assoc.is_established:
        out.put(result)
        return
    info = Dataset()
    info.TransactionUID = transaction_uid
    info.ReferencedSOPSequence = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        info.ReferencedSOPSequence.append(item)
    status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance)
    result["action_status"] = int(status.Status) if status else None
    result["error_comment"] = status.get("ErrorComment") if status else None
    try:
        result["report"] = reports.get(timeout=REPORT_WAIT if result["action_status"] == 0 else 2)
    except queue.Empty:
        result["report"] = None
    if assoc.is_established:
        assoc.release()
    out.put(result)


class CommitmentRequest:
    """An N-ACTION of `ae_title` for `refs` ((SOP Class UID, SOP Instance UID) each), asked from a
    process of its own; `result()` waits for what it saw: the N-ACTION status and the report."""

    def __init__(self, port: int, ae_title: str, refs: list[tuple[str, str]], transaction_uid: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._out = ctx.Queue()
        self._process = ctx.Process(target=_ask, args=(ae_title, port, refs, transaction_uid, self._out), daemon=True)
        self._process.start()

    def result(self) -> dict[str, Any]:
        try:
            return dict(self._out.get(timeout=60))
        finally:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
