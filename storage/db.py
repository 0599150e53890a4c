"""Engine and sessions: one engine per process, SQLite tuned for a concurrent archive.

SQLite runs in WAL mode (readers never block the writer) with `synchronous=FULL`, so a
committed instance survives a power cut, not only a killed process. Write transactions start
with `BEGIN IMMEDIATE`: a deferred transaction that reads then writes can fail at once with
"database is locked" when another writer got in between, instead of waiting its turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

WRITE_OPTION = "pacs_write"


def make_engine(url: str, *, pool_size: int = 16, light: bool = False) -> Engine:
    """An engine; `light=True` makes SQLite commits skip the WAL fsync (see `Database`)."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": 60, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        _configure_sqlite(engine, synchronous="NORMAL" if light else "FULL")
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _configure_sqlite(engine: Engine, *, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not pysqlite, decide when a transaction begins.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")


@dataclass
class Database:
    """The engine and the two session factories a process uses."""

    engine: Engine
    reader: sessionmaker[Session]
    writer: sessionmaker[Session]
    write_engine: Engine
    light_engine: Engine

    @classmethod
    def connect(cls, url: str, *, pool_size: int = 16) -> Database:
        engine = make_engine(url, pool_size=pool_size)
        write_engine = engine.execution_options(**{WRITE_OPTION: True})
        # On SQLite, light commits use their own small pool whose connections skip the WAL
        # fsync; elsewhere the durable engine serves them too.
        light = make_engine(url, pool_size=4, light=True) if url.startswith("sqlite") else engine
        return cls(
            engine=engine,
            reader=sessionmaker(engine, expire_on_commit=False),
            writer=sessionmaker(write_engine, expire_on_commit=False),
            write_engine=write_engine,
            light_engine=light.execution_options(**{WRITE_OPTION: True}),
        )

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: commits on success, rolls back on error."""
        with self.writer.begin() as session:
            yield session

    @contextmanager
    def write_conn(self, *, light: bool = False) -> Iterator[Connection]:
        """A Core write transaction, for the ingest hot path (no ORM unit of work).

        `light=True` is for rows whose loss in a power cut is harmless: SQLite then skips
        the WAL fsync at commit (still safe against a killed process).
        """
        with (self.light_engine if light else self.write_engine).begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.reader() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
        self.light_engine.dispose()
