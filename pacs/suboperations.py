"""What C-MOVE and C-GET share: sending stored instances as C-STORE sub-operations (PS3.4 C.4.2.3, C.4.3.3).

pynetdicom runs both services (`QueryRetrieveServiceClass._move_scp` / `_get_scp`): it opens the
association to the move destination, sends each sub-operation, counts remaining, completed,
failed and warning sub-operations, sends the pending responses, keeps the Failed SOP Instance
UID List and ends with Success, Warning (0xB000) or, when every sub-operation failed, 0xA702.
A handler yields what to send. pynetdicom records a C-CANCEL but does not act on it: the
handler checks `event.is_cancelled` between sub-operations and yields 0xFE00 (`Retrieval.run`).

Two gaps of that handler protocol are bridged here, each by giving one association object its
own method for one request, as pynetdicom's `attempt` does with `Association.abort`:

- A sub-operation must be a pydicom `Dataset`, which `Association.send_c_store` re-encodes
  element by element (several ms per CT header), while the same method sends a Part-10 *file*
  as stored, data set bytes streamed unchanged (`_config.STORE_SEND_CHUNKED_DATASET`). So each
  sub-operation is a `StoredObject`, a Dataset holding the SOP Class and Instance UIDs (what
  pynetdicom reads from it) and a local file, and the sending association gets a
  `send_c_store` (`_Sender`) that sends that file instead: written straight to the socket by
  `pacs.wire.direct_send` (plain TCP), else through pynetdicom's own `send_c_store` (TLS).
- A request refused before any sub-operation can only be answered 0xA801 (C-MOVE) or Success
  (C-GET with no sub-operation); `refuse` gives that one response the status and Error Comment
  of the refusal.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import STATUS_FAILURE, STATUS_SUCCESS, STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS

from pacs.status import failure
from pacs.wire import direct_send
from storage.archive import Archive
from storage.dicom.pixels import transcode
from storage.errors import CannotTranscode, OutOfResources, StorageError
from storage.logs import event as log_event
from storage.retrieve.retrieval import Delivery, StoredInstance, read_object
from storage.retrieve.selection import FALLBACK_SYNTAXES, PATIENT, STUDY, delivery_for, proposal

log = logging.getLogger(__name__)

PENDING, CANCEL = 0xFF00, 0xFE00
#: PS3.8 9.3.2.2: presentation context IDs are the odd numbers 1-255
MAX_CONTEXTS = 128
#: instances prepared ahead of the one being sent (S3 downloads, transcodes) and threads doing it
PREFETCH = 4
#: the information model (patient or study root) of each retrieve SOP class
ROOTS = {
    PatientRootQueryRetrieveInformationModelMove: PATIENT,
    PatientRootQueryRetrieveInformationModelGet: PATIENT,
    StudyRootQueryRetrieveInformationModelMove: STUDY,
    StudyRootQueryRetrieveInformationModelGet: STUDY,
}


def model_of(event: Event) -> str:
    """PATIENT or STUDY: the root of the information model the request was made in."""
    return ROOTS[str(event.request.AffectedSOPClassUID)]


def refuse(event: Event, exc: StorageError, *, service: str, fields: dict[str, Any]) -> None:
    """Log the refusal and have the next response pynetdicom sends for `event` carry `exc`'s
    status and Error Comment.

    That is the response it sends when the handler yields no destination (C-MOVE, else
    0xA801) or no sub-operation (C-GET, else Success); the method is restored by its one call.
    """
    log_event(
        log,
        f"dimse.{service}.refused",
        level=logging.WARNING,
        **fields,
        status=f"0x{exc.status:04X}",
        reason=exc.reason,
        detail=exc.detail,
    )
    dimse = event.assoc.dimse
    status = failure(exc)

    def send_msg(primitive: Any, context_id: int) -> None:
        delattr(dimse, "send_msg")  # back to DIMSEServiceProvider.send_msg
        primitive.Status = status.Status
        primitive.ErrorComment = status.ErrorComment
        dimse.send_msg(primitive, context_id)

    setattr(dimse, "send_msg", send_msg)  # noqa: B010 - an instance attribute, one response only


def destination_contexts(instances: Sequence[StoredInstance]) -> list[PresentationContext]:
    """The presentation contexts a C-MOVE proposes: one per (SOP class, syntax) worth sending in.

    One syntax per context, so the destination can accept several for a SOP class and each
    object finds its stored syntax or a decoded one. Past the 128 contexts an association can
    carry, explicit VR little endian for every SOP class comes first, then the stored syntaxes,
    then implicit VR; an object left without a context fails its sub-operation.
    """
    wanted = proposal(instances)
    ranked: list[tuple[int, str, str]] = []
    for sop_class, syntaxes in wanted.items():
        for ts in syntaxes:
            rank = 0 if ts == FALLBACK_SYNTAXES[0] else 2 if ts == FALLBACK_SYNTAXES[1] else 1
            ranked.append((rank, sop_class, ts))
    ranked.sort(key=lambda r: r[0])  # stable: SOP classes keep their order within a rank
    return [build_context(sop_class, ts) for _, sop_class, ts in ranked[:MAX_CONTEXTS]]


@dataclass(slots=True)
class Prepared:
    """One instance ready to send: a local Part-10 file, or why it cannot be sent."""

    instance: StoredInstance
    path: Path | None = None
    size: int = 0
    temporary: bool = False
    failure: StorageError | None = None
    transfer_syntax: str = ""  # the file's: the stored one, or what it was transcoded to

    def discard(self) -> None:
        if self.temporary and self.path is not None:
            self.path.unlink(missing_ok=True)


def prepare(archive: Archive, inst: StoredInstance, delivery: Delivery | None, why_not: str) -> Prepared:
    """A file to send `inst` from: the stored file itself when it is local and goes as stored,
    else a temporary copy (remote store) or the transcoded object."""
    if delivery is None:
        return Prepared(inst, failure=CannotTranscode(why_not))
    try:
        if delivery.as_stored:
            path = archive.blobs.local_path(inst.object_key)
            if path is not None:
                return Prepared(inst, path, inst.size, transfer_syntax=delivery.transfer_syntax)
            return _spooled(archive, inst, archive.blobs.iter_chunks(inst.object_key), delivery.transfer_syntax)
        data = transcode(read_object(archive, inst), delivery.transfer_syntax)
        return _spooled(archive, inst, iter((data,)), delivery.transfer_syntax)
    except CannotTranscode as exc:
        return Prepared(inst, failure=exc)
    except Exception as exc:  # this object is unreadable (blob gone, store down): fail its sub-operation only
        first = str(exc).splitlines()[0] if str(exc) else ""
        return Prepared(inst, failure=OutOfResources(f"cannot read the stored object: {type(exc).__name__} {first}"))


def _spooled(archive: Archive, inst: StoredInstance, chunks: Iterator[bytes], transfer_syntax: str) -> Prepared:
    fd, name = tempfile.mkstemp(prefix="pacs-retrieve-", suffix=".dcm", dir=archive.temp_dir)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
    except BaseException:
        os.unlink(name)
        raise
    return Prepared(inst, Path(name), size, temporary=True, transfer_syntax=transfer_syntax)


class StoredObject(Dataset):
    """A sub-operation as pynetdicom wants it (a Dataset with the SOP UIDs), pointing at its file.

    The UIDs are read-only attributes, not data elements: pynetdicom only reads them (for the
    Failed SOP Instance UID List), and setting elements validates each UID again (~0.1 ms an
    instance).
    """

    prepared: Prepared

    def __init__(self, prepared: Prepared) -> None:
        super().__init__()
        object.__setattr__(self, "prepared", prepared)  # past Dataset.__setattr__'s keyword checks

    def __bool__(self) -> bool:  # pynetdicom sends a pending sub-operation only if its dataset is truthy
        return True

    @property
    def SOPClassUID(self) -> str:  # noqa: N802 - the DICOM keyword pynetdicom reads
        return self.prepared.instance.sop_class_uid

    @property
    def SOPInstanceUID(self) -> str:  # noqa: N802 - the DICOM keyword pynetdicom reads
        return self.prepared.instance.sop_uid


@dataclass
class Tally:
    """What one C-MOVE/C-GET did, for its log line (pynetdicom keeps the counts it answers with)."""

    instances: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    bytes: int = 0
    cancelled: bool = False
    started: float = field(default_factory=time.perf_counter)

    def fields(self) -> dict[str, Any]:
        return {
            "instances": self.instances,
            "completed": self.completed,
            "failed": self.failed,
            "warning": self.warning,
            "bytes": self.bytes,
            "cancelled": self.cancelled,
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 1),
        }


class _Sender:
    """`send_c_store` of a sending association: a StoredObject goes as its file, anything else as before."""

    def __init__(self, assoc: Association, retrieval: Retrieval, direct: direct_send.DirectSend | None) -> None:
        self.assoc = assoc
        self.send_c_store = assoc.send_c_store  # the bound method of the class
        self.retrieval = retrieval
        self.direct = direct

    def __call__(
        self,
        dataset: Any,
        msg_id: int = 1,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        if not isinstance(dataset, StoredObject):
            return self.send_c_store(dataset, msg_id, priority, originator_aet, originator_id)
        prepared = dataset.prepared
        if prepared.failure is not None or prepared.path is None:
            assert prepared.failure is not None
            self.retrieval.failed(prepared.instance, prepared.failure.reason, prepared.failure.detail)
            return failure(prepared.failure)
        if originator_aet is not None:  # PS3.7 9.3.1.1: the AE that asked for the C-MOVE, not this archive
            originator_aet = self.retrieval.originator
        try:
            status = self._send(prepared, prepared.path, msg_id, priority, originator_aet, originator_id)
        except Exception as exc:  # pynetdicom counts the sub-operation failed; say why in our log
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.retrieval.failed(prepared.instance, type(exc).__name__, first)
            raise
        self.retrieval.sent(prepared, status)
        return status

    def _send(
        self, prepared: Prepared, path: Path, msg_id: int, priority: int, aet: str | None, aet_msg_id: int | None
    ) -> Dataset:
        """Straight to the socket (`pacs.wire.direct_send`) unless the association has no direct sender (TLS)."""
        direct = self.direct
        if direct is not None:
            inst = prepared.instance
            request = direct_send.StoreRequest(
                inst.sop_class_uid, inst.sop_uid, prepared.transfer_syntax, msg_id, priority, aet, aet_msg_id
            )
            return direct.c_store(path, request)
        try:
            return self.send_c_store(path, msg_id, priority, aet, aet_msg_id)
        except AttributeError:  # a stored file meta without the Media Storage UIDs: send it decoded
            return self.send_c_store(dcmread(path), msg_id, priority, aet, aet_msg_id)


class Retrieval:
    """One C-MOVE or C-GET: the instances to send, how each goes, and what happened to them."""

    def __init__(
        self,
        archive: Archive,
        instances: list[StoredInstance],
        *,
        service: str,
        originator: str,
        fields: dict[str, Any],
    ) -> None:
        self.archive = archive
        self.instances = instances
        self.service = service  # "move" or "get": the log event names
        self.originator = originator  # the requester's AE title
        self.fields = fields
        self.tally = Tally(len(instances))
        self.peer: Association | None = None

    # ----- the sending association --------------------------------------------------------

    def send_through(self, assoc: Association, direct: direct_send.DirectSend | None) -> None:
        """Send this retrieval's sub-operations through `assoc` (C-GET: the requester's own), by
        its direct sender when it has one (`pacs.wire.direct_send.install`; None on TLS)."""
        self.peer = assoc
        setattr(assoc, "send_c_store", _Sender(assoc, self, direct))  # noqa: B010 - this association only

    def stop_sending(self) -> None:
        if self.peer is not None and "send_c_store" in vars(self.peer):
            delattr(self.peer, "send_c_store")

    def destination_handlers(self) -> list[Any]:
        """Handlers bound to the association pynetdicom opens to the move destination."""
        return [(evt.EVT_ESTABLISHED, _on_destination_established, [self])]

    # ----- sub-operations -----------------------------------------------------------------

    def run(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        """The (status, dataset) pairs pynetdicom turns into C-STORE sub-operations.

        Yields
        ------
        (0xFF00, StoredObject)
            The next instance to send.
        (0xFE00, None)
            A C-CANCEL arrived: pynetdicom answers Cancel with the counts so far.
        """
        for prepared in self._prepared():
            if event.is_cancelled:
                self.tally.cancelled = True
                prepared.discard()
                yield CANCEL, None
                return
            try:
                yield PENDING, StoredObject(prepared)
            finally:
                prepared.discard()

    def _prepared(self) -> Iterator[Prepared]:
        """Each instance ready to send, in order, the next few prepared ahead on threads."""
        accepted = self._accepted()
        window: deque[Prepared | Future[Prepared]] = deque()
        todo = iter(self.instances)
        with ThreadPoolExecutor(PREFETCH, thread_name_prefix=f"{self.service}-prepare") as pool:
            try:
                while True:
                    while len(window) < PREFETCH and (inst := next(todo, None)) is not None:
                        window.append(self._submit(pool, inst, accepted.get(inst.sop_class_uid, set())))
                    if not window:
                        return
                    head = window.popleft()
                    yield head.result() if isinstance(head, Future) else head
            finally:
                for item in window:
                    if isinstance(item, Future) and not item.cancel():
                        item.result().discard()
                    elif isinstance(item, Prepared):
                        item.discard()

    def _submit(
        self, pool: ThreadPoolExecutor, inst: StoredInstance, accepted: set[str]
    ) -> Prepared | Future[Prepared]:
        delivery = delivery_for(inst, accepted)
        why_not = "" if delivery is not None else self._why_not(inst, accepted)
        if delivery is not None and delivery.as_stored and self.archive.blobs.local_path(inst.object_key):
            return prepare(self.archive, inst, delivery, why_not)  # nothing to do: the stored file goes
        return pool.submit(prepare, self.archive, inst, delivery, why_not)

    def _why_not(self, inst: StoredInstance, accepted: set[str]) -> str:
        if not accepted:
            return f"the peer accepted no presentation context for {UID(inst.sop_class_uid).name}"
        targets = " or ".join(UID(ts).name for ts in FALLBACK_SYNTAXES if ts in accepted)
        return f"stored as {UID(inst.transfer_syntax_uid).name}, which the peer did not accept" + (
            f", and not decodable to {targets}" if targets else ", and it accepted no uncompressed syntax"
        )

    def _accepted(self) -> dict[str, set[str]]:
        """SOP class -> the syntaxes the peer accepted for us to send it in (we are the storage SCU)."""
        out: dict[str, set[str]] = {}
        for cx in self.peer.accepted_contexts if self.peer is not None else []:
            if cx.as_scu and cx.abstract_syntax and cx.transfer_syntax:
                out.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
        return out

    # ----- outcome ------------------------------------------------------------------------

    def sent(self, prepared: Prepared, status: Dataset) -> None:
        code = getattr(status, "Status", None)
        category = STORAGE_SERVICE_CLASS_STATUS.get(code, (STATUS_FAILURE, ""))[0] if code is not None else None
        if category == STATUS_SUCCESS:
            self.tally.completed += 1
            self.tally.bytes += prepared.size
        elif category == STATUS_WARNING:
            self.tally.warning += 1
            self.tally.bytes += prepared.size
        else:
            reason = f"status_0x{code:04X}" if code is not None else "no_response"
            self.failed(prepared.instance, reason, "the peer did not store it")

    def failed(self, inst: StoredInstance, reason: str, detail: str) -> None:
        self.tally.failed += 1
        log_event(
            log,
            f"dimse.{self.service}.suboperation_failed",
            level=logging.WARNING,
            **self.fields,
            sop_instance_uid=inst.sop_uid,
            reason=reason,
            detail=detail,
        )

    def finish(self) -> None:
        """One INFO line per C-MOVE/C-GET, whatever ended it (done, cancelled, association lost).

        `associated=false`: pynetdicom could not associate with the move destination (it answered
        0xA801), so nothing was sent.
        """
        self.stop_sending()
        associated = self.peer is not None or not self.instances
        log_event(
            log,
            f"dimse.{self.service}",
            level=logging.INFO if associated else logging.WARNING,
            **self.fields,
            **self.tally.fields(),
            associated=associated,
        )


def _on_destination_established(event: Event, retrieval: Retrieval) -> None:
    """The move destination accepted: send through it, with Nagle off (pynetdicom leaves it on)."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    direct = direct_send.install(event.assoc)
    _HeldCheckpoint.hold(event.assoc)
    retrieval.send_through(event.assoc, direct)


class _HeldCheckpoint(threading.Event):
    """The reactor checkpoint of the association to a move destination, kept cleared until release.

    pynetdicom pauses a requestor's reactor thread around each `send_c_store` (clear the
    checkpoint, wait until the reactor waits on it, send, take the response, set it again).
    Between two sub-operations that set() lets the reactor run one loop; scheduled late, as
    the GIL allows, it takes the next C-STORE response off the queue before `send_c_store` does
    ("Received unexpected C-STORE service message"), and the sub-operation waits out the DIMSE
    timeout. Sub-operations now follow each other within a millisecond, so that happens. A
    destination sends no requests of its own, so its reactor stays paused until the association
    is released or aborted, where pynetdicom needs it running again to end.
    """

    def __init__(self) -> None:
        super().__init__()
        self.held = True

    def set(self) -> None:
        if not self.held:
            super().set()

    def let_go(self) -> None:
        self.held = False
        super().set()

    @classmethod
    def hold(cls, assoc: Association) -> None:
        checkpoint = cls()
        setattr(assoc, "_reactor_checkpoint", checkpoint)  # noqa: B010 - the reactor reads it at each loop
        for name in ("release", "abort"):
            end = getattr(assoc, name)

            def ending(end: Any = end) -> None:
                checkpoint.let_go()
                end()

            setattr(assoc, name, ending)
