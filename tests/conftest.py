"""Shared fixtures: real PostgreSQL and S3 once per session, settings and an archive per backend.

Servers start once per session (PostgreSQL, Ceph RGW); each test gets a fresh database in
that cluster and a fresh bucket, or a fresh data dir for SQLite + filesystem. What the
fixtures are built from lives in `tests/kit/`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from storage.archive import Archive
from storage.settings import Settings
from tests.kit.backends import BACKENDS, make_settings, migrated_archive
from tests.kit.databases import new_database
from tests.kit.net import free_port_pair
from tests.kit.tools import shared_tool, stop_shared


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Admin URL of a real PostgreSQL cluster (from .ci/run, or started for this session)."""
    if os.environ.get("PACS_TEST_DATABASE_URL"):
        yield os.environ["PACS_TEST_DATABASE_URL"]
        return
    folder = f"/tmp/pacs-pg-{os.getpid()}"
    url = shared_tool("start-postgres.sh", "--dir", folder, "--port", free_port_pair(), package="postgresql").strip()
    try:
        yield url
    finally:
        stop_shared("stop-postgres.sh", folder)


@pytest.fixture(scope="session")
def s3_settings() -> Iterator[dict[str, str]]:
    """Endpoint and keys of a real S3 server (Ceph RGW, from .ci/run or started for this session)."""
    keys = ("S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY")
    if os.environ.get("S3_ENDPOINT"):
        yield {k: os.environ[k] for k in keys}
        return
    folder = f"/tmp/pacs-s3-{os.getpid()}"
    out = shared_tool("start-s3.sh", "--dir", folder, "--port", free_port_pair(), package="radosgw")
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    try:
        yield {k: env[k] for k in keys}
    finally:
        stop_shared("stop-s3.sh", folder)


@pytest.fixture()
def fresh_pg_url(postgres_url: str) -> Iterator[str]:
    """A new, empty database in the session's cluster, dropped after the test."""
    url, drop = new_database(postgres_url)
    try:
        yield url
    finally:
        drop()


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for each backend pair the archive supports: SQLite + folder, PostgreSQL + S3."""
    return make_settings(request, tmp_path, request.param)


@pytest.fixture()
def archive(settings: Settings) -> Iterator[Archive]:
    """The storage services over a migrated, empty index, per backend."""
    with migrated_archive(settings) as arch:
        yield arch


@pytest.fixture()
def session(archive: Archive) -> Iterator[Session]:
    """A session inside an outer transaction rolled back after the test (STYLE rule 20): what a
    storage function writes through it is seen by the test and by nobody after it."""
    with archive.db.engine.connect() as conn:
        outer = conn.begin()
        s = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield s
        finally:
            s.close()
            outer.rollback()
