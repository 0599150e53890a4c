"""The socket servers behind the SCP's ports: every connection admitted, guarded, and kept.

pynetdicom's `ThreadedAssociationServer` accepts a connection and serves it on a thread of
its own. The servers here add what a port facing a whole city's network needs:

- TLS connections are wrapped when accepted and handshake on their own thread, never on the
  one that accepts (pynetdicom's `ssl_context` handshakes in `get_request`, where a client that
  never completes would stop every other client);
- each connection is admitted first (`pacs.admission`: at most so many per host) and counted
  until its association ends, since its request thread lasts as long as the association;
- every PDU, from the association request on, is read through `pacs.wire.guard`;
- the presentation contexts are shared by all associations instead of deep-copied for each.

`ListeningServer` is the single-process SCP's; `HandedOffServer` a worker's, which serves
the sockets the dispatcher (`pacs.dispatch`) hands it.
"""

from __future__ import annotations

import copy
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from pacs.admission import Admission
from pacs.wire import guard, wakeups
from storage.logs import event
from storage.metrics import ASSOCIATIONS
from storage.settings import Settings

log = logging.getLogger(__name__)


class TlsServer(ThreadedAssociationServer):
    """An SCP whose connections may be TLS: wrapped when accepted, the handshake on their own thread.

    pynetdicom's own `ssl_context` handshakes inside `get_request`, on the one thread that
    accepts, where a client that never completes its handshake would stop every other client.
    Every connection is also admitted (`pacs.admission`: at most so many per host) and has its
    PDUs read through a guard (`pacs.wire.guard`), and its request thread lives as long as its
    association (`GuardedHandler`), which is what the per-host count counts.
    """

    tls: ssl.SSLContext | None = None
    limits: guard.Limits
    admission: Admission
    daemon_threads = True  # a stopping server aborts its associations instead of waiting for them
    block_on_close = False

    def process_request(self, request: Any, client_address: Any) -> None:
        address, port = _address_of(client_address)
        if not self.admission.enter(address):
            self.admission.refused(address, port)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.admission.leave(address)
            raise

    @staticmethod
    def context(settings: Settings) -> ssl.SSLContext:
        """The server side of DICOM TLS; with a CA file, client certificates are required (mutual TLS)."""
        if settings.dicom_tls_cert is None or settings.dicom_tls_key is None:
            raise ValueError("DICOM TLS needs a certificate and its key (PACS_DICOM_TLS_CERT, PACS_DICOM_TLS_KEY)")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195 (PS3.15 B.9): no SSL, TLS 1.0 or 1.1
        context.load_cert_chain(settings.dicom_tls_cert, settings.dicom_tls_key)
        if settings.dicom_tls_ca is not None:
            context.load_verify_locations(cafile=settings.dicom_tls_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def wrap(self, sock: socket.socket) -> socket.socket:
        if self.tls is None:
            return sock
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, ssl.SSLSocket) and not self._handshake(request, client_address):
                return
            super().process_request_thread(request, client_address)
        finally:
            self.admission.leave(_address_of(client_address)[0])

    def _handshake(self, sock: ssl.SSLSocket, address: tuple[str, int]) -> bool:
        sock.settimeout(self.ae.acse_timeout)  # the time a peer has to ask for its association
        try:
            sock.do_handshake()
        except (OSError, ValueError) as exc:  # SSLError and timeouts are OSErrors
            ASSOCIATIONS.labels("tls_failed").inc()
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            event(log, "dimse.tls.failed", level=logging.WARNING, peer=f"{address[0]}:{address[1]}", reason=reason)
            self.shutdown_request(sock)
            return False
        sock.settimeout(None)
        return True


class ListeningServer(TlsServer):
    """The single-process SCP: listens itself, Nagle off on every accepted connection."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.wrap(sock), address


def _address_of(client_address: Any) -> tuple[str, int]:
    if isinstance(client_address, tuple) and len(client_address) >= 2:
        return str(client_address[0]), int(client_address[1])
    return str(client_address), 0


class GuardedHandler(RequestHandler):
    """An association whose PDUs are read through `pacs.wire.guard` from its very first (the
    association request), and whose request thread lasts until it ends, so that its end can
    be reported and its connection counted until then."""

    assoc: Association
    server: TlsServer

    def _create_association(self) -> Association:
        self.assoc = super()._create_association()
        guard.install(self.assoc, self.server.limits)
        wakeups.install(self.assoc)
        return self.assoc

    def handle(self) -> None:
        super().handle()  # starts the association's own thread
        self.assoc.join()


class HandedOffServer(TlsServer):
    """A worker's SCP: serves the sockets the dispatcher hands it and listens nowhere.

    socketserver needs a bound socket, so it binds 127.0.0.1:0 but never listens on it.
    """

    on_done: Callable[[], None] = staticmethod(lambda: None)

    def server_activate(self) -> None:
        pass

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.on_done()


class _SharedContext(PresentationContext):
    """A supported presentation context that every association reads and none writes.

    pynetdicom deep-copies the acceptor's supported contexts for every association
    (`transport.RequestHandler._create_association`); with ~130 storage and query classes and
    19 transfer syntaxes each, that copy took ~40 ms per association, ten times Orthanc's whole
    association set-up. Negotiation (`presentation.negotiate_as_acceptor`) only reads them and
    builds new result contexts, so all associations can share one copy.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedContext:
        return self


def share_contexts(server: ThreadedAssociationServer) -> None:
    """Give `server`'s supported contexts to every association as one shared copy."""
    shared: list[PresentationContext] = []
    for cx in server.contexts:
        s = _SharedContext.__new__(_SharedContext)
        s.__dict__.update(copy.deepcopy(cx).__dict__)
        shared.append(s)
    server.contexts = shared
