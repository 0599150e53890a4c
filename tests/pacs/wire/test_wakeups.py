"""`pacs.wire.wakeups`: which sleeps of pynetdicom's threads it takes over, and that an association
leaves nothing behind (its bell's two sockets). Its effect on latency is measured in
benchmarks/README.md ([10/10]), not asserted here; the DIMSE tests run through it."""

from __future__ import annotations

import gc
import select
import threading
import time

import pytest
from pynetdicom import AE, build_context
from pynetdicom.sop_class import Verification

from pacs.server import RunningScp
from pacs.wire import wakeups


def test_only_a_registered_threads_polling_sleeps_are_taken_over() -> None:
    asked: list[float] = []
    me = threading.current_thread()
    wakeups._waiters[me] = asked.append
    try:
        wakeups._CLOCK.sleep(wakeups.POLL)  # pynetdicom's 1 ms loop
        wakeups._CLOCK.sleep(0.0001)  # its 0.1 ms loop
        wakeups._CLOCK.sleep(0.002)  # a longer pause stays a plain sleep
        wakeups._CLOCK.sleep(0)
    finally:
        del wakeups._waiters[me]
    assert asked == [wakeups.POLL, 0.0001]
    wakeups._CLOCK.sleep(wakeups.POLL)  # an unregistered thread: time.sleep
    assert wakeups._CLOCK.monotonic() <= time.monotonic()  # the rest of `time` is time's


def test_a_ring_makes_the_bell_readable_until_quieted() -> None:
    bell = wakeups._Bell()
    try:
        assert select.select([bell.rx], [], [], 0)[0] == []
        bell.ring()
        bell.ring()
        assert select.select([bell.rx], [], [], 0)[0] == [bell.rx]
        bell.quiet()
        assert select.select([bell.rx], [], [], 0)[0] == []
    finally:
        bell.close()
    bell.ring()  # closed: ringing is harmless


@pytest.mark.parametrize("ending", ["release", "abort"])
def test_associations_register_their_threads_and_close_their_bell_when_they_end(scp: RunningScp, ending: str) -> None:
    bells = []
    for _ in range(3):
        assoc = AE(ae_title="CT1").associate("127.0.0.1", scp.port, [build_context(Verification)], ae_title="MUNIPACS")
        assert assoc.is_established
        deadline = time.monotonic() + 10
        served: list = []
        while not served and time.monotonic() < deadline:  # the acceptor's side is established a moment later
            served = [a for a in scp.server.ae.active_associations if a.is_established and a.dul in wakeups._readers]
            time.sleep(0.01)
        assert served and all(a in wakeups._waiters and a.dul in wakeups._waiters for a in served)
        bells += [wakeups._readers[a.dul].bell for a in served]
        assert assoc.send_c_echo().Status == 0
        assoc.release() if ending == "release" else assoc.abort()
        while scp.server.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.02)
    gc.collect()
    assert bells and all(b.rx.fileno() == -1 and b.tx.fileno() == -1 for b in bells)  # closed with their association
