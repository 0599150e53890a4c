"""An acknowledged instance is never lost: kill -9 the server while storescu sends, restart.

This is the durability rule of DESIGN.md "Ingest rules" checked end to end with real parts:
dcmtk's storescu as the modality, `pacs serve` as a separate process killed with SIGKILL
(the whole process group) mid-transfer, then started again on the same data dir.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from sqlalchemy import select

from storage.archive import Archive
from storage.index.models import Instance
from tests.kit import dicom_factory as f
from tests.kit.backends import BACKENDS, serve_env, settings_of_env
from tests.kit.inspect import blob_keys, row_counts
from tests.kit.servers import start_server
from tests.kit.tools import require_tool

N = 200
KILL_AFTER = 70


def _send_until_killed(storescu: str, folder: Path, server) -> set[str]:
    """Run storescu over `folder`; SIGKILL the server after KILL_AFTER acknowledgements.

    Returns the files storescu saw acknowledged with a success status.
    """
    proc = subprocess.Popen(
        [
            storescu,
            "-v",
            "-aet",
            "MODALITY",
            "-aec",
            "MUNIPACS",
            "+sd",
            "127.0.0.1",
            str(server.dicom_port),
            str(folder),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    acked: set[str] = set()
    current = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.match(r"I: Sending file: (.+)$", line.strip()):
            current = m.group(1)
        elif "Received Store Response (Success)" in line and current:
            acked.add(current)
            if len(acked) == KILL_AFTER:
                time.sleep(0.003)  # into the next instance's receive or ingest
                server.kill()
    proc.wait(timeout=60)
    return acked


@pytest.fixture(params=BACKENDS)
def backend_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    env, drop = serve_env(request, request.param)
    try:
        yield env
    finally:
        drop()


def test_kill_9_during_storescu_loses_no_acknowledged_instance(tmp_path: Path, backend_env: dict[str, str]) -> None:
    """On both backends, through the direct C-STORE receive path (the default, `pacs.wire.direct_store`)."""
    storescu = require_tool("storescu")
    folder = tmp_path / "study"
    files = f.study_files(folder, n=N, rows=256, columns=256)
    data_dir = tmp_path / "var"
    settings = settings_of_env(data_dir, backend_env)

    server = start_server(data_dir, env=backend_env)
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert "pacs_instances_stored" in httpx.get(f"{server.url}/metrics", headers=server.admin()).text
    acked = _send_until_killed(storescu, folder, server)
    assert KILL_AFTER <= len(acked) < N, "the kill must land mid-transfer"

    server = start_server(data_dir, env=backend_env)  # start-up recovery runs before the SCP listens
    try:
        log = server.log_text()
        assert "recovery.done" in log
        # the data set storescu was sending when the kill landed is not left behind
        assert [p for p in (data_dir / "run" / "tmp").rglob("*") if p.is_file()] == []
        archive = Archive.open(settings)
        try:
            with archive.db.read() as s:
                indexed = dict(s.execute(select(Instance.sop_uid, Instance.object_key)).all())
            by_sop = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
            acked_sops = {sop for sop, p in by_sop.items() if str(p) in acked}
            assert acked_sops <= set(indexed), "an acknowledged instance was lost"
            for sop, key in indexed.items():  # every indexed instance is whole and readable
                with archive.blobs.open(key) as blob:
                    back = pydicom.dcmread(DicomBytesIO(blob.read()))
                assert back == pydicom.dcmread(by_sop[sop])
            counts = row_counts(archive)
            assert counts["pending_blobs"] == 0
            assert len(blob_keys(archive)) == counts["instances"]  # no orphan or half-written blob
        finally:
            archive.close()

        # the modality sends the whole study again: everything ends up stored exactly once
        r = subprocess.run(
            [storescu, "-aet", "MODALITY", "-aec", "MUNIPACS", "+sd", "127.0.0.1", str(server.dicom_port), str(folder)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        assert r.returncode == 0, r.stdout + r.stderr
        # the association's line is written once the release is answered: storescu may have exited first
        released = rf"dimse\.assoc\.released .*direct={N} "
        deadline = time.monotonic() + 10
        while not re.search(released, server.log_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert re.search(released, server.log_text()), "the direct path answered"
        metrics = httpx.get(f"{server.url}/metrics", headers=server.admin()).text
        assert re.search(r'pacs_instances_already_present_total\{via="dimse"\} (\d+)', metrics)
        deadline = time.monotonic() + 10
        archive = Archive.open(settings)
        try:
            while row_counts(archive)["instances"] < N and time.monotonic() < deadline:
                time.sleep(0.1)
            assert row_counts(archive)["instances"] == N
        finally:
            archive.close()
    finally:
        server.kill()
