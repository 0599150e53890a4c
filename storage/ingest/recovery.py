"""Start-up recovery: finish off the writes a crashed process left half done.

A pending row names a blob no index row points at: one that was never acknowledged (the
commit that would have acknowledged it also deletes the row) or one a DELETE orphaned.
Recovery deletes that blob, if it exists at all, then the row. A received data set's row
outlives its index commit by the fsync of its folder (`storage.ingest.pipeline._settle`): a
row whose key is indexed keeps its instance when the blob is there, and takes the instance
out of the index when a power cut lost the blob. It reads the pending table,
never lists the bucket: cost follows the number of interrupted writes, not the size of the
archive.

Several processes may share one database; a row is only taken over when its writer is
surely gone: a dead pid on this host, or older than the grace period wherever it came from.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from storage.archive import Archive, owner_is_gone
from storage.index.models import Instance, PendingBlob
from storage.ingest.delete import remove_unbacked
from storage.logs import event

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    removed: int
    kept: int
    temp_files: int = 0


def _writer_is_gone(owner: str, created_at: datetime, *, grace: timedelta, now: datetime) -> bool:
    if created_at.tzinfo is None:  # SQLite returns naive datetimes
        created_at = created_at.replace(tzinfo=UTC)
    return now - created_at > grace or owner_is_gone(owner)


def recover(archive: Archive) -> RecoveryReport:
    """At start-up: the pending writes of processes that are gone, and their temporary files."""
    removed, kept = _remove_pending(archive)
    report = RecoveryReport(removed=removed, kept=kept, temp_files=clean_temp(archive))
    event(log, "recovery.done", removed=report.removed, kept=report.kept, temp_files=report.temp_files)
    return report


def sweep(archive: Archive) -> int:
    """While serving: the pending writes of processes that are gone or older than the grace
    period, which include those a failed write could not clean up itself while the database
    or the object store was away (`ingest.cleanup_deferred`); how many were removed.
    Temporary files are left to start-up: those of this process may be in use. First, the
    pending rows of this process's settled instances that no index commit has dropped since
    (`storage.index.settled`): no instance came after them."""
    archive.settled.flush(archive.db)
    removed, _kept = _remove_pending(archive)
    if removed:
        event(log, "recovery.swept", removed=removed)
    return removed


#: how often a serving process sweeps the pending writes
SWEEP_SECONDS = 300.0


class Sweeper:
    """`sweep` every `interval` seconds from a daemon thread of a serving process."""

    def __init__(self, archive: Archive, interval: float = SWEEP_SECONDS) -> None:
        self.archive = archive
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recovery-sweep", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                sweep(self.archive)
            except Exception as exc:  # noqa: BLE001 - the database may be away: the next round retries
                event(log, "recovery.sweep_failed", level=logging.WARNING, error=type(exc).__name__)


def _remove_pending(archive: Archive) -> tuple[int, int]:
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
        if _settled(archive, row_id, key, owner):
            removed += 1
            continue
        archive.blobs.delete(key)
        with archive.db.write() as session:
            session.execute(delete(PendingBlob).where(PendingBlob.id == row_id))
        removed += 1
        event(log, "recovery.removed", object_key=key, owner=owner)
    return removed, len(rows) - removed


def _settled(archive: Archive, row_id: int, key: str, owner: str) -> bool:
    """A pending row whose key the index already points at: a staged blob whose writer died
    between its index commit and dropping the row (`storage.ingest.pipeline._settle`). The
    instance stays if its blob is there; if a power cut lost the blob's name, the instance goes
    (it was never acknowledged). False for a key nothing indexes (the usual case)."""
    with archive.db.write_conn() as conn:
        if conn.scalar(select(Instance.id).where(Instance.object_key == key)) is None:
            return False
        if archive.blobs.exists(key):
            event(log, "recovery.settled", object_key=key, owner=owner)
        else:
            remove_unbacked(conn, key)
            event(log, "recovery.unbacked_removed", level=logging.WARNING, object_key=key, owner=owner)
        conn.execute(delete(PendingBlob).where(PendingBlob.id == row_id))
    return True


def clean_temp(archive: Archive) -> int:
    """Remove the temporary folders of processes that are gone, and this process's leftovers
    (a previous process of the same pid); the number of files removed.

    A folder is named after its process (`Archive.temp_dir`); another host's is left to it.
    """
    root = archive.settings.run_dir / "tmp"
    if not root.is_dir():
        return 0
    removed = 0
    for folder in root.iterdir():
        if folder.name != archive.owner and not owner_is_gone(folder.name):
            continue
        files = [p for p in folder.rglob("*") if p.is_file()]
        removed += len(files)
        shutil.rmtree(folder, ignore_errors=True)
        if files:
            event(log, "recovery.temp_removed", owner=folder.name, files=len(files))
    return removed
