"""`pacs.wire.guard`: a PDU longer than what the SCP takes is refused with an A-ABORT, unread.

Before the guard, an A-ASSOCIATE-RQ or a P-DATA-TF announcing 0xFFFFFFF0 bytes was buffered in
full before any AE title was checked (+1 GB of RSS per GB sent; the memory bound is measured
on a `pacs serve` process in tests/e2e/test_memory_bounds.py). The SCP here runs with
`LIMITS` (tests/pacs/conftest.py): 16 KiB PDUs, 64 KiB data sets.
"""

from __future__ import annotations

import logging
import socket
import struct
import time

import pytest
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage, Verification

from pacs.server import RunningScp
from pacs.wire.guard import ASSOCIATION_LIMIT, COMMAND_LIMIT
from storage.logs import FIELDS
from tests.kit import dicom_factory as f
from tests.kit.inspect import row_counts, temporary_files

A_ABORT = b"\x07"


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [getattr(r, FIELDS)["reason"] for r in caplog.records if r.getMessage() == "dimse.pdu.refused"]


def raw_connection(scp: RunningScp) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", scp.port), timeout=5)
    return sock


def answer_to(sock: socket.socket, pdu: bytes, filler: int = 0) -> bytes:
    """Send `pdu` (and `filler` more bytes, as an attacker keeps sending); what comes back
    until the SCP closes the connection."""
    try:
        sock.sendall(pdu)
        if filler:
            sock.sendall(b"\x00" * filler)
    except OSError:
        pass  # closed by the SCP while we were still sending: the point
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except OSError:
        pass
    return received


def echo_works(scp: RunningScp) -> bool:
    assoc = AE(ae_title="CT1").associate("127.0.0.1", scp.port, [build_context(Verification)], ae_title="MUNIPACS")
    try:
        return assoc.is_established and assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_a_huge_association_request_is_aborted_unread(limited_scp: RunningScp, caplog) -> None:
    with caplog.at_level(logging.WARNING), raw_connection(limited_scp) as sock:
        started = time.monotonic()
        received = answer_to(sock, b"\x01\x00" + struct.pack(">L", 0xFFFFFFF0), filler=1024 * 1024)
    assert received[:1] == A_ABORT and len(received) == 10, received[:16]
    assert time.monotonic() - started < 5
    assert refusals(caplog) == [f"PDU type 0x01 of {0xFFFFFFF0} bytes, over {ASSOCIATION_LIMIT}"]
    assert echo_works(limited_scp)


@pytest.mark.parametrize(
    ("pdu", "reason"),
    [
        (b"\x05\x00" + struct.pack(">L", 4096), "PDU type 0x05 of 4096 bytes, over 4"),  # A-RELEASE-RQ
        (b"\x04\x00" + struct.pack(">L", 0xFFFFFFF0), f"PDU type 0x04 of {0xFFFFFFF0} bytes, over 16384"),
    ],
    ids=["release-request", "p-data"],
)
def test_a_pdu_over_its_bound_aborts_the_association(
    limited_scp: RunningScp, caplog: pytest.LogCaptureFixture, pdu: bytes, reason: str
) -> None:
    """After the association is accepted: a P-DATA-TF over the maximum length the SCP announced
    (PS3.8 9.3.5, PACS_MAX_PDU), a release request longer than its fixed 4 bytes."""
    assoc = AE(ae_title="CT1").associate(
        "127.0.0.1", limited_scp.port, [build_context(Verification)], ae_title="MUNIPACS"
    )
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 16 * 1024
    with caplog.at_level(logging.WARNING):
        assoc.dul.socket.send(pdu + b"\x00" * 1024)
        _wait(lambda: assoc.is_aborted)
    assert refusals(caplog) == [reason]
    assert echo_works(limited_scp)


def test_a_data_set_over_the_limit_aborts_its_transfer_and_leaves_nothing(
    limited_scp: RunningScp, caplog: pytest.LogCaptureFixture
) -> None:
    """PACS_DICOM_MAX_OBJECT_SIZE (64 KiB here): the transfer of a 128 KiB image is stopped at
    64 KiB, its partial temporary file deleted; a small one still goes through after."""
    archive = limited_scp.archive
    ae = AE(ae_title="CT1")
    assoc = ae.associate("127.0.0.1", limited_scp.port, [build_context(CTImageStorage)], ae_title="MUNIPACS")
    with caplog.at_level(logging.WARNING):
        rsp = assoc.send_c_store(f.ct_dataset(rows=256, columns=256))
        _wait(lambda: assoc.is_aborted)
    assert "Status" not in rsp  # no response: the association was aborted
    assert refusals(caplog) == [f"data set over {64 * 1024} bytes (PACS_DICOM_MAX_OBJECT_SIZE)"]
    _wait(lambda: temporary_files(archive) == [])
    assert row_counts(archive)["instances"] == 0
    assoc = ae.associate("127.0.0.1", limited_scp.port, [build_context(CTImageStorage)], ae_title="MUNIPACS")
    assert assoc.send_c_store(f.ct_dataset(rows=64, columns=64)).Status == 0x0000
    assoc.release()
    assert row_counts(archive)["instances"] == 1


def test_a_command_set_over_its_bound_aborts_the_association(
    limited_scp: RunningScp, caplog: pytest.LogCaptureFixture
) -> None:
    """A command set (a few hundred bytes in practice) sent as endless non-final fragments."""
    assoc = AE(ae_title="CT1").associate(
        "127.0.0.1", limited_scp.port, [build_context(Verification)], ae_title="MUNIPACS"
    )
    context_id = assoc.accepted_contexts[0].context_id
    fragment = b"\x00" * 8000
    pdv = struct.pack(">LBB", len(fragment) + 2, context_id, 0x01) + fragment  # command, not the last
    pdu = b"\x04\x00" + struct.pack(">L", len(pdv)) + pdv
    with caplog.at_level(logging.WARNING):
        for _ in range(COMMAND_LIMIT // len(fragment) + 1):
            if assoc.is_aborted:
                break
            try:
                assoc.dul.socket.send(pdu)
            except OSError:
                break
        _wait(lambda: assoc.is_aborted)
    assert refusals(caplog) == [f"command set over {COMMAND_LIMIT} bytes"]
    assert echo_works(limited_scp)


def _wait(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
