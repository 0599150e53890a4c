"""Deleting a study or a series: the index first, in one transaction, then the blobs.

The order is the mirror image of ingest's. One transaction removes the instance, series and
(when nothing is left of it) study rows, brings the study's aggregates up to date, and
records every object key it orphans as a pending blob (`storage.index.models.PendingBlob`, the
same table ingest reserves keys in). Only after that commit are the blobs deleted, best
effort, each followed by its pending row. A crash or a blob store failure in between leaves
blobs without rows, never rows without blobs, and the pending rows let start-up recovery
(`storage.ingest.recovery`) finish the job without listing the bucket.

Patient identities stay: they are the patient index's memory of who a patient is at an
institution, and other studies or links may name them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, func, insert, select, update

from storage.access.context import Context
from storage.access.policy import require_admin, visible_to
from storage.archive import Archive
from storage.errors import NotFound
from storage.index.models import Instance, PendingBlob, Series, Study, utcnow
from storage.logs import event

log = logging.getLogger(__name__)

_BLOB_WORKERS = 8
_BATCH = 500


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """What a delete removed: index rows, and blobs (those that failed stay for recovery)."""

    studies: int
    series: int
    instances: int
    blobs_deleted: int
    blobs_failed: int


def delete_study(study_uid: str, ctx: Context, *, archive: Archive) -> DeleteResult:
    """Remove a study: its instances, series and study rows, then their blobs.

    Raises
    ------
    NotAuthorized
        `ctx` is not an admin.
    NotFound
        No such study among those `ctx` may see.
    """
    require_admin(ctx, "deleting a study")
    started = time.perf_counter()
    with archive.db.write_conn() as conn:
        study_id = _lock_study(conn, study_uid, ctx)
        n_series = int(conn.scalar(select(func.count(Series.id)).where(Series.study_id == study_id)) or 0)
        keys = _remove_instances(conn, Instance.study_id == study_id, archive.owner)
        conn.execute(delete(Series).where(Series.study_id == study_id))
        conn.execute(delete(Study).where(Study.id == study_id))
    result = _delete_blobs(archive, keys, studies=1, series=n_series)
    _log("delete.study", ctx, result, started, study_instance_uid=study_uid)
    return result


def delete_series(study_uid: str, series_uid: str, ctx: Context, *, archive: Archive) -> DeleteResult:
    """Remove one series of a study, then update the study's aggregates.

    PS3.18 defines no delete; this is the archive-management operation Google Healthcare and
    dcm4chee also offer. The study goes too when this was its last series: an empty study has nothing to show.

    Raises
    ------
    NotAuthorized
        `ctx` is not an admin.
    NotFound
        No such series in that study among those `ctx` may see.
    """
    require_admin(ctx, "deleting a series")
    started = time.perf_counter()
    with archive.db.write_conn() as conn:
        study_id = _lock_study(conn, study_uid, ctx)
        series_id = conn.scalar(select(Series.id).where(Series.series_uid == series_uid, Series.study_id == study_id))
        if series_id is None:
            raise NotFound(f"series {series_uid} not found in study {study_uid}")
        keys = _remove_instances(conn, Instance.series_id == series_id, archive.owner)
        conn.execute(delete(Series).where(Series.id == series_id))
        studies = _refresh_study(conn, study_id)
    result = _delete_blobs(archive, keys, studies=studies, series=1)
    _log("delete.series", ctx, result, started, study_instance_uid=study_uid, series_instance_uid=series_uid)
    return result


def _lock_study(conn: Connection, study_uid: str, ctx: Context) -> int:
    """The study's id, its row locked (PostgreSQL) until commit.

    The lock makes a concurrent ingest into the study wait (its instance insert takes a key
    share lock on the study row) and then fail on the foreign key, instead of committing an
    instance this transaction does not see. SQLite serializes writers already.
    """
    study_id = conn.scalar(select(Study.id).where(Study.study_uid == study_uid, visible_to(ctx)).with_for_update())
    if study_id is None:
        raise NotFound(f"study {study_uid} not found")
    return int(study_id)


def _remove_instances(conn: Connection, where: ColumnElement[bool], owner: str) -> list[str]:
    """Delete the instance rows matching `where`; record their keys as pending blobs."""
    keys = list(conn.scalars(select(Instance.object_key).where(where)))
    if keys:
        now = utcnow()
        conn.execute(insert(PendingBlob), [{"object_key": k, "owner": owner, "created_at": now} for k in keys])
        conn.execute(delete(Instance).where(where))
    return keys


def remove_unbacked(conn: Connection, key: str) -> bool:
    """Take out of the index the instance whose blob `key` is not in the store: a power cut
    between its index commit and its folder's fsync (`storage.ingest.pipeline._settle`) lost its
    name. It was never acknowledged. Its series and study counts follow, an emptied series or
    study goes. False when no instance has that key."""
    row = conn.execute(
        select(Instance.id, Instance.series_id, Instance.study_id).where(Instance.object_key == key)
    ).first()
    if row is None:
        return False
    conn.execute(delete(Instance).where(Instance.id == row.id))
    left = int(conn.scalar(select(func.count(Instance.id)).where(Instance.series_id == row.series_id)) or 0)
    if left:
        conn.execute(update(Series).where(Series.id == row.series_id).values(num_instances=left))
    else:
        conn.execute(delete(Series).where(Series.id == row.series_id))
    _refresh_study(conn, int(row.study_id))
    return True


def _refresh_study(conn: Connection, study_id: int) -> int:
    """Recompute the study's aggregates after a series went; delete it if it is empty.

    Returns the number of studies deleted (0 or 1).
    """
    modalities = conn.scalars(
        select(Series.modality).where(Series.study_id == study_id, Series.modality != "").distinct()
    ).all()
    n_series = int(conn.scalar(select(func.count(Series.id)).where(Series.study_id == study_id)) or 0)
    if n_series == 0:
        conn.execute(delete(Study).where(Study.id == study_id))
        return 1
    n_instances = int(conn.scalar(select(func.count(Instance.id)).where(Instance.study_id == study_id)) or 0)
    conn.execute(
        update(Study)
        .where(Study.id == study_id)
        .values(
            num_series=n_series,
            num_instances=n_instances,
            modalities="\\".join(sorted(set(modalities))),
            updated_at=utcnow(),
        )
    )
    return 0


def _delete_blobs(archive: Archive, keys: Sequence[str], *, studies: int, series: int) -> DeleteResult:
    """Delete the blobs (in parallel: S3 deletes are round trips), then their pending rows.

    A blob that cannot be deleted keeps its pending row, logged as `delete.blob_failed`, and
    start-up recovery retries it; deleting an already missing blob is not an error.
    """

    def one(key: str) -> str | None:
        try:
            archive.blobs.delete(key)
        except Exception as exc:  # noqa: BLE001 - best effort: recovery retries from the pending row
            event(log, "delete.blob_failed", level=logging.ERROR, object_key=key, error=repr(exc))
            return None
        return key

    with ThreadPoolExecutor(max_workers=max(1, min(_BLOB_WORKERS, len(keys)))) as pool:
        deleted = [k for k in pool.map(one, keys) if k is not None]
    try:
        with archive.db.write_conn(light=True) as conn:
            for i in range(0, len(deleted), _BATCH):
                conn.execute(delete(PendingBlob).where(PendingBlob.object_key.in_(deleted[i : i + _BATCH])))
    except Exception as exc:  # noqa: BLE001 - the rows only make recovery delete missing blobs again
        event(log, "delete.pending_cleanup_failed", level=logging.ERROR, keys=len(deleted), error=repr(exc))
    return DeleteResult(studies, series, len(keys), len(deleted), len(keys) - len(deleted))


def _log(name: str, ctx: Context, result: DeleteResult, started: float, **uids: str) -> None:
    fields: dict[str, Any] = {"sub": ctx.principal.sub, "org": ctx.principal.org, **uids}
    fields.update(
        series=result.series,
        instances=result.instances,
        blobs_failed=result.blobs_failed,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
    )
    event(log, name, **fields)
