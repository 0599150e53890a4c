"""pynetdicom's polling sleeps, ended early when there is something to do.

Why: an association is served by two pynetdicom threads that poll: the DUL reader sleeps 1 ms
whenever it found nothing to read or send, and the association's reactor sleeps 1 ms between
two looks at its DIMSE queue. Every request therefore waits ~1 ms on average before any of the
archive's code runs (~0.5 ms per hop), and an association's request, first message and release
cross those hops several times: ~6 ms of an echoscu's ~20 ms, the gap to Orthanc's C-FIND per
query and per association (benchmarks/README.md, [10/10]).

Here the two threads of an accepted association sleep as before but wake as soon as their work
arrives: the DUL reader when its socket becomes readable or something is queued for it to send
(`select` on the socket and on a socket pair rung by its queue, instead of `time.sleep`), the
reactor when a message or an ACSE primitive is put on its queues or another thread pauses it (an
Event those set). The DUL reader never sleeps longer than pynetdicom asked. The reactor of an
established association, whose every message comes with a wake-up, sleeps up to `REACTOR_IDLE`
instead of 1 ms: while the direct C-STORE path (`pacs.wire.direct_store`) receives a study, its
thousand empty looks a second cost 6 % of the SCP's CPU. Only short sleeps (the 1 ms loops) are
changed: pynetdicom's longer pauses (an abort's 0.1 s) stay whole. While a sender owns the
socket's read side to read its sub-operation's response (`pacs.wire.direct_receive`), the
reader sleeps plainly: the data is not its to read.

Mechanics: pynetdicom's `dul` and `association` modules get a stand-in for `time` whose `sleep`
looks up the calling thread (a DUL provider and an Association are threads) among those
registered by `install`.
"""

from __future__ import annotations

import functools
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable
from queue import Queue
from typing import Any

import pynetdicom.association
import pynetdicom.dul
from pynetdicom.association import Association

from pacs.wire import direct_send

#: sleeps up to this long are pynetdicom's polling loops, which may end early; longer ones are not
POLL = 0.001
#: how long the reactor of an established association sleeps when nothing wakes it: all its work
#: but two arrives with a wake-up (a message, an ACSE primitive, a pause); those two, its DUL
#: thread's end without a word (a killed one) and the idle timeout, are seen this much later
REACTOR_IDLE = 0.02

_waiters: weakref.WeakKeyDictionary[threading.Thread, Callable[[float], None]] = weakref.WeakKeyDictionary()


class _Clock:
    """The `time` module for pynetdicom's `dul` and `association` modules, `sleep` aside."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        waiter = _waiters.get(threading.current_thread()) if 0 < seconds <= POLL else None
        if waiter is None:
            time.sleep(seconds)
        else:
            waiter(seconds)


_CLOCK = _Clock()
_readers: weakref.WeakKeyDictionary[threading.Thread, _Reader] = weakref.WeakKeyDictionary()


def patch() -> None:
    """Give pynetdicom's reactor modules the stand-in clock (idempotent; process-wide, inert for
    any thread `install` did not register)."""
    setattr(pynetdicom.dul, "time", _CLOCK)  # noqa: B010 - their module-level name
    setattr(pynetdicom.association, "time", _CLOCK)  # noqa: B010


def install(assoc: Association) -> None:
    """Wake `assoc`'s DUL reader and reactor when their work arrives (from its creation on)."""
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is not None:
        reader = _readers[assoc.dul] = _Reader(weakref.ref(assoc), sock)  # weakly: it must not keep them alive
        weakref.finalize(assoc.dul, reader.bell.close)
        _waiters[assoc.dul] = reader.wait
        _on_put(assoc.dul.to_provider_queue, reader.bell.ring)  # something to send: a reply, a release
    woken = threading.Event()
    _waiters[assoc] = functools.partial(_reactor_wait, weakref.ref(assoc), woken)
    for q in (assoc.dimse.msg_queue, assoc.dul.to_user_queue):
        _on_put(q, woken.set)
    # whoever pauses the reactor (a send from another thread, a release) waits for it to look
    assoc._reactor_checkpoint = _Checkpoint(woken)


def end(assoc: Association) -> None:
    """`assoc` was released or aborted: its threads sleep plainly from now on, its bell is closed."""
    _waiters.pop(assoc, None)
    _waiters.pop(assoc.dul, None)
    reader = _readers.pop(assoc.dul, None)
    if reader is not None:
        reader.bell.close()


class _Bell:
    """A socket pair the reader's `select` also watches: rung when it has something to send."""

    def __init__(self) -> None:
        self.rx, self.tx = socket.socketpair()
        self.rx.setblocking(False)
        self.tx.setblocking(False)

    def ring(self) -> None:
        try:
            self.tx.send(b"\0")
        except OSError:  # full (it rang already) or closed: either way nothing is lost
            pass

    def quiet(self) -> None:
        try:
            self.rx.recv(64)
        except OSError:
            pass

    def close(self) -> None:
        self.rx.close()
        self.tx.close()


class _Reader:
    """The DUL reader's wait: its socket, and the bell rung when there is something to send."""

    def __init__(self, assoc: weakref.ref[Association], sock: Any) -> None:
        self.assoc = assoc
        self.sock = sock
        self.bell = _Bell()

    def wait(self, seconds: float) -> None:
        assoc = self.assoc()
        wrapper = assoc.dul.socket if assoc is not None else None
        sender = direct_send.sender_of(assoc) if assoc is not None else None
        if wrapper is None or not wrapper._is_connected or (sender is not None and sender.receiver.lock.locked()):
            time.sleep(seconds)  # closing, or a sender reads its response: readable, but not the reader's
            return
        try:
            ready, _, _ = select.select([self.sock, self.bell.rx], [], [], seconds)
        except (OSError, ValueError):  # closed meanwhile: pynetdicom notices on its next look
            time.sleep(seconds)
            return
        if self.bell.rx in ready:
            self.bell.quiet()


def _reactor_wait(assoc: weakref.ref[Association], woken: threading.Event, seconds: float) -> None:
    """The reactor's sleep: its 1 ms loop, on an established association, lasts until it is
    woken or `REACTOR_IDLE` has passed; any other sleep as long as asked, or until woken."""
    current = assoc()
    if seconds == POLL and current is not None and current.is_established:
        seconds = REACTOR_IDLE
    _until_woken(woken, seconds)


def _until_woken(woken: threading.Event, seconds: float) -> None:
    woken.wait(seconds)
    woken.clear()  # a wake-up that comes after this is seen by the next look at the queues


class _Checkpoint(threading.Event):
    """The reactor's pause switch (pynetdicom's `_reactor_checkpoint`), which also wakes the
    reactor when cleared: the thread that pauses it waits until the reactor's next look says
    it paused, which would otherwise come after up to `REACTOR_IDLE`."""

    def __init__(self, woken: threading.Event) -> None:
        super().__init__()
        self.set()
        self._woken = woken

    def clear(self) -> None:
        super().clear()
        self._woken.set()


def _on_put(q: Queue[Any], wake: Callable[[], None]) -> None:
    put = q.put

    def put_and_wake(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        wake()

    setattr(q, "put", put_and_wake)  # noqa: B010 - this queue only
