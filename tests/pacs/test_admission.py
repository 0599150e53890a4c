"""One misbehaving host or AE cannot take the SCP's association slots from the modalities.

The probes that found it: 200 silent TCP connections made every association fail for 60 s;
64 held associations of one unregistered AE locked out every C-ECHO for five minutes. The SCP
here runs with `LIMITS` (tests/pacs/conftest.py): 6 associations, 3 per host, 2 per AE title,
1 s to ask for an association, 2 s of silence. Hosts are loopback addresses (127.0.0.2 is
"another machine" to the SCP listening on 0.0.0.0).
"""

from __future__ import annotations

import logging
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from pacs.server import RunningScp
from storage.logs import FIELDS
from tests.kit.tools import require_tool

ROGUE_HOST = "127.0.0.2"


def connect(scp: RunningScp, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to the SCP that never says anything."""
    sock = socket.create_connection(("127.0.0.1", scp.port), timeout=5, source_address=(source, 0))
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the SCP closes (or aborts) `sock` within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass  # an A-ABORT before the close is fine
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def associate(scp: RunningScp, calling: str = "CT1", source: str = "127.0.0.1") -> Association:
    contexts, where = [build_context(Verification)], (source, 0)
    return AE(ae_title=calling).associate("127.0.0.1", scp.port, contexts, ae_title="MUNIPACS", bind_address=where)


def echo(scp: RunningScp, calling: str = "CT1") -> bool:
    assoc = associate(scp, calling)
    try:
        return assoc.is_established and assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def logged(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, str]]:
    return [getattr(r, FIELDS) for r in caplog.records if r.getMessage() == name]


@contextmanager
def held(make: Callable[[], socket.socket | Association], n: int) -> Iterator[list]:
    """`n` connections or associations held open for the block."""
    with ExitStack() as stack:
        out = []
        for _ in range(n):
            item = make()
            stack.callback(item.close if isinstance(item, socket.socket) else item.abort)
            out.append(item)
        yield out


def test_silent_connections_of_one_host_do_not_lock_out_the_others(limited_scp: RunningScp, caplog) -> None:
    """Ten silent sockets from one host: three are admitted, the rest closed at once; a
    modality on another host still gets its association."""
    with caplog.at_level(logging.WARNING), held(lambda: connect(limited_scp, ROGUE_HOST), 10) as silent:
        time.sleep(0.3)  # well within the 1 s the admitted ones have to ask for an association
        closed, _, _ = select.select(silent, [], [], 0)
        assert len(closed) == 7 and all(s.recv(16) == b"" for s in closed)
        assert echo(limited_scp)
    (first, *_) = logged(caplog, "dimse.connection.refused")
    assert first["peer"].startswith(f"{ROGUE_HOST}:") and "PACS_DICOM_MAX_PER_ADDRESS" in first["reason"]


def test_a_connection_that_never_asks_is_closed_after_the_acse_timeout(limited_scp: RunningScp) -> None:
    """PACS_DICOM_ACSE_TIMEOUT (1 s here; 10 s by default, pynetdicom's is 60 s)."""
    with connect(limited_scp, ROGUE_HOST) as sock:
        started = time.monotonic()
        assert closed_within(sock, 5)
        assert 0.8 < time.monotonic() - started < 3


def test_one_ae_title_holds_at_most_its_share(limited_scp: RunningScp, caplog) -> None:
    """Two associations of ROGUE (on another host) are held; its third is rejected (transient, local limit
    exceeded, PS3.8 Table 9-21) while CT1 still gets in."""
    rogue = lambda: associate(limited_scp, "ROGUE", source=ROGUE_HOST)  # noqa: E731
    with caplog.at_level(logging.WARNING), held(rogue, 2) as kept:
        assert all(a.is_established for a in kept)
        third = rogue()
        assert third.is_rejected
        rj = third.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
        assert echo(limited_scp, "CT1")
    (line,) = logged(caplog, "dimse.assoc.rejected")
    assert line["calling_ae"] == "ROGUE" and "PACS_DICOM_MAX_PER_AE" in line["reason"]


def test_a_silent_association_is_ended_after_the_idle_timeout(limited_scp: RunningScp) -> None:
    """PACS_DICOM_IDLE_TIMEOUT (2 s here, 60 s by default; it was 300 s)."""
    assoc = associate(limited_scp, "CT1")
    assert assoc.is_established
    started = time.monotonic()
    while assoc.is_established and time.monotonic() - started < 10:
        time.sleep(0.05)
    assert assoc.is_aborted
    assert 1.5 < time.monotonic() - started < 6


def test_the_listen_backlog_is_the_configured_one(limited_scp: RunningScp) -> None:
    """socketserver listens with a backlog of 5: 200 connections at once overflowed it."""
    ss = require_tool("ss", package="iproute2")
    out = subprocess.run([ss, "-Hltn", f"sport = :{limited_scp.port}"], capture_output=True, text=True, check=True)
    (line,) = out.stdout.splitlines()
    assert line.split()[2] == "128"  # Send-Q of a listening socket: its backlog
