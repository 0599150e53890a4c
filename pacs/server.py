"""The DICOM SCP: one pynetdicom AE, its presentation contexts and handlers, and its workers.

pynetdicom serves each association on its own thread, so one process is bound to one core
by the GIL. `pacs serve --dicom-workers N` runs N SCP processes on the same port
(SO_REUSEPORT: the kernel spreads new associations over them); each is a `start()` call.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydicom import uid
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from pacs import echo, stats, store
from storage.archive import Archive
from storage.logs import event
from storage.metrics import ASSOCIATIONS
from storage.settings import Settings

log = logging.getLogger(__name__)

#: Kept as received (PS3.5 Annex A). pynetdicom accepts, per context, the first syntax of this
#: list that the sender proposed; compressed syntaxes come first so that a modality that offers
#: its compressed encoding has it kept (smaller, never re-encoded), then the uncompressed ones
#: with explicit VR little endian preferred over the implicit and the retired big endian.
TRANSFER_SYNTAXES = [
    uid.JPEG2000Lossless,
    uid.JPEGLSLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLossless,
    uid.RLELossless,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.JPEG2000,
    uid.JPEGLSNearLossless,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.HTJ2K,
    uid.MPEG2MPML,
    uid.MPEG4HP41,
    uid.HEVCMP51,
    uid.ExplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
]


def configure_pynetdicom() -> None:
    """Process-global pynetdicom options, set once here (they are module flags, not per AE)."""
    _config.STORE_RECV_CHUNKED_DATASET = True  # C-STORE data lands in a temp file, not in memory
    _config.LOG_REQUEST_IDENTIFIERS = False  # no patient data in logs
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.PASS_CONTEXTVARS = True


class _ReusePortServer(ThreadedAssociationServer):
    """Lets several SCP processes listen on one port; the kernel balances associations."""

    def server_bind(self) -> None:
        sock: socket.socket = self.socket
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()


@dataclass
class RunningScp:
    server: ThreadedAssociationServer
    archive: Archive

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def shutdown(self) -> None:
        self.server.shutdown()  # also closes the socket and deregisters from the AE


def build_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = settings.max_associations
    ae.require_called_aet = True
    ae.network_timeout = 300
    ae.acse_timeout = 60
    ae.dimse_timeout = 300
    ae.add_supported_context(Verification)
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
    return ae


def _handlers(archive: Archive) -> list[Any]:
    return [
        (evt.EVT_C_ECHO, echo.handle),
        (evt.EVT_C_STORE, store.handle, [archive]),
        (evt.EVT_ACCEPTED, _on_accepted),
        (evt.EVT_REJECTED, _on_rejected),
        (evt.EVT_RELEASED, _on_closed, ["released"]),
        (evt.EVT_ABORTED, _on_closed, ["aborted"]),
    ]


def _peer(e: evt.Event) -> dict[str, Any]:
    r = e.assoc.requestor
    return {"calling_ae": str(r.ae_title).strip(), "called_ae": str(e.assoc.acceptor.ae_title).strip(),
            "peer": f"{r.address}:{r.port}"}


def _on_accepted(e: evt.Event) -> None:
    stats.stats_for(e.assoc)
    ASSOCIATIONS.labels("accepted").inc()


def _on_rejected(e: evt.Event) -> None:
    ASSOCIATIONS.labels("rejected").inc()
    event(log, "dimse.assoc.rejected", level=logging.WARNING, **_peer(e))


def _on_closed(e: evt.Event, how: str) -> None:
    s = stats.pop(e.assoc)
    event(log, f"dimse.assoc.{how}", **_peer(e), stored=s.stored, already_present=s.already_present,
          rejected=s.rejected, bytes=s.bytes, duration_ms=round((time.perf_counter() - s.started) * 1000, 1))


def start(settings: Settings, archive: Archive, *, port: int | None = None) -> RunningScp:
    """Listen in background threads; return at once (tests bind port 0 and read `.port`)."""
    configure_pynetdicom()
    ae = build_ae(settings)
    address = (settings.dicom_host, settings.dicom_port if port is None else port)
    server = ae.make_server(address, evt_handlers=_handlers(archive), server_class=_ReusePortServer)
    ae._servers.append(server)  # as AE.start_server does, so AE.shutdown() and server.shutdown() agree
    thread = threading.Thread(target=server.serve_forever, name=f"scp:{address[1]}", daemon=True)
    thread.start()
    return RunningScp(server=server, archive=archive)


def run_worker(settings: Settings, parent_pid: int) -> None:
    """Entry point of one SCP worker process of `pacs serve --dicom-workers N`."""
    from pacs.logconfig import configure_logging

    configure_logging(settings.log_level)
    archive = Archive.open(settings)
    scp = start(settings, archive)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    event(log, "dimse.worker.started", pid=os.getpid(), port=scp.port)
    while not stop.wait(1.0):
        if os.getppid() != parent_pid:  # the server died without stopping us
            break
    scp.shutdown()
    archive.close()
