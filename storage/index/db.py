"""Engine and sessions: one engine per process, SQLite tuned for a concurrent archive.

SQLite runs in WAL mode (readers never block the writer) with `synchronous=FULL`, so a
committed instance survives a power cut, not only a killed process. Write transactions start
with `BEGIN IMMEDIATE`: a deferred transaction that reads then writes can fail at once with
"database is locked" when another writer got in between, instead of waiting its turn.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.adapt import Buffer, Loader
from sqlalchemy import Connection, DateTime, Engine, create_engine, event, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql import expression

from storage.index.models import Base

WRITE_OPTION = "pacs_write"
#: execution option: `text` columns come back as their UTF-8 bytes on PostgreSQL (a UTF-8
#: connection, as psycopg's are by default); they stay str on SQLite, so readers take both
TEXT_AS_BYTES = "pacs_text_as_bytes"


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
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    event.listen(engine, "before_cursor_execute", _text_as_bytes)
    return engine


class _Utf8Bytes(Loader):
    """A `text` value as the bytes the server sent, on a connection whose encoding is UTF-8."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


def _text_as_bytes(
    _conn: Connection, cursor: Any, _statement: str, _parameters: Any, context: Any, _executemany: bool
) -> None:
    """Honour TEXT_AS_BYTES for one statement, on its cursor only (psycopg's per-cursor adapters).

    An answer spliced from stored JSON text (a page of QIDO-RS studies) is written out as UTF-8
    again: decoding it to str, only to encode it back, cost more than the splicing itself.
    """
    if (
        context is not None
        and context.execution_options.get(TEXT_AS_BYTES)
        and cursor.connection.info.encoding == "utf-8"
    ):
        cursor.adapters.register_loader("text", _Utf8Bytes)


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
    def _on_begin(conn: Connection) -> None:
        # Straight to pysqlite: through `exec_driver_sql` this one statement cost 6 % of the
        # SCP's CPU per received instance (SQLAlchemy's execution context and events around
        # a statement that has no parameters and no result).
        sql = "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN"
        try:
            conn.connection.dbapi_connection.execute(sql)  # type: ignore[union-attr]
        except sqlite3.Error as exc:
            # raised as SQLAlchemy raises it (wrapped, the connection invalidated if dead), by its
            # own handler: private, unchanged through the pinned 2.0 and 2.1, and
            # tests/storage/audit/test_trail.py fails if that stops being so
            conn._handle_dbapi_exception(exc, sql, None, None, None)


@dataclass
class Database:
    """The engine and the two session factories a process uses."""

    engine: Engine
    reader: sessionmaker[Session]
    statement_reader: sessionmaker[Session]
    writer: sessionmaker[Session]
    write_engine: Engine
    light_engine: Engine
    #: one statement, no transaction around it (PostgreSQL: autocommit, no BEGIN and ROLLBACK
    #: round trips): the checks every request and association makes
    statement_engine: Engine

    @classmethod
    def connect(cls, url: str, *, pool_size: int = 16) -> Database:
        engine = make_engine(url, pool_size=pool_size)
        write_engine = engine.execution_options(**{WRITE_OPTION: True})
        # On SQLite, light commits use their own small pool whose connections skip the WAL
        # fsync; elsewhere the durable engine serves them too.
        sqlite = url.startswith("sqlite")
        light = make_engine(url, pool_size=4, light=True) if sqlite else engine
        each = engine if sqlite else engine.execution_options(isolation_level="AUTOCOMMIT")
        return cls(
            engine=engine,
            reader=sessionmaker(engine, expire_on_commit=False),
            statement_reader=sessionmaker(each, expire_on_commit=False),
            writer=sessionmaker(write_engine, expire_on_commit=False),
            write_engine=write_engine,
            light_engine=light.execution_options(**{WRITE_OPTION: True}),
            statement_engine=each,
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
    def read(self, *, per_statement: bool = False) -> Iterator[Session]:
        """A read-only session; `per_statement=True` for reads that need no common transaction.

        On PostgreSQL a per-statement session runs in autocommit: under READ COMMITTED every
        statement takes its own snapshot anyway, so a search sees the same thing, without the
        BEGIN and ROLLBACK round trips of a transaction. And since psycopg forgets its prepared
        statements at every ROLLBACK, only such a session lets a statement run often (a QIDO
        search) get prepared: no parse on the server, and no planning once PostgreSQL settles
        on a generic plan (it keeps custom plans where those are much cheaper, as for a name
        pattern). Not for a server-side cursor (`yield_per`), which needs a transaction. SQLite
        keeps its read transaction, the one snapshot of its statements, which costs no round
        trip.
        """
        with (self.statement_reader if per_statement else self.reader)() as session:
            yield session

    def check(self) -> None:
        """Raise if the database cannot be reached (readiness probe)."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
        self.light_engine.dispose()


def dialect_insert(dialect: str, model: type[Base]) -> Any:
    """An INSERT into `model` in `dialect`'s own form (PostgreSQL's or SQLite's), the one that
    has `on_conflict_do_nothing` and `on_conflict_do_update`; both backends are all there is."""
    return pg_insert(model) if dialect == "postgresql" else sqlite_insert(model)


def insert_or_get(conn: Connection, model: type[Base], key: dict[str, Any], values: dict[str, Any]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING, then the id of whichever row holds `key`.

    Two associations storing the first instances of one study race here; the conflict clause
    lets both proceed without an error and both end up on the same row.
    """
    return insert_or_get_new(conn, model, key, values)[0]


def insert_or_get_new(
    conn: Connection, model: type[Base], key: dict[str, Any], values: dict[str, Any]
) -> tuple[int, bool]:
    """`insert_or_get`, and whether this call created the row (the one caller that did)."""
    ins = dialect_insert(conn.dialect.name, model)
    table = model.__table__
    new_id = conn.scalar(
        ins.values(**key, **values).on_conflict_do_nothing(index_elements=list(key)).returning(table.c.id)
    )
    if new_id is not None:
        return int(new_id), True
    return int(conn.execute(select(table.c.id).filter_by(**key)).scalar_one()), False


def redacted(url: str) -> str:
    """A database URL as it may be shown: without its password."""
    return make_url(url).render_as_string(hide_password=True)


class db_now(expression.FunctionElement[datetime]):  # noqa: N801 - used as SQL's now(), lower case
    """The database's clock, comparable with stored times to the millisecond on every backend.

    SQLite's CURRENT_TIMESTAMP has whole seconds and sorts before any stored time of the same
    second ('... 10:00:05' < '... 10:00:05.7'), so an expiry would last up to a second longer;
    `strftime('%Y-%m-%d %H:%M:%f', 'now')` has milliseconds in the stored text's form.
    """

    type = DateTime(timezone=True)
    inherit_cache = True


@compiles(db_now)
def _now_default(_element: db_now, _compiler: Any, **_kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(db_now, "sqlite")
def _now_sqlite(_element: db_now, _compiler: Any, **_kw: Any) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"
