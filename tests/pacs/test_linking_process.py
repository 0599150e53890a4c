"""`pacs serve` links in a process of its own: what ingest queues is linked within seconds, and
the linker process does not outlive its server, even one killed without stopping it."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
from pathlib import Path

from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage

from tests.kit import dicom_factory as f
from tests.kit.servers import start_server


def _linked(index: Path) -> int:
    with sqlite3.connect(index) as db:
        return int(db.execute("SELECT count(*) FROM patient_identities WHERE person_id IS NOT NULL").fetchone()[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_the_linker_process_links_what_ingest_queues_and_dies_with_its_server(tmp_path: Path) -> None:
    server = start_server(tmp_path / "var", env={"PACS_MPI_INTERVAL": "0.2"})
    try:
        ae = AE(ae_title="LINKTEST")
        ae.requested_contexts = [build_context(CTImageStorage)]
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="MUNIPACS")
        assert assoc.is_established, server.log_text()
        for patient in ("L-1", "L-2"):
            assert assoc.send_c_store(f.ct_dataset(patient_id=patient)).Status == 0x0000
        assoc.release()
        deadline = time.monotonic() + 20
        while _linked(server.data_dir / "index.db") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _linked(server.data_dir / "index.db") == 2, server.log_text()
        started = re.search(r"mpi\.linker\.started .*?\bpid=(\d+)", server.log_text())
        assert started is not None, server.log_text()
        linker = int(started.group(1))
        assert linker != server.proc.pid and _alive(linker)
        os.kill(server.proc.pid, signal.SIGKILL)  # the server alone, as a crash would
        server.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(linker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(linker)
    finally:
        server.kill()
