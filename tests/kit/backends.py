"""The two backend pairs every storage path is tested on: SQLite + a folder, PostgreSQL + S3."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from storage.archive import Archive
from storage.index.migrate import upgrade
from storage.settings import Settings
from tests.kit.databases import new_database

BACKENDS = ["sqlite-fs", pytest.param("postgres-s3", marks=[pytest.mark.postgres, pytest.mark.s3])]


def s3_storage_url(s3: dict[str, str]) -> str:
    """A fresh bucket on the session's S3 server (created by the archive on first use)."""
    return f"s3://pacs-{uuid.uuid4().hex[:12]}?endpoint={s3['S3_ENDPOINT']}&region=us-east-1"


def settings_for(
    data_dir: Path, *, database_url: str = "", s3: dict[str, str] | None = None, **extra: object
) -> Settings:
    """Settings on ephemeral ports; PostgreSQL + S3 when both are given, else SQLite + folder."""
    if s3 is None:
        return Settings(data_dir=data_dir, dicom_port=0, http_port=0, **extra)  # type: ignore[arg-type]
    return Settings(  # type: ignore[arg-type]
        data_dir=data_dir,
        dicom_port=0,
        http_port=0,
        database_url=database_url,
        storage_url=s3_storage_url(s3),
        s3_access_key=s3["S3_ACCESS_KEY"],
        s3_secret_key=s3["S3_SECRET_KEY"],
        **extra,
    )


def make_settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, **extra: object) -> Settings:
    """Settings of one backend pair for one test (a fresh database and bucket for PostgreSQL + S3)."""
    if backend == "sqlite-fs":
        return settings_for(tmp_path / "var", **extra)
    db = request.getfixturevalue("fresh_pg_url")
    return settings_for(tmp_path / "var", database_url=db, s3=request.getfixturevalue("s3_settings"), **extra)


def module_settings(request: pytest.FixtureRequest, tmp: Path, **extra: object) -> tuple[Settings, Callable[[], None]]:
    """Settings for one backend pair that live as long as a module, and how to clean up.

    For test modules that only search: they share one database per backend instead of one per
    test, so their archive is stored once (STYLE rule 20 allows a database per session).
    """
    if request.param == "sqlite-fs":
        return settings_for(tmp / "var", **extra), lambda: None
    url, drop = new_database(request.getfixturevalue("postgres_url"))
    s3 = request.getfixturevalue("s3_settings")
    return settings_for(tmp / "var", database_url=url, s3=s3, **extra), drop


@contextmanager
def migrated_archive(settings: Settings) -> Iterator[Archive]:
    """The archive of `settings` over a migrated index, closed after."""
    archive = Archive.open(settings)
    try:
        upgrade(archive.db.engine)
        yield archive
    finally:
        archive.close()


@contextmanager
def module_archive(request: pytest.FixtureRequest, tmp: Path, **extra: object) -> Iterator[tuple[Settings, Archive]]:
    """A migrated archive of one backend pair for a module's tests, closed and dropped after."""
    settings, drop = module_settings(request, tmp, **extra)
    try:
        with migrated_archive(settings) as archive:
            yield settings, archive
    finally:
        drop()


def serve_env(request: pytest.FixtureRequest, backend: str) -> tuple[dict[str, str], Callable[[], None]]:
    """The environment a `pacs serve` child process needs for a backend pair (none for SQLite +
    folder; a fresh database and bucket for PostgreSQL + S3), and how to drop them afterwards."""
    if backend == "sqlite-fs":
        return {}, lambda: None
    url, drop = new_database(request.getfixturevalue("postgres_url"))
    s3 = request.getfixturevalue("s3_settings")
    env = {
        "PACS_DATABASE_URL": url,
        "PACS_STORAGE_URL": s3_storage_url(s3),
        "PACS_S3_ACCESS_KEY": s3["S3_ACCESS_KEY"],
        "PACS_S3_SECRET_KEY": s3["S3_SECRET_KEY"],
    }
    return env, drop


def settings_of_env(data_dir: Path, env: dict[str, str]) -> Settings:
    """The settings a `pacs serve` started with `serve_env`'s environment runs with."""
    return Settings(data_dir=data_dir, **{k.removeprefix("PACS_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]
