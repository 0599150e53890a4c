"""The audit trail's group commit under concurrency, both backends: callers that commit in their
own thread (`lead=True`: worker threads, SCP threads) and callers that hand off to the writer
thread (the event loop) at once; every record committed exactly once, the chain intact."""

from __future__ import annotations

import threading

from sqlalchemy import func, select, text

from storage.access.context import AccessEvent, Channel
from storage.archive import Archive
from storage.audit.records import verify_trail
from storage.audit.trail import AuditTrail, AuditUnavailable
from storage.index.models import AuditRecord

THREADS, EACH = 6, 40


def event(n: int) -> AccessEvent:
    return AccessEvent(
        actor=f"caller-{n}", org=None, channel=Channel.DICOMWEB, source="127.0.0.1", action="GET /x", outcome="ok"
    )


def test_leaders_and_hand_offs_at_once_commit_every_record_once_in_one_chain(archive: Archive) -> None:
    trail = AuditTrail(archive.db, owner="test")
    errors: list[BaseException] = []

    def caller(n: int) -> None:
        try:
            for k in range(EACH):
                if (n + k) % 3 == 0:
                    trail.submit(event(n), lead=False).result(timeout=30)  # the event loop's way
                else:
                    trail.record(event(n))  # commits in this thread when nobody else does
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trail.close()
    assert errors == []
    with archive.db.engine.connect() as conn:
        rows = conn.execute(select(AuditRecord.actor, func.count()).group_by(AuditRecord.actor)).all()
        seqs = conn.scalars(select(AuditRecord.seq).where(AuditRecord.chain == trail.chain)).all()
    assert dict(rows) == {f"caller-{n}": EACH for n in range(THREADS)}
    assert sorted(seqs) == list(range(1, THREADS * EACH + 1))
    result = verify_trail(archive.db)
    assert result.breaks == [] and result.records == THREADS * EACH


def test_a_closed_trail_refuses_at_once_and_a_lone_leader_needs_no_writer_thread(archive: Archive) -> None:
    trail = AuditTrail(archive.db, owner="test")
    trail.record(event(0))
    assert trail._thread is None  # committed by the caller itself
    trail.close()
    refused = trail.submit(event(1), lead=True)
    assert isinstance(refused.exception(timeout=1), AuditUnavailable)


def test_a_kept_connection_the_database_dropped_is_replaced_and_the_record_committed(archive: Archive) -> None:
    """The trail keeps one connection, which nothing pings: after a database restart the next
    record must still commit (seen in the topology test: the first C-STORE after PostgreSQL's
    restart was refused because its audit record failed on the dead connection)."""
    trail = AuditTrail(archive.db, owner="test")
    trail.record(event(0))
    kept = trail._conn
    assert kept is not None
    if archive.db.engine.dialect.name == "postgresql":  # what a restart does to every session
        with archive.db.engine.connect() as admin:
            pid = kept.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    else:  # SQLite has no server to restart: the driver's connection goes away under the trail
        kept.connection.dbapi_connection.close()  # type: ignore[union-attr]
    trail.record(event(1))
    trail.close()
    with archive.db.engine.connect() as conn:
        actors = conn.scalars(select(AuditRecord.actor).order_by(AuditRecord.seq)).all()
    assert actors == ["caller-0", "caller-1"]
    assert verify_trail(archive.db).breaks == []
