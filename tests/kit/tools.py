"""System tools the tests drive: found on PATH, else a skip naming the Debian package.

Under PACS_TEST_REQUIRE_ALL=1 (set by .ci/run) a missing tool fails the test instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REQUIRE_ALL = os.environ.get("PACS_TEST_REQUIRE_ALL") == "1"


def _find_tools() -> Path:
    if os.environ.get("PACS_TOOLS"):
        return Path(os.environ["PACS_TOOLS"])
    for d in Path(__file__).resolve().parents:
        if (d / "shared" / "tools" / "start-s3.sh").exists():
            return d / "shared" / "tools"
    return Path(__file__).parent


#: ../shared/tools: throwaway PostgreSQL and Ceph RGW without Docker
TOOLS = _find_tools()


def missing(what: str, package: str) -> None:
    """Skip for a tool missing on a laptop; fail under PACS_TEST_REQUIRE_ALL=1 (CI)."""
    msg = f"{what} is not available; install the Debian package {package}"
    if REQUIRE_ALL:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def require_tool(name: str, package: str = "dcmtk", *, python_script: bool = False) -> str:
    """The system's tool, never a Python namesake on PATH (unless the tool is itself a Python
    script, as Debian's docker-compose is: `python_script`).

    pynetdicom installs console scripts called `storescu`, `findscu`... in every venv it is
    installed in, and any such venv may come first on PATH (not only this test run's).
    """
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which(name, path=folder) if folder else None
        if path is not None and (python_script or not _is_python_script(path)):
            return path
    missing(name, package)
    raise AssertionError("unreachable")  # missing() skips or fails


def _is_python_script(path: str) -> bool:
    with open(path, "rb") as fh:
        first = fh.readline(200)
    return first.startswith(b"#!") and b"python" in first


def shared_tool(name: str, *args: object, package: str) -> str:
    """Run one of ../shared/tools' scripts; its standard output."""
    script = TOOLS / name
    if not script.exists():
        missing(f"{script}", package)
    r = subprocess.run(
        ["bash", str(script), *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if r.returncode != 0:
        missing(f"{name} (exit {r.returncode}: {r.stderr[-2000:]})", package)
    return r.stdout


def stop_shared(name: str, folder: str) -> None:
    """Stop and purge what a ../shared/tools start script started in `folder`."""
    subprocess.run(
        ["bash", str(TOOLS / name), "--dir", folder, "--purge"],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
