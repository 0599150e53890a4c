"""C-STORE requests received by the association's reader thread, their data set streamed to disk.

Why: with pynetdicom a received instance travels socket -> the DUL thread (4 KB reads joined
into a PDU, a PDU object, a P-DATA primitive with a copy of every fragment) -> the state machine
-> the DIMSE assembler (a write and a flush per fragment) -> a queue -> the association's thread,
which polls that queue every millisecond, then runs the handler; and the DUL thread itself
sleeps a millisecond whenever a PDU it read made no event. For one CT image that is a few
milliseconds of wall time and ~1/3 of the SCP's CPU (benchmarks/README.md, [10/10]).

Here, once the guard (`pacs.wire.guard`) has read a P-DATA-TF that holds a whole C-STORE-RQ
command set and nothing else, the same thread decodes that command set (`command_set.read_store`),
opens the temporary file as pynetdicom would (preamble, the file meta pynetdicom writes, packed
by `pacs.wire.file_meta`, in the archive's folder), writes each data fragment of the following
PDUs into it straight from one reused buffer, runs the store (`pacs.store.receive`, the handler
pynetdicom's path calls) once the last fragment is in, and answers through the association's
direct sender (`pacs.wire.direct_send`). It then waits a moment for the peer's next PDU, so
that a modality sending a study is served by one thread without a hand-off or a sleep between
instances.

What is handed back to pynetdicom, untouched: any PDU that is not a P-DATA-TF, a command set
that is not a plain C-STORE-RQ on an accepted context of its SOP class, a PDU mixing commands
and data, anything while pynetdicom assembles a message of its own. A PDU that does not belong
in the middle of a data set (another command, another presentation context, a release, an
abort) ends the instance being received, whose temporary file is deleted and which is never
answered, and then goes to pynetdicom as it would have without this module. A connection lost
mid-data set deletes the file too. Not used on TLS associations (no direct sender there) or when
a handler listens to EVT_PDU_RECV, EVT_DATA_RECV or EVT_DIMSE_RECV, which this path does not emit.
The stored file is the same bytes either way (tests/pacs/test_direct_store.py).
"""

from __future__ import annotations

import logging
import os
import select
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.service_class import StorageServiceClass

from pacs.wire import command_set, direct_send
from pacs.wire.command_set import StoreCommand
from pacs.wire.file_meta import part10_head
from storage.logs import event

log = logging.getLogger(__name__)

#: what a store answers: a status, or a Dataset with Status and its Error Comment
Store = Callable[[Association, Path], "int | Dataset"]
#: the seconds the reader waits for the peer's next PDU before it gives the reactor its turn
#: (a release or abort the association's own thread wants to send, pynetdicom's timers)
FOLLOW_WAIT = 0.2
_UNEMITTED = (evt.EVT_PDU_RECV, evt.EVT_DATA_RECV, evt.EVT_DIMSE_RECV)
#: pynetdicom's status for an exception in the C-STORE handler
_HANDLER_FAILED = 0xC211

_active: weakref.WeakKeyDictionary[Association, DirectStore] = weakref.WeakKeyDictionary()


class _Incoming:
    """The instance being received: its request, context and temporary file."""

    def __init__(self, request: StoreCommand, context_id: int, transfer_syntax: str, folder: Path | None) -> None:
        self.request = request
        self.context_id = context_id
        head = part10_head(request.sop_class, request.sop_instance, transfer_syntax)
        fd, name = tempfile.mkstemp(suffix=".dcm", dir=folder)
        self.fd: int | None = fd
        self.path = Path(name)
        try:
            self.write(memoryview(head))
        except BaseException:
            self.discard()
            raise

    def write(self, data: memoryview) -> None:
        assert self.fd is not None
        while data:
            data = data[os.write(self.fd, data) :]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class DirectStore:
    """The C-STORE requests of one association, received by its reader thread (see above)."""

    def __init__(self, assoc: Association, store: Store, folder: Path | None) -> None:
        self.assoc = assoc
        self.store = store
        self.folder = folder
        self.incoming: _Incoming | None = None
        self.answered = 0  # instances received and answered on this path (the association's log line)
        self._service = StorageServiceClass(assoc)  # its `validate_status`: the status a handler's answer becomes

    @property
    def receiving(self) -> bool:
        """A data set is under way: the peer's next PDU is expected at once."""
        return self.incoming is not None

    def take(self, body: memoryview) -> bool:
        """Consume the P-DATA-TF `body` (PDU header excluded) if it is this path's; False hands it
        to pynetdicom (after ending any instance it interrupts)."""
        if self.incoming is not None:
            if self._continue(body):
                return True
            self.abandon("interrupted by another PDU")
            return False
        return self._begin(body)

    def abandon(self, why: str) -> None:
        """Drop the instance being received (never answered: the peer ended it or broke it off)."""
        incoming, self.incoming = self.incoming, None
        if incoming is not None:
            incoming.discard()
            event(log, "dimse.store.abandoned", level=logging.WARNING, reason=why)

    def _begin(self, body: memoryview) -> bool:
        if self.assoc.dimse.message is not None or any(self.assoc.get_handlers(e) for e in _UNEMITTED):
            return False
        pdvs = command_set.pdvs(body)
        if pdvs is None or len(pdvs) != 1:
            return False
        context_id, control, fragment = pdvs[0]
        if control & 0x03 != 0x03:  # one whole command set, nothing else
            return False
        request = command_set.read_store(fragment)
        context = self.assoc._accepted_cx.get(context_id)
        if request is None or context is None or context.abstract_syntax != request.sop_class:
            return False
        transfer_syntax = context.transfer_syntax[0]
        self.incoming = _Incoming(request, context_id, transfer_syntax, self.folder)
        return True

    def _continue(self, body: memoryview) -> bool:
        """Write the data fragments of `body`; answer once the last one is in."""
        incoming = self.incoming
        assert incoming is not None
        pdvs = command_set.pdvs(body)
        if pdvs is None or any(c != incoming.context_id or control & 0x01 for c, control, _ in pdvs):
            return False
        last = False
        for _, control, fragment in pdvs:
            if last:  # data after the last fragment: not a message this path knows
                return False
            incoming.write(fragment)
            last = bool(control & 0x02)
        if last:
            self.incoming = None
            self._finish(incoming)
        return True

    def _finish(self, incoming: _Incoming) -> None:
        incoming.close()
        try:
            status = self.store(self.assoc, incoming.path)
        except Exception:  # noqa: BLE001 - as pynetdicom answers an exception in its handler
            event(log, "dimse.store.handler_failed", level=logging.ERROR)
            status = _HANDLER_FAILED
        finally:
            incoming.path.unlink(missing_ok=True)
        if self.assoc.is_established:
            self.assoc.dimse.send_msg(self._response(incoming.request, status), incoming.context_id)
            self.answered += 1

    def _response(self, request: StoreCommand, status: int | Dataset) -> C_STORE:
        """The C-STORE-RSP pynetdicom's Storage service class would build (`StorageServiceClass.SCP`)."""
        rsp = C_STORE()
        rsp.MessageID = request.message_id
        rsp.MessageIDBeingRespondedTo = request.message_id
        rsp.AffectedSOPInstanceUID = request.sop_instance
        rsp.AffectedSOPClassUID = request.sop_class
        return self._service.validate_status(status, rsp)


def install(assoc: Association, store: Store, folder: Path | None) -> DirectStore | None:
    """Receive `assoc`'s C-STORE requests directly; None where this path does not apply (TLS)."""
    if direct_send.sender_of(assoc) is None:
        return None
    direct = _active[assoc] = DirectStore(assoc, store, folder)
    return direct


def end(assoc: Any, how: str) -> int:
    """`assoc` was released, aborted or lost: drop what it was receiving on this path; how many
    instances this path answered on it."""
    direct = _active.pop(assoc, None)
    if direct is None:
        return 0
    direct.abandon(f"association {how}")
    return direct.answered


def wait_readable(sock: Any, timeout: float) -> bool:
    """True when `sock` has data (or its end) to read within `timeout` seconds."""
    ready, _, _ = select.select([sock], [], [], timeout)
    return bool(ready)
