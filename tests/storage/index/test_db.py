"""Read sessions of `storage.index.db.Database`, on both backends.

A per-statement read (what QIDO-RS searches use) runs without a transaction on PostgreSQL, so
it costs no BEGIN and no ROLLBACK, and the statements it repeats get prepared; the mode must not
leak into the pooled connection that a transactional read or a write gets next. On SQLite it
stays one read transaction.
"""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from storage.archive import Archive
from storage.index.db import TEXT_AS_BYTES
from storage.index.models import Study


def _dbapi(session: Session) -> object:
    return session.connection().connection.dbapi_connection


def _postgres(archive: Archive) -> bool:
    return archive.db.engine.dialect.name == "postgresql"


def test_a_per_statement_read_has_no_transaction_on_postgresql_only(archive: Archive) -> None:
    with archive.db.read(per_statement=True) as session:
        assert session.execute(select(Study.id)).all() == []
        dbapi = _dbapi(session)
        if _postgres(archive):
            assert dbapi.autocommit is True  # type: ignore[attr-defined]
        else:
            assert dbapi.in_transaction is True  # type: ignore[attr-defined]


def test_the_mode_does_not_leak_into_the_pool(archive: Archive) -> None:
    archive.db.engine.dispose()  # one pooled connection from here on: the next sessions share it
    with archive.db.read(per_statement=True) as session:
        first = _dbapi(session)
    with archive.db.read() as session:
        assert _dbapi(session) is first
        if _postgres(archive):
            assert first.autocommit is False  # type: ignore[attr-defined]
        assert session.connection().in_transaction()
    with archive.db.write() as session:
        session.execute(select(Study.id))
        assert session.connection().in_transaction()


def test_statements_repeated_across_per_statement_reads_get_prepared(archive: Archive) -> None:
    if not _postgres(archive):
        return  # SQLite keeps its statements compiled in the driver's own cache
    archive.db.engine.dispose()
    stmt = select(Study.id).where(Study.study_uid == "1.2.3")
    for _ in range(8):  # psycopg prepares a statement at its sixth run on a connection
        with archive.db.read(per_statement=True) as session:
            assert session.execute(stmt).all() == []
    with archive.db.read(per_statement=True) as session:
        prepared = session.scalars(text("SELECT statement FROM pg_prepared_statements")).all()
    assert any("FROM studies" in statement for statement in prepared)


def test_text_as_bytes_is_per_statement_and_postgresql_only(archive: Archive) -> None:
    stmt = select(text("'ș{}'::text" if _postgres(archive) else "'ș{}'"))
    with archive.db.read(per_statement=True) as session:
        raw = session.scalar(stmt.execution_options(**{TEXT_AS_BYTES: True}))
        assert raw == ("ș{}".encode() if _postgres(archive) else "ș{}")
        assert session.scalar(stmt) == "ș{}"  # the next statement, on the same connection
