"""Hands each accepted DICOM connection to the least busy SCP worker process.

Why: pynetdicom serves every association on a thread of one process, so the GIL holds one
process to one core, and `pacs serve --dicom-workers N` runs N SCP processes. Sharing the
port with SO_REUSEPORT let the kernel pick a process by a hash of the client's address and
port, so two simultaneous associations often landed on one process while another idled.
Here, as in a pre-fork server, the `pacs serve` process owns the listening socket, accepts
each connection and passes it (SCM_RIGHTS over a Unix SOCK_SEQPACKET pair: Linux) to the
worker with the fewest associations in progress, round-robin among equals. A worker sends a
byte when it is ready and one when an association ends; end of file on its pair means it
died, and it is started again unless it died before it was ever ready (it would die again).

Several listening sockets may feed the same workers (the plain DICOM port and the DICOM TLS
port): each is named by a tag that travels with the connection, and the worker decides what
the tag means (for TLS, it wraps the socket and shakes hands on the association's own thread,
so a slow or broken handshake never holds up this loop).

Nothing here knows DICOM: what a worker does with a socket is `pacs/server.py`'s business.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any, cast

from storage.logs import event

log = logging.getLogger(__name__)

READY = b"R"  # worker -> dispatcher: serving from now on
DONE = b"."  # worker -> dispatcher: one association is over

Address = tuple[str, int]
Handle = Callable[[socket.socket, Address, str], None]
#: (tag, socket): a listening socket and the name its connections are handed off under
Listener = tuple[str, socket.socket]


@dataclass
class _Worker:
    process: BaseProcess
    channel: socket.socket
    active: int = 0
    ready: bool = False


class Dispatcher:
    """Owns the listening sockets and the worker processes `target(channel, *args)`."""

    def __init__(
        self,
        listeners: list[Listener],
        target: Callable[..., None],
        args: tuple[Any, ...],
        workers: int,
        backlog: int = 128,
    ) -> None:
        self._listeners = listeners
        self.backlog = backlog  # connections the kernel queues for this loop to accept
        self._target, self._args = target, args
        self._context = multiprocessing.get_context("spawn")
        self._selector = selectors.DefaultSelector()
        self._count = workers
        self._workers: list[_Worker] = []
        self._next = 0  # where the round-robin among equally busy workers resumes
        self._listening = False
        self._settled = threading.Event()  # listening, or no worker left to wait for
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dicom-dispatch", daemon=True)

    def start(self, timeout: float = 60) -> None:
        """Start the workers; return once the port listens, that is once every worker is ready."""
        self._workers = [self._spawn() for _ in range(self._count)]
        self._thread.start()
        if not (self._settled.wait(timeout) and self._listening):
            self.stop()
            raise RuntimeError(f"no SCP worker became ready in {timeout:.0f} s (see the log above)")

    def stop(self, grace: float = 0.0) -> None:
        """Stop accepting, then SIGTERM the workers and wait for them: `grace` seconds for their
        associations to end, 10 s more to close; SIGKILL after that."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        for _, listener in self._listeners:
            listener.close()
        for w in self._workers:
            w.process.terminate()
        deadline = time.monotonic() + grace + 10
        for w in self._workers:
            w.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
            w.channel.close()
        self._selector.close()

    def _spawn(self) -> _Worker:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = self._context.Process(target=self._target, args=(theirs, *self._args), daemon=False)
        process.start()
        theirs.close()  # the worker holds the only other end: its death reads as end of file here
        worker = _Worker(process, mine)
        self._selector.register(mine, selectors.EVENT_READ, worker)
        return worker

    def _loop(self) -> None:
        while not self._stopping.is_set():
            for key, _ in self._selector.select(timeout=0.5):
                if isinstance(key.data, _Worker):
                    self._read(key.data)
                else:
                    self._accept(key.data, cast(socket.socket, key.fileobj))

    def _listen_when_ready(self) -> None:
        """Open the ports once no worker is still starting, so that a client finds an SCP there."""
        if self._listening or any(not w.ready and w.process.is_alive() for w in self._workers):
            return
        if any(w.ready and w.process.is_alive() for w in self._workers):
            for tag, listener in self._listeners:
                listener.listen(self.backlog)
                listener.setblocking(False)
                self._selector.register(listener, selectors.EVENT_READ, tag)
            self._listening = True
        self._settled.set()

    def _read(self, worker: _Worker) -> None:
        try:
            message = worker.channel.recv(16)
        except OSError:
            message = b""
        if not message:
            self._died(worker)
        elif message == READY:
            worker.ready = True
            self._listen_when_ready()
        else:
            worker.active -= message.count(DONE)

    def _accept(self, tag: str, listener: socket.socket) -> None:
        try:
            conn, address = listener.accept()
        except BlockingIOError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            self._hand_off(conn, address, tag)

    def _hand_off(self, conn: socket.socket, address: Address, tag: str) -> None:
        while (worker := self._choose()) is not None:
            try:
                socket.send_fds(worker.channel, [json.dumps([*address[:2], tag]).encode()], [conn.fileno()])
            except OSError:
                self._died(worker)
                continue
            worker.active += 1
            return
        event(log, "dimse.dispatch.no_worker", level=logging.WARNING, peer=f"{address[0]}:{address[1]}")

    def _choose(self) -> _Worker | None:
        """The least busy worker, ready ones first; ties go round-robin."""
        alive = [i for i, w in enumerate(self._workers) if w.process.is_alive()]
        ready = [i for i in alive if self._workers[i].ready] or alive
        if not ready:
            return None
        n = len(self._workers)
        chosen = min(ready, key=lambda i: (self._workers[i].active, (i - self._next) % n))
        self._next = (chosen + 1) % n
        return self._workers[chosen]

    def _died(self, worker: _Worker) -> None:
        if worker.channel.fileno() < 0:
            return  # already handled: a failed send and end of file can both report one death
        self._selector.unregister(worker.channel)
        worker.channel.close()
        worker.process.join(timeout=1)
        new = self._replace(worker) if worker.ready and not self._stopping.is_set() else None
        lost = {"pid": worker.process.pid, "exitcode": worker.process.exitcode, "associations_lost": worker.active}
        event(log, "dimse.worker.died", level=logging.ERROR, **lost, restarted_pid=new)
        self._listen_when_ready()

    def _replace(self, worker: _Worker) -> int | None:
        replacement = self._spawn()
        self._workers[self._workers.index(worker)] = replacement
        return replacement.process.pid


def receive(channel: socket.socket, handle: Handle) -> None:
    """Worker side: say ready, then give `handle` each socket the dispatcher sends, until it goes away."""
    channel.sendall(READY)
    while True:
        message, fds, _, _ = socket.recv_fds(channel, 1024, 1)
        if not message:
            return
        host, port, tag = json.loads(message)
        for fd in fds:
            sock = socket.socket(fileno=fd)
            sock.setblocking(True)
            try:
                handle(sock, (host, port), tag)
            except Exception:  # one connection that cannot be served must not stop the worker
                log.exception("dimse.dispatch.handle_failed")
                sock.close()
                done(channel)


def done(channel: socket.socket) -> None:
    """Worker side: one association is over (safe from any thread: one packet per call)."""
    with contextlib.suppress(OSError):  # the dispatcher is gone; the worker is about to notice
        channel.send(DONE)
