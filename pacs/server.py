"""The DICOM SCP: one pynetdicom AE, its presentation contexts and handlers, and its workers.

pynetdicom serves each association on its own thread, so one process is bound to one core
by the GIL. With one SCP process, `start()` listens on the DICOM port in the server process.
`pacs serve --dicom-workers N` runs N worker processes (`run_worker`) behind a dispatcher
(`pacs/dispatch.py`) that owns the port and hands each accepted connection to the least busy
worker; a worker's SCP listens nowhere and serves the sockets it is handed.

DICOM TLS (PS3.15 B.1 with the BCP 195 profiles' TLS 1.2 floor) is a second port served by the
same AE, or the only one. How connections are accepted, admitted, guarded and handed to
pynetdicom (the TLS handshake off the accepting thread among it) is `pacs.listeners`.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pydicom import uid
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from pacs import association, commitment, dispatch, echo, find, get, listeners, move, policy, ports, store
from pacs.admission import Admission
from pacs.wire import direct_store, guard, negotiation, spool, wakeups
from storage.archive import Archive
from storage.logs import event
from storage.metrics import ASSOCIATIONS
from storage.settings import Settings

log = logging.getLogger(__name__)

#: Kept as received (PS3.5 Annex A). pynetdicom accepts, per context, the first syntax of this
#: list that the sender proposed; compressed syntaxes come first so that a modality that offers
#: its compressed encoding has it kept (smaller, never re-encoded), then the uncompressed ones
#: with explicit VR little endian preferred over the implicit and the retired big endian.
#: Storage contexts on which the archive sends (a C-GET's) are settled by `pacs.wire.negotiation`.
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


#: Query/retrieve, worklist and storage commitment: their messages are small, so any
#: uncompressed syntax will do.
UNCOMPRESSED = [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.ExplicitVRBigEndian]
SERVICE_CLASSES = [
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
    ModalityWorklistInformationFind,
    StorageCommitmentPushModel,
]


def configure_pynetdicom() -> None:
    """Process-global pynetdicom options, set once here (they are module flags, not per AE)."""
    _config.STORE_RECV_CHUNKED_DATASET = True  # C-STORE data lands in a temp file, not in memory
    _config.STORE_SEND_CHUNKED_DATASET = True  # C-MOVE/C-GET send a stored file's bytes, not a re-encoding
    _config.LOG_HANDLER_LEVEL = "none"  # pynetdicom's per-message log handlers: we log one line per event
    _config.LOG_REQUEST_IDENTIFIERS = False  # no patient data in logs
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.PASS_CONTEXTVARS = True
    negotiation.install()  # C-GET storage contexts: a syntax every instance can be sent in
    spool.install()  # received C-STORE data sets land in the archive's folder (pacs.wire.guard sets it)
    wakeups.patch()  # pynetdicom's polling threads wake when their work arrives (pacs.wire.wakeups)


PLAIN, TLS = "plain", "tls"  # the two kinds of DICOM port, and the dispatcher's tags for them


@dataclass
class RunningScp:
    """The SCP of a single-process server: one AE listening on the plain port, the TLS port, or both."""

    servers: dict[str, ThreadedAssociationServer]
    archive: Archive
    reporter: commitment.Reporter

    @property
    def server(self) -> ThreadedAssociationServer:
        return self.servers.get(PLAIN) or self.servers[TLS]

    @property
    def port(self) -> int:
        if PLAIN not in self.servers:
            raise LookupError("the plain DICOM port is off (PACS_DICOM_TLS_ONLY)")
        return int(self.servers[PLAIN].server_address[1])

    @property
    def tls_port(self) -> int:
        if TLS not in self.servers:
            raise LookupError("DICOM TLS is off (no PACS_DICOM_TLS_CERT / PACS_DICOM_TLS_KEY)")
        return int(self.servers[TLS].server_address[1])

    def shutdown(self, grace: float = 0.0) -> None:
        """Stop accepting, let the associations in progress end for up to `grace` seconds, abort
        the rest (`drain`)."""
        for server in self.servers.values():
            server.shutdown()  # closes the socket and deregisters from the AE; associations go on
        drain(lambda: [a for s in self.servers.values() for a in s.active_associations], grace)
        self.reporter.stop()  # storage commitment reports still waiting to be retried stay kept


def drain(active: Callable[[], list[Any]], grace: float) -> int:
    """Wait up to `grace` seconds for the associations `active` lists to end, then abort those
    left; how many were aborted. An aborted C-STORE loses nothing acknowledged: success is sent
    only once an instance is durable."""
    deadline = time.monotonic() + grace
    left = active()
    if left:
        event(log, "dimse.draining", associations=len(left), grace=grace)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = active()
    for assoc in left:
        assoc.abort()
    if left:
        event(log, "dimse.drain.aborted", level=logging.WARNING, associations=len(left))
    return len(left)


def build_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = settings.max_associations
    ae.require_called_aet = True
    ae.network_timeout = settings.dicom_idle_timeout  # an association silent this long is ended
    ae.acse_timeout = settings.dicom_acse_timeout  # to ask for an association, to release it
    ae.dimse_timeout = settings.dicom_idle_timeout  # a peer this slow to answer a request
    ae.add_supported_context(Verification)
    for sop_class in SERVICE_CLASSES:
        ae.add_supported_context(sop_class, UNCOMPRESSED)
    for cx in StoragePresentationContexts:
        assert cx.abstract_syntax is not None
        # scu_role/scp_role: accept a C-GET requestor's proposal to be the storage SCP
        # (PS3.7 D.3.3.4), so the archive can send the retrieved instances back to it.
        ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    return ae


def _handlers(archive: Archive, reporter: commitment.Reporter, admission: Admission) -> list[Any]:
    return [
        (evt.EVT_REQUESTED, admission.on_requested),
        (evt.EVT_REQUESTED, policy.on_requested, [archive]),
        (evt.EVT_C_ECHO, echo.handle),
        (evt.EVT_C_STORE, store.handle, [archive]),
        (evt.EVT_C_FIND, find.handle, [archive]),
        (evt.EVT_C_MOVE, move.handle, [archive]),
        (evt.EVT_C_GET, get.handle, [archive]),
        (evt.EVT_N_ACTION, commitment.handle, [archive, reporter]),
        (evt.EVT_ACCEPTED, _on_accepted),
        (evt.EVT_REJECTED, _on_rejected),
        (evt.EVT_RELEASED, _on_closed, ["released"]),
        (evt.EVT_ABORTED, _on_closed, ["aborted"]),
    ]


def _peer(e: evt.Event) -> dict[str, Any]:
    """The association's ends as the requestor named them: its own AE title, the one it called,
    and its address (`acceptor.ae_title` is the archive's own title, whatever was called)."""
    r = e.assoc.requestor
    request = r.primitive
    called = request.called_ae_title if request is not None else e.assoc.acceptor.ae_title
    return {"calling_ae": str(r.ae_title).strip(), "called_ae": str(called).strip(), "peer": f"{r.address}:{r.port}"}


def _on_accepted(e: evt.Event) -> None:
    association.begin(e.assoc)  # before any request: every response and C-GET sub-operation goes direct
    ASSOCIATIONS.labels("accepted").inc()


def rejection_reason(assoc: Association) -> str:
    """Why pynetdicom's acceptor rejected an association (`acse._negotiate_as_acceptor`'s checks,
    which it does not pass on to EVT_REJECTED), in the words of PS3.8 Table 9-21."""
    request = assoc.requestor.primitive
    if request is not None and str(request.called_ae_title).strip() != str(assoc.acceptor.ae_title).strip():
        return f"called AE title not recognised: this archive is {str(assoc.acceptor.ae_title).strip()}"
    if len([a for a in assoc.ae.active_associations if a.is_acceptor]) > assoc.ae.maximum_associations:
        return f"local limit exceeded: {assoc.ae.maximum_associations} associations at once (PACS_MAX_ASSOCIATIONS)"
    return "no reason given"


def _on_rejected(e: evt.Event) -> None:
    ASSOCIATIONS.labels("rejected").inc()
    event(log, "dimse.assoc.rejected", level=logging.WARNING, **_peer(e), reason=rejection_reason(e.assoc))


def _on_closed(e: evt.Event, how: str) -> None:
    spool.discard_partial(e.assoc)
    wakeups.end(e.assoc)
    direct = direct_store.end(e.assoc, how)
    s = association.end(e.assoc)
    event(
        log,
        f"dimse.assoc.{how}",
        **_peer(e),
        pid=os.getpid(),
        stored=s.stored,
        already_present=s.already_present,
        rejected=s.rejected,
        direct=direct,
        bytes=s.bytes,
        duration_ms=round((time.perf_counter() - s.started) * 1000, 1),
    )


def start(settings: Settings, archive: Archive, *, port: int | None = None, tls_port: int | None = None) -> RunningScp:
    """Listen in background threads; return at once (tests bind port 0 and read `.port`, `.tls_port`)."""
    configure_pynetdicom()
    ae = build_ae(settings)  # one AE for both ports: one set of handlers, one association limit
    wanted: dict[str, tuple[ports.Port, ssl.SSLContext | None]] = {}
    if not settings.dicom_tls_only:
        wanted[PLAIN] = (ports.dicom(settings.dicom_host, settings.dicom_port if port is None else port), None)
    if settings.dicom_tls:
        number = settings.dicom_tls_port if tls_port is None else tls_port
        wanted[TLS] = (ports.dicom_tls(settings.dicom_host, number), listeners.TlsServer.context(settings))
    servers: dict[str, ThreadedAssociationServer] = {}
    reporter, admission = commitment.Reporter(archive), _admission(settings)
    for kind, (where, tls) in wanted.items():
        try:
            server = cast(
                listeners.ListeningServer,
                ae.make_server(
                    (where.host, where.number),
                    evt_handlers=_handlers(archive, reporter, admission),
                    server_class=listeners.ListeningServer,
                    request_handler=listeners.GuardedHandler,
                ),
            )
        except OSError as exc:
            for running in servers.values():
                running.shutdown()
            raise ports.Unavailable(where, exc) from None
        cast(socket.socket, server.socket).listen(settings.dicom_backlog)  # socketserver's backlog is 5
        server.tls, server.limits, server.admission = tls, _limits(settings, archive), admission
        listeners.share_contexts(server)
        ae._servers.append(server)  # as AE.start_server does, so AE.shutdown() and server.shutdown() agree
        name = f"scp:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
        servers[kind] = server
    reporter.start()  # with the SCP: reports a killed process left unsent go out now
    return RunningScp(servers=servers, archive=archive, reporter=reporter)


def start_workers(settings: Settings) -> dispatch.Dispatcher:
    """`--dicom-workers N`: N SCP processes behind a dispatcher that owns the DICOM port(s)."""
    bound: list[dispatch.Listener] = []
    if not settings.dicom_tls_only:
        bound.append((PLAIN, ports.bind(ports.dicom(settings.dicom_host, settings.dicom_port))))
    if settings.dicom_tls:
        listeners.TlsServer.context(settings)  # a bad certificate or key fails `pacs serve` here, not in every worker
        bound.append((TLS, ports.bind(ports.dicom_tls(settings.dicom_host, settings.dicom_tls_port))))
    dispatcher = dispatch.Dispatcher(
        bound, run_worker, (settings, os.getpid()), settings.dicom_workers, settings.dicom_backlog
    )
    dispatcher.start()
    return dispatcher


def freeze_startup_heap() -> None:
    """Keep what start-up built out of every later garbage collection.

    pynetdicom runs a full `gc.collect()` every 60 connections (`AssociationServer.service_actions`)
    and Python's oldest-generation passes walk the whole heap too: with SQLAlchemy, FastAPI and
    pydicom loaded that is ~150,000 objects, ~100 ms holding the GIL, a stall for every
    association and request in flight (the 250 ms outliers of a 60 ms C-ECHO). Frozen, a pass
    walks only what was made since; what start-up built lives as long as the process anyway.
    """
    gc.freeze()


def _admission(settings: Settings) -> Admission:
    return Admission(settings.dicom_max_per_address, settings.dicom_max_per_ae)


def _limits(settings: Settings, archive: Archive) -> guard.Limits:
    direct = store.receiver(archive) if settings.dicom_direct_store else None
    return guard.Limits(settings.max_pdu, int(settings.dicom_max_object_size), archive.temp_dir, direct)


def _handed_off_server(
    settings: Settings, archive: Archive, reporter: commitment.Reporter, channel: socket.socket
) -> listeners.HandedOffServer:
    configure_pynetdicom()
    admission = _admission(settings)
    server = cast(
        listeners.HandedOffServer,
        build_ae(settings).make_server(
            ("127.0.0.1", 0),
            evt_handlers=_handlers(archive, reporter, admission),
            server_class=listeners.HandedOffServer,
            request_handler=listeners.GuardedHandler,
        ),
    )
    server.limits, server.admission = _limits(settings, archive), admission
    server.server_address = (settings.dicom_host, settings.dicom_port)  # what the acceptor reports
    server.on_done = lambda: dispatch.done(channel)
    listeners.share_contexts(server)
    server.tls = listeners.TlsServer.context(settings) if settings.dicom_tls else None
    return server


def _serve_handed_off(server: listeners.HandedOffServer, channel: socket.socket, stop: threading.Event) -> None:
    def handle(sock: socket.socket, address: tuple[str, int], kind: str) -> None:
        server.process_request(server.wrap(sock) if kind == TLS else sock, address)
        server.service_actions()  # pynetdicom's periodic collection of finished associations

    try:
        dispatch.receive(channel, handle)
    finally:
        stop.set()  # the dispatcher is gone: so is the server process


def run_worker(channel: socket.socket, settings: Settings, parent_pid: int) -> None:
    """Entry point of one SCP worker process of `pacs serve --dicom-workers N`."""
    from pacs.logconfig import configure_logging

    configure_logging(settings.log_level)
    archive = Archive.open(settings)
    reporter = commitment.Reporter(archive)
    server = _handed_off_server(settings, archive, reporter, channel)
    freeze_startup_heap()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=_serve_handed_off, args=(server, channel, stop), name="scp:handed-off", daemon=True).start()
    reporter.start()
    event(log, "dimse.worker.started", pid=os.getpid())
    while not stop.wait(1.0):
        if os.getppid() != parent_pid:  # the server died without stopping us
            break
    server.server_close()  # no more handed-off connections; those in progress go on
    drain(lambda: server.active_associations, settings.shutdown_grace)
    reporter.stop()
    channel.close()
    archive.close()
