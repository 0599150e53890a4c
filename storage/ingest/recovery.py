"""Start-up recovery: finish off the writes a crashed process left half done.

A pending row names a blob no index row points at: one that was never acknowledged (the
commit that would have acknowledged it also deletes the row) or one a DELETE orphaned.
Recovery deletes that blob, if it exists at all, then the row. It reads the pending table,
never lists the bucket: cost follows the number of interrupted writes, not the size of the
archive.

Several processes may share one database; a row is only taken over when its writer is
surely gone: a dead pid on this host, or older than the grace period wherever it came from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from storage.archive import Archive, owner_is_gone
from storage.index.models import PendingBlob
from storage.logs import event

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    removed: int
    kept: int


def _writer_is_gone(owner: str, created_at: datetime, *, grace: timedelta, now: datetime) -> bool:
    if created_at.tzinfo is None:  # SQLite returns naive datetimes
        created_at = created_at.replace(tzinfo=UTC)
    return now - created_at > grace or owner_is_gone(owner)


def recover(archive: Archive) -> RecoveryReport:
    grace = timedelta(seconds=archive.settings.recovery_grace_seconds)
    now = datetime.now(UTC)
    with archive.db.read() as session:
        rows = session.execute(
            select(PendingBlob.id, PendingBlob.object_key, PendingBlob.owner, PendingBlob.created_at)
        ).all()
    removed = 0
    for row_id, key, owner, created_at in rows:
        if not _writer_is_gone(owner, created_at, grace=grace, now=now):
            continue
        archive.blobs.delete(key)
        with archive.db.write() as session:
            session.execute(delete(PendingBlob).where(PendingBlob.id == row_id))
        removed += 1
        event(log, "recovery.removed", object_key=key, owner=owner)
    report = RecoveryReport(removed=removed, kept=len(rows) - removed)
    event(log, "recovery.done", removed=report.removed, kept=report.kept)
    return report
