"""What a peer may make the SCP read: every PDU's length checked before a byte of it is read.

Why: pynetdicom's reader (`DULServiceProvider._read_pdu_data`) reads whatever length a PDU
header announces into memory, before any AE title is checked, so one unauthenticated
A-ASSOCIATE-RQ or P-DATA-TF saying 0xFFFFFFF0 made the process buffer gigabytes. `PduGuard`
replaces that reader on every association the SCP accepts; it is pynetdicom's own steps (read
the 6-byte header, the body, decode, queue the event and the PDU) with three bounds:

- a PDU's length: an association request at most `ASSOCIATION_LIMIT`, a P-DATA-TF at most the
  maximum length this SCP announced (`PACS_MAX_PDU`, PS3.8 9.3.5), release and abort PDUs
  their fixed 4 bytes;
- the data set of one DIMSE message, summed over its P-DATA fragments: at most
  `PACS_DICOM_MAX_OBJECT_SIZE`, so a C-STORE cannot fill the disk with its temporary file;
- the command set of one message: at most `COMMAND_LIMIT`.

A PDU over a bound is not read: the event is pynetdicom's "invalid PDU" (Evt19), on which its
state machine sends an A-ABORT, and the next read reports the connection closed, so the peer
holds nothing open. Each refusal is one `dimse.pdu.refused` WARNING line. The same reader points
pynetdicom's temporary file of a received C-STORE data set at the archive's own folder
(`pacs.wire.spool`), so that what a killed process leaves is found at its next start.

Every PDU is read with `recv_into` one buffer per association (pynetdicom reads 4 KB at a time
into a new bytearray). Once the association is established, a P-DATA-TF is first offered to
`pacs.wire.direct_store` when the SCP has one: a C-STORE request and its data set are then
received here, PDU after PDU; what it does not take is decoded and queued as pynetdicom's
reader would.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pynetdicom.association import Association

from pacs.wire import direct_store, spool
from pacs.wire.p_data import P_DATA_TF
from storage.logs import event

log = logging.getLogger(__name__)

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x05, 0x06, 0x07
#: an A-ASSOCIATE-RQ of 128 presentation contexts proposing 19 transfer syntaxes each, with
#: role selection and user identity items, is under 200 KB
ASSOCIATION_LIMIT = 256 * 1024
#: A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT have a 4-byte body (PS3.8 9.3.4, 9.3.6-9.3.8)
FIXED_LIMIT = 4
#: a DIMSE command set: a few hundred bytes, a few KB with an Error Comment and UID lists
COMMAND_LIMIT = 64 * 1024
#: the largest read buffer an association keeps between PDUs (the default PDU is 1 MiB)
KEPT_BUFFER = 1024 * 1024
#: the PDU length field's ceiling when the announced maximum is 0 ("no limit", PS3.8 D.1)
UNLIMITED = 128 * 1024 * 1024

_HEADER = struct.Struct(">BBL")
_PDV = struct.Struct(">LBB")  # item length, presentation context ID, message control header


def pdu_limit(pdu_type: int, maximum_length: int) -> int | None:
    """The largest PDU body of `pdu_type` accepted from a peer; None for an unknown type."""
    if pdu_type == P_DATA_TF:
        return maximum_length or UNLIMITED
    if pdu_type in (A_ASSOCIATE_RQ, A_ASSOCIATE_AC):
        return ASSOCIATION_LIMIT
    if pdu_type in (A_ASSOCIATE_RJ, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT):
        return FIXED_LIMIT
    return None


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one SCP: its announced maximum PDU length and its largest data set; where
    received data sets are written, and the store that takes C-STORE requests directly (None:
    pynetdicom's path for every message)."""

    maximum_length: int
    data_set: int
    spool: Path | None = None
    store: direct_store.Store | None = None


_UNSET = object()


class PduGuard:
    """The reader of one accepted association's PDUs (installed by `install`)."""

    def __init__(self, assoc: Association, limits: Limits) -> None:
        self.assoc = assoc
        self.dul = assoc.dul
        self.limits = limits
        self.refused = False
        self.data_set = 0  # data set bytes of the message being received
        self.command = 0  # command set bytes of the message being received
        self._buffer = bytearray()
        #: the association's `pacs.wire.direct_store` receiver: made once it is established
        self.direct: object = _UNSET

    def read_pdu_data(self) -> None:
        """`DULServiceProvider._read_pdu_data`, bounded (see the module docstring). A C-STORE
        request goes to `pacs.wire.direct_store` when the SCP set one up: then the PDUs of its
        data set, and the next request of a modality sending a study, are read here in a row."""
        dul = self.dul
        spool.use(self.limits.spool)
        if self.refused:
            dul.event_queue.put("Evt17")  # the connection is as good as closed: end it
            return
        sock = dul.socket
        if sock is None or sock.socket is None:
            dul.event_queue.put("Evt17")
            return
        while True:
            pdu = self._read(sock.socket)
            if pdu is None:
                return
            pdu_type, head, body = pdu
            if pdu_type == P_DATA_TF and not self._within_message_limits(body):
                if isinstance(self.direct, direct_store.DirectStore):  # its partial file goes now
                    self.direct.abandon("refused: over a bound")
                return
            direct = self._direct_store()
            established = self.dul.state_machine.current_state == "Sta6"
            if direct is not None and pdu_type == P_DATA_TF and established and direct.take(body):
                dul._idle_timer.restart()
                if self._more_follows(sock.socket):
                    continue
                return
            if direct is not None and direct.receiving:  # a release or an abort in the middle of a data set
                direct.abandon(f"PDU type 0x{pdu_type:02X} in the middle of a data set")
            self._hand_over(head, body)
            return

    def _read(self, sock: Any) -> tuple[int, bytes, memoryview] | None:
        """One PDU within its bound: (type, header, body); None when an event was queued instead
        (the connection closed, an unknown type, a bound passed)."""
        dul = self.dul
        try:
            head = bytes(self._read_exactly(sock, 6))  # a copy: the body is read into the same buffer
            pdu_type, _, length = _HEADER.unpack(head)
        except (OSError, EOFError, struct.error):
            dul.event_queue.put("Evt17")  # transport closed (or closed inside a header)
            return None
        limit = pdu_limit(pdu_type, self.limits.maximum_length)
        if limit is None:
            dul.event_queue.put("Evt19")  # unrecognised PDU, as pynetdicom does
            return None
        if length > limit:
            self._refuse(f"PDU type 0x{pdu_type:02X} of {length} bytes, over {limit}", pdu_type)
            return None
        try:
            body = self._read_exactly(sock, length)
        except (OSError, EOFError):
            dul.event_queue.put("Evt17")  # closed inside the PDU
            return None
        return pdu_type, head, body

    def _read_exactly(self, sock: Any, n: int) -> memoryview:
        """`n` bytes into the guard's one buffer (grown to the largest PDU read, up to
        `KEPT_BUFFER`; a larger PDU gets a buffer of its own, let go after it), `recv_into` it:
        no 4 KB reads joined into a new bytearray per PDU. Valid until the next read."""
        if n > KEPT_BUFFER:
            buffer = bytearray(n)  # a peer's one huge PDU must not stay held for the association's life
        else:
            if len(self._buffer) < n:
                self._buffer = bytearray(n)
            buffer = self._buffer
        view = memoryview(buffer)[:n]
        got = 0
        while got < n:
            k = sock.recv_into(view[got:])
            if k == 0:
                raise EOFError("the peer closed the connection")
            got += k
        return view

    def _hand_over(self, head: bytes, body: memoryview) -> None:
        """What pynetdicom's reader does with a PDU read whole: decode it, queue its event and it."""
        dul = self.dul
        try:
            pdu, evt = dul._decode_pdu(bytearray(head) + body)
        except Exception:  # noqa: BLE001 - pynetdicom's own reader treats any failure as an invalid PDU
            dul.event_queue.put("Evt19")
            return
        dul.event_queue.put(evt)
        dul._recv_pdu.put(pdu)

    def _direct_store(self) -> direct_store.DirectStore | None:
        """The association's direct C-STORE receiver, made when the association is established
        (the first PDU read in Sta6); None when it has none (none configured, TLS)."""
        if self.direct is _UNSET:
            if self.dul.state_machine.current_state != "Sta6":
                return None
            store = self.limits.store
            self.direct = direct_store.install(self.assoc, store, self.limits.spool) if store is not None else None
        return cast("direct_store.DirectStore | None", self.direct)

    def _more_follows(self, sock: Any) -> bool:
        """Read on here: the peer's next PDU is there within `FOLLOW_WAIT` and the reactor has
        nothing to do (no primitive to send, not stopping)."""
        dul = self.dul
        if dul._kill_thread or not dul.to_provider_queue.empty():
            return False
        return direct_store.wait_readable(sock, direct_store.FOLLOW_WAIT)

    def _within_message_limits(self, body: bytes | bytearray | memoryview) -> bool:
        """Add the P-DATA fragments of `body` to the message's totals; refuse past a bound."""
        pos = 0
        while pos + _PDV.size <= len(body):
            item_length, _, control = _PDV.unpack_from(body, pos)
            fragment = item_length - 2
            if control & 0x01:  # a command fragment
                self.command += fragment
                over = self.command > COMMAND_LIMIT
                what = f"command set over {COMMAND_LIMIT} bytes"
            else:
                self.data_set += fragment
                over = self.data_set > self.limits.data_set
                what = f"data set over {self.limits.data_set} bytes (PACS_DICOM_MAX_OBJECT_SIZE)"
            if over:
                self._refuse(what, P_DATA_TF)
                return False
            if control & 0x02:  # the last fragment of its command or data set
                if control & 0x01:
                    self.command = 0
                else:
                    self.data_set = 0
            pos += 4 + item_length
        return True

    def _refuse(self, what: str, pdu_type: int) -> None:
        self.refused = True
        requestor = self.assoc.requestor
        event(
            log,
            "dimse.pdu.refused",
            level=logging.WARNING,
            calling_ae=str(requestor.ae_title).strip() if pdu_type != A_ASSOCIATE_RQ else None,
            peer=f"{requestor.address}:{requestor.port}",
            reason=what,
        )
        self.dul.event_queue.put("Evt19")  # invalid PDU: pynetdicom answers it with an A-ABORT


def install(assoc: Association, limits: Limits) -> PduGuard:
    """Read `assoc`'s PDUs through a guard from now on (before its association request is read)."""
    guard = PduGuard(assoc, limits)
    setattr(assoc.dul, "_read_pdu_data", guard.read_pdu_data)  # noqa: B010 - this association's reader only
    return guard


def local_maximum(assoc: Association) -> int:
    """The maximum PDU length this end announced on `assoc` (0: no limit)."""
    local: Any = assoc.acceptor if assoc.is_acceptor else assoc.requestor
    return int(local.maximum_length or 0)
