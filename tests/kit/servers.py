"""`pacs serve` as a real subprocess, for tests that need the whole server (or to kill it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.kit.net import free_port


def pacs_executable() -> str:
    candidate = Path(sys.executable).parent / "pacs"
    return str(candidate) if candidate.exists() else "pacs"


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    dicom_port: int
    http_port: int
    log: Path
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (workers included), as an operator would."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def admin(self) -> dict[str, str]:
        """Headers with the admin token `pacs serve` wrote into its data dir."""
        return {"Authorization": f"Bearer {(self.data_dir / 'admin-token').read_text().strip()}"}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    data_dir: Path, *, extra_args: list[str] | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> ServerProcess:
    dicom_port, http_port = free_port(), free_port()
    log = data_dir.parent / f"serve-{dicom_port}.log"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "wb")  # noqa: SIM115 - the child writes it for its whole life
    proc = subprocess.Popen(
        [
            pacs_executable(),
            "serve",
            "--data-dir",
            str(data_dir),
            "--dicom-port",
            str(dicom_port),
            "--http-port",
            str(http_port),
            *(extra_args or []),
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    server = ServerProcess(proc, dicom_port, http_port, log, data_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pacs serve exited with {proc.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"pacs serve not ready after {timeout}s:\n{server.log_text()}")
