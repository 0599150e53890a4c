"""The response to a C-STORE sub-operation, read by the thread that sent its request.

Why: with pynetdicom the response travels socket -> DUL thread (which polls the socket every
millisecond) -> PDU queue -> state machine -> DIMSE queue -> the waiting sender, two thread
hand-offs and up to a millisecond of polling for every instance of a C-MOVE or C-GET, whose
sub-operations run strictly one after the other. Here the sending thread itself blocks on the
socket until the response's PDU arrives. The plain success, one PDU holding a whole C-STORE-RSP
with Status 0000 and no detail, is recognised here (`command_set.is_store_success`); every
other PDU goes to pynetdicom's own decoding (`DULServiceProvider._decode_pdu`,
`DIMSEServiceProvider.receive_primitive`, what the state machine's DT-2 action does with a
P-DATA-TF in Sta6), so that message comes out of the same DIMSE queue as before, C-CANCEL
and N-EVENT-REPORT requests handled the same way. Not emitted for a recognised success:
EVT_PDU_RECV, EVT_DATA_RECV, EVT_DIMSE_RECV (the fast path is skipped when any of them has a
handler).

What keeps the stream consistent: the DUL thread reads the socket only under `Receiver.lock`
(its transport check becomes a no-op while the lock is taken), and a sender holds the lock
from before it writes a request until it has its response, so exactly one reader owns every
PDU. Any PDU other than a P-DATA-TF of an established association (release, abort, an
unknown type) is handed to the DUL as its own reader would (event queue and PDU queue) and the
sender goes back to pynetdicom's way of waiting. pynetdicom's idle timer is restarted for each
PDU read here, as its reactor does, so a long retrieval is not taken for an idle association.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import P_DATA

from pacs.wire import command_set
from pacs.wire.p_data import COMMAND, LAST, ONE_PDV, P_DATA_TF, PDU_HEADER

_RECV_EVENTS = (evt.EVT_PDU_RECV, evt.EVT_DATA_RECV, evt.EVT_DIMSE_RECV)


class _StoreSuccess:
    """The response `next_message` gives for a recognised plain success (no message is built)."""


STORE_SUCCESS = _StoreSuccess()
#: the DUL's name for "transport connection closed" (PS3.8 9.2, Evt17)
TRANSPORT_CLOSED = "Evt17"


class HandedOver(Exception):
    """The PDU read was not one this module decodes: the DUL has it, pynetdicom takes over."""


class Receiver:
    """Reads one association's PDUs in the thread that waits for them."""

    def __init__(self, assoc: Association, sock: Any) -> None:
        self.assoc = assoc
        self.sock = sock
        self.lock = threading.Lock()
        transport_event = assoc.dul._is_transport_event

        def dul_reads() -> bool:
            if not self.lock.acquire(blocking=False):
                return False  # a sender owns the socket's read side
            try:
                return transport_event()
            finally:
                self.lock.release()

        setattr(assoc.dul, "_is_transport_event", dul_reads)  # noqa: B010 - this association's DUL only

    @contextmanager
    def owning(self) -> Iterator[None]:
        """Hold the read side: from before a request is written until its response is read."""
        with self.lock:
            yield

    def next_message(self, store_id: int) -> Any | None:
        """The next DIMSE message the peer sends, read under `owning`; None on a DIMSE timeout;
        STORE_SUCCESS for a plain successful C-STORE-RSP to message `store_id`.

        Raises HandedOver when the PDU read belongs to pynetdicom's state machine.
        """
        dimse = self.assoc.dimse
        dul = self.assoc.dul
        while True:
            data = self._read_pdu(dimse.dimse_timeout)
            if data is None:
                return None
            dul._idle_timer.restart()
            if data[0] != P_DATA_TF or dul.state_machine.current_state != "Sta6":
                self._hand_over(data)
                raise HandedOver
            if self._is_store_success(data, store_id):
                return STORE_SUCCESS
            pdu, _ = dul._decode_pdu(data)
            dimse.receive_primitive(cast(P_DATA, pdu.to_primitive()))  # a P-DATA-TF gives a P-DATA
            _, message = dimse.get_msg(block=False)
            if message is not None:
                return message
            # a C-CANCEL or N-EVENT-REPORT request, or a fragment: pynetdicom kept it; read on

    def _is_store_success(self, data: bytearray, message_id: int) -> bool:
        """One PDV, a whole command, pynetdicom assembling nothing, nobody listening for receipts."""
        if len(data) < ONE_PDV.size or self.assoc.dimse.message is not None:
            return False
        _, pdu_length, item_length, _, control = ONE_PDV.unpack_from(data)
        if control != COMMAND | LAST or item_length + 4 != pdu_length:
            return False
        if any(self.assoc.get_handlers(event) for event in _RECV_EVENTS):
            return False
        return command_set.is_store_success(memoryview(data)[ONE_PDV.size :], message_id)

    def _read_pdu(self, timeout: float | None) -> bytearray | None:
        """One whole PDU; None if none starts within `timeout`. A connection lost is handed over."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        try:
            head = self._read_exactly(6)
            _, length = PDU_HEADER.unpack(head)
            return head + self._read_exactly(length)
        except (OSError, EOFError):
            self.assoc.dul.event_queue.put(TRANSPORT_CLOSED)
            raise HandedOver from None

    def _read_exactly(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if k == 0:
                raise EOFError("the peer closed the connection inside a PDU")
            got += k
        return buf

    def _hand_over(self, data: bytearray) -> None:
        """What the DUL's own reader does with a PDU (`DULServiceProvider._read_pdu_data`)."""
        dul = self.assoc.dul
        try:
            pdu, event = dul._decode_pdu(data)
        except Exception:
            dul.event_queue.put("Evt19")  # unrecognised or invalid PDU
            return
        dul.event_queue.put(event)
        dul._recv_pdu.put(pdu)
