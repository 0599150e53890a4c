"""`pacs.wire.wakeups`: which sleeps of pynetdicom's threads it takes over, that whatever the
reactor must do wakes it, and that an association leaves nothing behind (its bell's two
sockets). Its effect on latency is measured in benchmarks/README.md ([10/10]), not asserted
here; the DIMSE tests run through it."""

from __future__ import annotations

import gc
import select
import threading
import time

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

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


class _Established:
    is_established = True


def test_the_reactor_of_an_established_association_sleeps_long_in_its_poll_loop_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[float] = []
    monkeypatch.setattr(wakeups, "_until_woken", lambda _woken, seconds: asked.append(seconds))
    established, negotiating = _Established(), _Established()
    negotiating.is_established = False
    for assoc in (established, negotiating):
        for seconds in (wakeups.POLL, 0.0001):
            wakeups._reactor_wait(lambda a=assoc: a, threading.Event(), seconds)  # type: ignore[misc]
    assert asked == [wakeups.REACTOR_IDLE, 0.0001, wakeups.POLL, 0.0001]


def test_pausing_the_reactor_wakes_it() -> None:
    woken = threading.Event()
    checkpoint = wakeups._Checkpoint(woken)
    assert checkpoint.is_set() and not woken.is_set()  # running, as pynetdicom's own starts
    checkpoint.clear()
    assert woken.is_set() and not checkpoint.is_set()


@pytest.mark.parametrize("ending", ["release", "abort"])
def test_every_request_wakes_a_reactor_that_would_sleep_a_minute(
    scp: RunningScp, ending: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the reactor's idle sleep longer than the peer's timeouts, an echo, a C-FIND and the
    end of the association are still answered: each reached the reactor with a wake-up."""
    monkeypatch.setattr(wakeups, "REACTOR_IDLE", 60.0)
    ae = AE(ae_title="CT1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate(
        "127.0.0.1",
        scp.port,
        [build_context(Verification), build_context(StudyRootQueryRetrieveInformationModelFind)],
        ae_title="MUNIPACS",
    )
    assert assoc.is_established
    for _ in range(3):
        assert assoc.send_c_echo().Status == 0
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        statuses = [status.Status for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
        assert statuses[-1] == 0
    if ending == "release":
        assoc.release()
        assert assoc.is_released  # the peer's A-RELEASE-RP came before the client's 10 s timeout
    else:
        assoc.abort()
    deadline = time.monotonic() + 10
    while scp.server.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not scp.server.ae.active_associations
