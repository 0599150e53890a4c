"""`pacs serve` as an orchestrator runs it: one service of two (`--only`), a start that waits for
its database, and a stop (SIGTERM, as `docker stop` and Kubernetes send) that lets the
associations in progress finish within the grace period and cuts them after it.

Real server subprocesses, pynetdicom as the modality, a real PostgreSQL reached through a relay
the test opens late (`tests.kit.net.TcpForwarder`).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.kit.net import TcpForwarder, free_port
from tests.kit.servers import ServerProcess, pacs_executable, start_server


def associate(server: ServerProcess) -> object:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="MUNIPACS")
    assert assoc.is_established
    return assoc


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_sigterm_lets_an_association_finish_and_takes_no_new_one(tmp_path: Path) -> None:
    server = start_server(tmp_path / "var", env={"PACS_SHUTDOWN_GRACE": "20"})
    try:
        assoc = associate(server)
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not refused(server.dicom_port):  # no new association from now on
            assert time.monotonic() < deadline, "the DICOM port still accepts after SIGTERM"
            time.sleep(0.1)
        assert assoc.send_c_echo().Status == 0x0000  # type: ignore[attr-defined]  # the one in progress goes on
        assert server.proc.poll() is None
        assoc.release()  # type: ignore[attr-defined]
        assert server.proc.wait(timeout=15) == 0
        log = server.log_text()
        assert "serve.stopping signal=SIGTERM" in log  # (the port probes above may count as associations too)
        assert re.search(r"dimse\.draining associations=[1-9]", log), log
        assert "dimse.drain.aborted" not in log
    finally:
        server.kill()


def test_an_association_still_open_after_the_grace_period_is_aborted(tmp_path: Path) -> None:
    server = start_server(tmp_path / "var", env={"PACS_SHUTDOWN_GRACE": "1"})
    try:
        assoc = associate(server)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
        assert "dimse.drain.aborted associations=1" in server.log_text()
        deadline = time.monotonic() + 5
        while assoc.is_alive():  # type: ignore[attr-defined]  # the peer sees the abort
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert assoc.is_aborted  # type: ignore[attr-defined]
    finally:
        server.kill()


def test_only_dicom_serves_the_probes_and_only_http_no_dicom(tmp_path: Path) -> None:
    dicom = start_server(tmp_path / "var", extra_args=["--only", "dicom"])
    http = start_server(tmp_path / "var", extra_args=["--only", "http"])
    try:
        assert httpx.get(f"{dicom.url}/readyz").json()["checks"] == {"database": "ok", "storage": "ok"}
        assert httpx.get(f"{dicom.url}/dicomweb/studies", headers=dicom.admin()).status_code == 404
        assert httpx.get(f"{dicom.url}/metrics").status_code == 401  # /metrics takes a token, as everywhere
        associate(dicom).release()  # type: ignore[attr-defined]
        assert httpx.get(f"{http.url}/dicomweb/studies", headers=http.admin()).status_code == 200
        assert refused(http.dicom_port)
        assert "DICOM  not served here (--only http)" in http.log_text()
    finally:
        dicom.kill()
        http.kill()


@pytest.mark.postgres
def test_start_up_waits_for_the_database_and_says_so(tmp_path: Path, fresh_pg_url: str) -> None:
    parts = urlsplit(fresh_pg_url)
    relay = TcpForwarder((parts.hostname or "127.0.0.1", parts.port or 5432))
    late = urlunsplit(parts._replace(netloc=re.sub(r"@[^/]+$", f"@127.0.0.1:{relay.port}", parts.netloc)))
    env = {"PACS_DATABASE_URL": late, "PACS_STARTUP_TIMEOUT": "60"}
    threading.Timer(3.0, relay.open).start()  # the database comes up 3 s after the archive
    server = start_server(tmp_path / "var", env=env, timeout=60)
    try:
        log = server.log_text()
        assert re.search(r"startup\.waiting component=database reason=\S+.* retry_in=0\.5", log), log
        assert httpx.get(f"{server.url}/readyz").status_code == 200
    finally:
        server.kill()
        relay.close()


def test_start_up_gives_up_after_its_timeout_naming_what_it_waited_for(tmp_path: Path) -> None:
    closed = f"postgresql+psycopg://pacs:pacs@127.0.0.1:{free_port()}/pacs"  # nothing listens there
    done = _run_serve(tmp_path, {"PACS_DATABASE_URL": closed, "PACS_STARTUP_TIMEOUT": "2"})
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "the database did not answer within 2 s" in said
    assert "startup.waiting component=database" in said
    assert "pacs:pacs" not in said  # no password in what it says


def _run_serve(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = [pacs_executable(), "serve", "--data-dir", str(tmp_path / "var")]
    args += ["--dicom-port", str(free_port()), "--http-port", str(free_port())]
    return subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False)
