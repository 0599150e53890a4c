"""Shared fixtures: settings per backend, real PostgreSQL and S3, the SCP on an ephemeral port.

Servers start once per session (PostgreSQL, Ceph RGW); each test gets a fresh database in
that cluster and a fresh bucket, or a fresh data dir for SQLite + filesystem.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from storage.archive import Archive
from storage.index.migrate import upgrade
from storage.settings import Settings

REQUIRE_ALL = os.environ.get("PACS_TEST_REQUIRE_ALL") == "1"


def _find_tools() -> Path:
    if os.environ.get("PACS_TOOLS"):
        return Path(os.environ["PACS_TOOLS"])
    for d in Path(__file__).resolve().parents:
        if (d / "shared" / "tools" / "start-s3.sh").exists():
            return d / "shared" / "tools"
    return Path(__file__).parent


TOOLS = _find_tools()


def missing(what: str, package: str) -> None:
    """Skip for a tool missing on a laptop; fail under PACS_TEST_REQUIRE_ALL=1 (CI)."""
    msg = f"{what} is not available; install the Debian package {package}"
    if REQUIRE_ALL:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def require_tool(name: str, package: str = "dcmtk") -> str:
    """The system's tool, never a Python namesake on PATH.

    pynetdicom installs console scripts called `storescu`, `findscu`... in every venv it is
    installed in, and any such venv may come first on PATH (not only this test run's).
    """
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which(name, path=folder) if folder else None
        if path is not None and not _is_python_script(path):
            return path
    missing(name, package)
    raise AssertionError("unreachable")  # missing() skips or fails


def _is_python_script(path: str) -> bool:
    with open(path, "rb") as fh:
        first = fh.readline(200)
    return first.startswith(b"#!") and b"python" in first


def _free_port_pair() -> int:
    import socket

    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = int(s.getsockname()[1])
        if p >= 65534:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise RuntimeError("no free port pair on 127.0.0.1")


def _tool(name: str, *args: object, package: str) -> str:
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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Admin URL of a real PostgreSQL cluster (from .ci/run, or started for this session)."""
    if os.environ.get("PACS_TEST_DATABASE_URL"):
        yield os.environ["PACS_TEST_DATABASE_URL"]
        return
    d = f"/tmp/pacs-pg-{os.getpid()}"
    url = _tool("start-postgres.sh", "--dir", d, "--port", _free_port_pair(), package="postgresql").strip()
    try:
        yield url
    finally:
        subprocess.run(
            ["bash", str(TOOLS / "stop-postgres.sh"), "--dir", d, "--purge"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


@pytest.fixture(scope="session")
def s3_settings() -> Iterator[dict[str, str]]:
    keys = ("S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY")
    if os.environ.get("S3_ENDPOINT"):
        yield {k: os.environ[k] for k in keys}
        return
    d = f"/tmp/pacs-s3-{os.getpid()}"
    out = _tool("start-s3.sh", "--dir", d, "--port", _free_port_pair(), package="radosgw")
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    try:
        yield {k: env[k] for k in keys}
    finally:
        subprocess.run(
            ["bash", str(TOOLS / "stop-s3.sh"), "--dir", d, "--purge"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


@pytest.fixture()
def fresh_pg_url(postgres_url: str) -> Iterator[str]:
    """A new, empty database in the session's cluster, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def s3_storage_url(s3: dict[str, str]) -> str:
    return f"s3://pacs-{uuid.uuid4().hex[:12]}?endpoint={s3['S3_ENDPOINT']}&region=us-east-1"


BACKENDS = ["sqlite-fs", pytest.param("postgres-s3", marks=[pytest.mark.postgres, pytest.mark.s3])]


def make_settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, **extra: object) -> Settings:
    if backend == "sqlite-fs":
        return Settings(data_dir=tmp_path / "var", dicom_port=0, http_port=0, **extra)  # type: ignore[arg-type]
    db = request.getfixturevalue("fresh_pg_url")
    s3 = request.getfixturevalue("s3_settings")
    return Settings(  # type: ignore[arg-type]
        data_dir=tmp_path / "var",
        dicom_port=0,
        http_port=0,
        database_url=db,
        storage_url=s3_storage_url(s3),
        s3_access_key=s3["S3_ACCESS_KEY"],
        s3_secret_key=s3["S3_SECRET_KEY"],
        **extra,
    )


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for each backend pair the archive supports: SQLite + folder, PostgreSQL + S3."""
    return make_settings(request, tmp_path, request.param)


@pytest.fixture()
def archive(settings: Settings) -> Iterator[Archive]:
    arch = Archive.open(settings)
    upgrade(arch.db.engine)
    try:
        yield arch
    finally:
        arch.close()


def module_settings(request: pytest.FixtureRequest, tmp: Path) -> tuple[Settings, Callable[[], None]]:
    """Settings for one backend pair that live as long as a module, and how to clean up.

    For test modules that only search: they share one database per backend instead of one per
    test, so their archive is stored once (STYLE rule 20 allows a database per session).
    """
    if request.param == "sqlite-fs":
        return Settings(data_dir=tmp / "var", dicom_port=0, http_port=0), lambda: None  # type: ignore[call-arg]
    admin_url, s3 = request.getfixturevalue("postgres_url"), request.getfixturevalue("s3_settings")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp / "var",
        dicom_port=0,
        http_port=0,
        database_url=make_url(admin_url).set(database=name).render_as_string(hide_password=False),
        storage_url=s3_storage_url(s3),
        s3_access_key=s3["S3_ACCESS_KEY"],
        s3_secret_key=s3["S3_SECRET_KEY"],
    )
    return settings, drop
