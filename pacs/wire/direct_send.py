"""DIMSE messages written from the thread that sends them, straight to the association's socket.

Why: pynetdicom hands a message to its DUL thread one P-DATA primitive per PDU, each through a
queue, the state machine and a PDU object, with a 1 ms sleep whenever the DUL finds its queue
empty. For a 525 KB CT image in a storescp's 16 KB PDUs that is 33 hops and ~8 ms of CPU: C-MOVE
and C-GET ran at ~60 MB/s where Orthanc sends ~290 MB/s. Installed on an association,
`DirectSend.send_msg` replaces `DIMSEServiceProvider.send_msg`: the command set is encoded by
`pacs.wire.command_set` (pynetdicom's own encoding where that declines), then framed into P-DATA-TF
PDUs (`pacs.wire.p_data`) and written here, a stored data set streamed from its file in ~1 MiB
writes. A sub-operation's response is read by the same thread (`pacs.wire.direct_receive`).
Everything else stays pynetdicom's: association negotiation, the DUL thread reading the peer's
other PDUs and assembling its messages, release and abort.

What keeps the byte stream valid: the DUL thread still writes the A-RELEASE and A-ABORT PDUs, so
it writes them under the same lock as this module's messages; and a message is written whole
under that lock, so nothing comes between its fragments (PS3.8 9.3.5.1). Every P-DATA of the
association goes this way once installed, which is done when the association is accepted
(before any request can arrive) or, for an association to a move destination, when it is
established.

Not installed on a TLS association: an `ssl.SSLSocket` must not be read by the DUL thread and
written by another one at the same time, so TLS keeps pynetdicom's path. Not emitted on this
path: pynetdicom's EVT_PDU_SENT and EVT_DATA_SENT (nothing here listens to them); EVT_DIMSE_SENT
is.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
from pynetdicom.dimse_messages import _DATASET_KEYWORDS
from pynetdicom.dsutils import encode, split_dataset

from pacs.wire import command_set
from pacs.wire.direct_receive import STORE_SUCCESS, TRANSPORT_CLOSED, HandedOver, Receiver
from pacs.wire.p_data import COMMAND, LAST, header

#: the attribute of an association that holds its `DirectSend`. Not a WeakKeyDictionary: its
#: value holds the association, so the weak key never died, and every association ever
#: served stayed in memory (~47 KB each: 14 MB per 300 C-ECHO associations).
_ATTRIBUTE = "_pacs_direct_send"
#: bytes of PDUs handed to one socket write, and at most this many buffers (IOV_MAX is 1024)
WRITE_SIZE = 1 << 20
MAX_BUFFERS = 512


def install(assoc: Association) -> DirectSend | None:
    """Send `assoc`'s DIMSE messages directly from now on; None (pynetdicom's path kept) for TLS."""
    sock = assoc.dul.socket
    raw = sock.socket if sock is not None else None
    if raw is None or isinstance(raw, ssl.SSLSocket):
        return None
    direct = DirectSend(assoc, raw)
    setattr(assoc, _ATTRIBUTE, direct)  # a cycle with the association, collected with it
    setattr(assoc.dimse, "send_msg", direct.send_msg)  # noqa: B010 - this association only
    dul_send = assoc.dul._send

    def locked_send(pdu: Any) -> None:
        with direct.lock:
            dul_send(pdu)

    setattr(assoc.dul, "_send", locked_send)  # noqa: B010 - the DUL's own PDUs, under the same lock
    return direct


def sender_of(assoc: Association) -> DirectSend | None:
    """The direct sender `install` put on `assoc`, if any."""
    direct: DirectSend | None = getattr(assoc, _ATTRIBUTE, None)
    return direct


def fragments(
    data: memoryview, context_id: int, flags: int, size: int | None, *, last: bool = True
) -> Iterator[bytes | memoryview]:
    """The PDUs of PDV bytes held in memory: a command set, a data set, or one block of a data set
    read from its file (`last=False`: more of the stream follows, no fragment is flagged LAST).

    `size` is the largest fragment the peer takes (its maximum PDU length less the 6 bytes of
    PDV overhead; None: no limit).
    """
    total = len(data)
    step = size or total or 1
    start = 0
    while True:
        end = min(start + step, total)
        yield header(end - start, context_id, flags | (LAST if last and end == total else 0))
        yield data[start:end]
        if end == total:
            return
        start = end


def file_fragments(f: BinaryIO, length: int, context_id: int, size: int | None) -> Iterator[bytes | memoryview]:
    """The PDUs of the `length` data set bytes at `f`'s position: read a whole number of fragments
    (~WRITE_SIZE bytes) at a time and framed as views into them (no copy); a fragment larger than
    that (a peer without a PDU limit) is read in pieces."""
    step = size or length or 1
    if step > WRITE_SIZE:
        yield from _large_fragments(f, length, context_id, step)
        return
    block = (WRITE_SIZE // step) * step
    done = 0
    while True:
        data = _read_exactly(f, min(block, length - done), length - done)
        done += len(data)
        yield from fragments(memoryview(data), context_id, 0, step, last=done == length)
        if done == length:
            return


def _large_fragments(f: BinaryIO, length: int, context_id: int, step: int) -> Iterator[bytes | memoryview]:
    done = 0
    while True:
        n = min(step, length - done)
        done += n
        yield header(n, context_id, LAST if done == length else 0)
        while n > 0:
            piece = _read_exactly(f, min(n, WRITE_SIZE), n + length - done)
            n -= len(piece)
            yield piece
        if done == length:
            return


def _read_exactly(f: BinaryIO, n: int, remaining: int) -> bytes:
    data = f.read(n)
    while len(data) < n:  # a raw read may return less than asked
        more = f.read(n - len(data))
        if not more:
            raise EOFError(f"the stored data set ended {remaining - len(data)} bytes early")
        data += more
    return data


@dataclass(slots=True)
class StoreRequest:
    """The parameters of a C-STORE request (PS3.7 9.1.1.1), named as `command_set.encode` reads them."""

    AffectedSOPClassUID: str
    AffectedSOPInstanceUID: str
    transfer_syntax: str
    MessageID: int
    Priority: int = 2
    MoveOriginatorApplicationEntityTitle: str | None = None
    MoveOriginatorMessageID: int | None = None
    DataSet: None = None
    MessageIDBeingRespondedTo: None = None
    _dataset_path: bool = True  # a data set follows, streamed from the file


_SUCCESS = Dataset()
_SUCCESS.Status = 0x0000


def _has_status_details(response: Any) -> bool:
    return any(getattr(response, k, None) is not None for k in response.STATUS_OPTIONAL_KEYWORDS)


def data_set_offset(f: BinaryIO, path: Path) -> int:
    """Where the data set starts in the Part-10 file `f` (at `path`), which is left positioned there.

    After the preamble, "DICM" and the File Meta group, whose length its first element gives
    (PS3.10 7.1: File Meta Information Group Length, explicit VR little endian); pydicom's reader
    finds the end of a file meta without it.
    """
    head = f.read(144)
    if len(head) == 144 and head[128:132] == b"DICM" and head[132:138] == b"\x02\x00\x00\x00UL":
        offset = 144 + int.from_bytes(head[140:144], "little")
    else:
        offset = split_dataset(path)[1]
    f.seek(offset)
    return offset


class DirectSend:
    """`send_msg` for one association: whole messages, framed here, written under one lock."""

    def __init__(self, assoc: Association, sock: Any) -> None:
        self.assoc = assoc
        self.sock = sock
        self.lock = threading.Lock()
        self.receiver = Receiver(assoc, sock)
        self._contexts: dict[tuple[str, str], int] = {}

    def send_msg(self, primitive: Any, context_id: int) -> None:
        """What `DIMSEServiceProvider.send_msg` does, the P-DATA written here instead of queued."""
        responding = primitive.MessageIDBeingRespondedTo is not None
        message_class = (_RSP_TO_MESSAGE if responding else _RQ_TO_MESSAGE)[primitive.__class__]
        message_type = message_class.__name__.replace("_", "-")
        command = None if self.assoc.get_handlers(evt.EVT_DIMSE_SENT) else command_set.encode(primitive, message_type)
        if command is None:  # pynetdicom builds the message (and tells EVT_DIMSE_SENT's handlers)
            self._send_built(message_class(), primitive, context_id)
            return
        keyword = _DATASET_KEYWORDS.get(message_class.__name__)
        data = getattr(primitive, keyword, None) if keyword else None
        self._send(command, data.getvalue() if data is not None else None, primitive._dataset_path, context_id)

    def _send_built(self, message: Any, primitive: Any, context_id: int) -> None:
        message.primitive_to_message(primitive)
        message.context_id = context_id
        evt.trigger(self.assoc, evt.EVT_DIMSE_SENT, {"message": message})
        command = encode(message.command_set, True, True)  # PS3.7 6.3.1: implicit VR little endian
        assert command is not None
        data = message.data_set.getvalue() if message.data_set is not None else None
        self._send(command, data, message._data_set_path, context_id)

    def _send(self, command: bytes, data: bytes | None, path: Any, context_id: int) -> None:
        """One whole message: its command set, then its data set from memory or from its file."""
        size = self._fragment_size()
        with self.lock:
            self._write(fragments(memoryview(command), context_id, COMMAND, size))
            if data is not None:
                if data:
                    self._write(fragments(memoryview(data), context_id, 0, size))
            elif path:  # STORE_SEND_CHUNKED_DATASET: (file, offset of the data set after its file meta)
                file, offset = cast(tuple[Path, int | None], path)
                self._write_file(file, offset, context_id, size)

    def c_store(self, path: Path, request: StoreRequest) -> Dataset:
        """`Association.send_c_store` of a stored Part-10 file whose UIDs and syntax the index knows.

        Without pynetdicom's per-call work that the index makes redundant: reading the file meta
        with pydicom, a fresh presentation context search, a primitive whose setters validate
        each UID again. The response is read by this thread (`pacs.wire.direct_receive`): a plain
        success is recognised there, anything else decoded and checked by pynetdicom.
        """
        context_id = self._context_for(request.AffectedSOPClassUID, request.transfer_syntax)
        command = command_set.encode(request, "C-STORE-RQ")
        assert command is not None  # every value of a StoreRequest is one command_set writes
        assoc = self.assoc
        assoc._reactor_checkpoint.clear()  # as send_c_store: the reactor must not take our response
        while not assoc._is_paused:
            time.sleep(0.0001)
        try:
            try:
                with self.receiver.owning():
                    self._send(command, None, (path, None), context_id)  # the offset: read from the file meta
                    response = self.receiver.next_message(request.MessageID)
            except HandedOver:  # a release, an abort, a lost connection: pynetdicom's to deal with
                _, response = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        if response is STORE_SUCCESS:
            return _SUCCESS  # read only by the retrieval: one shared Dataset, not one per instance
        if response is None:  # the DIMSE timeout expired, or the peer went away
            assoc._handle_no_response()
            return Dataset()
        if response.Status == 0 and response.is_valid_response and not _has_status_details(response):
            return _SUCCESS  # read only by the retrieval: one shared Dataset, not one per instance
        return assoc._check_received_status(response)

    def _context_for(self, sop_class: str, transfer_syntax: str) -> int:
        key = (sop_class, transfer_syntax)
        if (found := self._contexts.get(key)) is None:
            found = self._contexts[key] = int(
                self.assoc._get_valid_context(sop_class, transfer_syntax, "scu", allow_conversion=False).context_id or 0
            )
        return found

    def _fragment_size(self) -> int | None:
        """The peer's maximum PDU length less the PDV overhead; None when it set no limit (0)."""
        maximum = int(self.assoc.dimse.maximum_pdu_size or 0)
        return maximum - 6 if maximum > 6 else None

    def _write_file(self, path: Path, offset: int | None, context_id: int, size: int | None) -> None:
        """Stream a stored data set, from `offset` (None: the end of its file meta) to the end of the file."""
        with open(path, "rb", buffering=0) as f:
            if offset is None:
                offset = data_set_offset(f, path)
            else:
                f.seek(offset)
            length = os.fstat(f.fileno()).st_size - offset
            self._write(file_fragments(f, max(length, 0), context_id, size))

    def _write(self, parts: Iterator[bytes | memoryview]) -> None:
        """Write the PDUs ~WRITE_SIZE bytes per call, as one scatter list (`sendmsg`, no joining
        copy); a failed write means the connection is gone."""
        batch: list[bytes | memoryview] = []
        length = 0
        try:
            for part in parts:
                batch.append(part)
                length += len(part)
                if length >= WRITE_SIZE or len(batch) >= MAX_BUFFERS:
                    self._send_all(batch)
                    batch, length = [], 0
            if batch:
                self._send_all(batch)
        except OSError:
            self.assoc.dul.event_queue.put(TRANSPORT_CLOSED)  # as pynetdicom's own send does
            raise

    def _send_all(self, batch: list[bytes | memoryview]) -> None:
        """`sendmsg` until every buffer is out (it may take part of the list, or of one buffer)."""
        first = 0
        while first < len(batch):
            sent = self.sock.sendmsg(batch[first:])
            while first < len(batch) and sent >= len(batch[first]):
                sent -= len(batch[first])
                first += 1
            if sent:
                batch[first] = memoryview(batch[first])[sent:]
