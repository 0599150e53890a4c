"""`pacs serve --dicom-workers 2`: simultaneous associations are spread over the SCP processes.

A real server subprocess and two pynetdicom associations held open together; which process
served each association is read from the `dimse.assoc.released ... pid=` line it logs.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage

from tests import dicom_factory as f

PER_ASSOCIATION = 5


@dataclass
class Served:
    http: str
    dicom_port: int
    log: Path


def _pacs() -> str:
    here = Path(sys.executable).parent / "pacs"
    return str(here if here.exists() else "/tmp/pacs-venv/bin/pacs")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"pacs serve exited with {proc.returncode}:\n{log.read_text()}"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"pacs serve not ready after {timeout}s:\n{log.read_text()}")


@pytest.fixture()
def two_workers(tmp_path: Path) -> Iterator[Served]:
    dicom_port, http_port = _free_port(), _free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [
                _pacs(),
                "serve",
                "--dicom-workers",
                "2",
                "--data-dir",
                str(tmp_path / "var"),
                "--dicom-port",
                str(dicom_port),
                "--http-port",
                str(http_port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        served = Served(f"http://127.0.0.1:{http_port}", dicom_port, log)
        _wait_ready(proc, served.http, log)
        yield served
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _released_pids(log: Path, expected: int, timeout: float = 10) -> list[int]:
    """The pid of each `dimse.assoc.released` line, once `expected` of them are in the log."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [int(m) for m in re.findall(r"dimse\.assoc\.released .*?\bpid=(\d+)", log.read_text())]
        if len(pids) >= expected or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


def _stored_total(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return int(
        sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if re.match(r"pacs_instances_stored_total(\{|\s)", line)
        )
    )


def test_simultaneous_associations_go_to_different_workers(two_workers: Served) -> None:
    ae = AE(ae_title="WORKERTEST")
    ae.requested_contexts = [build_context(CTImageStorage)]
    assocs = [ae.associate("127.0.0.1", two_workers.dicom_port, ae_title="MUNIPACS") for _ in range(2)]
    try:
        assert all(a.is_established for a in assocs), two_workers.log.read_text()
        for _ in range(PER_ASSOCIATION):  # interleaved: both associations stay open throughout
            for assoc in assocs:
                assert assoc.send_c_store(f.ct_dataset()).Status == 0x0000
    finally:
        for assoc in assocs:
            assoc.release()

    pids = _released_pids(two_workers.log, 2)
    assert len(pids) == 2, two_workers.log.read_text()
    assert pids[0] != pids[1], f"both associations were served by pid {pids[0]}"
    assert os.getpid() not in pids
    assert _stored_total(two_workers.http) == 2 * PER_ASSOCIATION
