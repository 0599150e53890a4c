"""`pacs serve --dicom-workers 2`: simultaneous associations are spread over the SCP processes.

A real server subprocess and two pynetdicom associations held open together; which process
served each association is read from the `dimse.assoc.released ... pid=` line it logs.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage

from tests.kit import dicom_factory as f
from tests.kit.servers import ServerProcess, start_server

PER_ASSOCIATION = 5


@pytest.fixture()
def two_workers(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_server(tmp_path / "var", extra_args=["--dicom-workers", "2"])
    try:
        yield server
    finally:
        server.kill()


def _released_pids(server: ServerProcess, expected: int, timeout: float = 10) -> list[int]:
    """The pid of each `dimse.assoc.released` line, once `expected` of them are in the log."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [int(m) for m in re.findall(r"dimse\.assoc\.released .*?\bpid=(\d+)", server.log_text())]
        if len(pids) >= expected or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


def _stored_total(server: ServerProcess) -> int:
    text = httpx.get(f"{server.url}/metrics", headers=server.admin(), timeout=5).text
    lines = (line for line in text.splitlines() if re.match(r"pacs_instances_stored_total(\{|\s)", line))
    return int(sum(float(line.split()[-1]) for line in lines))


def test_simultaneous_associations_go_to_different_workers(two_workers: ServerProcess) -> None:
    ae = AE(ae_title="WORKERTEST")
    ae.requested_contexts = [build_context(CTImageStorage)]
    assocs = [ae.associate("127.0.0.1", two_workers.dicom_port, ae_title="MUNIPACS") for _ in range(2)]
    try:
        assert all(a.is_established for a in assocs), two_workers.log_text()
        for _ in range(PER_ASSOCIATION):  # interleaved: both associations stay open throughout
            for assoc in assocs:
                assert assoc.send_c_store(f.ct_dataset()).Status == 0x0000
    finally:
        for assoc in assocs:
            assoc.release()

    pids = _released_pids(two_workers, 2)
    assert len(pids) == 2, two_workers.log_text()
    assert pids[0] != pids[1], f"both associations were served by pid {pids[0]}"
    assert os.getpid() not in pids
    assert _stored_total(two_workers) == 2 * PER_ASSOCIATION
