"""Inspection helpers: what the archive holds, seen from outside the code under test."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import func, select

from storage.archive import Archive
from storage.blobs.fs import FileBlobStore
from storage.index.models import Instance, PatientIdentity, PendingBlob, Series, Study


def row_counts(archive: Archive) -> dict[str, int]:
    """Rows per table; pending rows without `archive`'s own bookkeeping, which no request left:
    those of keys it reserved ahead and has not used (`storage.index.reserved`), and those of
    settled instances it drops with its next commit (`storage.index.settled`)."""
    own = own_pending(archive)
    with archive.db.read() as s:
        counts = {
            m.__tablename__: int(s.scalar(select(func.count()).select_from(m)) or 0)
            for m in (PatientIdentity, Study, Series, Instance)
        }
        pending = s.scalars(select(PendingBlob.object_key)).all()
    counts[PendingBlob.__tablename__] = sum(1 for key in pending if key not in own)
    return counts


def own_pending(archive: Archive) -> set[str]:
    """The object keys of the pending rows `archive`'s process keeps for itself (`row_counts`)."""
    return archive.reserved.unused() | archive.settled.waiting()


def blob_keys(archive: Archive) -> set[str]:
    """Every object in the blob store, temp files included (a leak is a leak)."""
    blobs = archive.blobs
    if isinstance(blobs, FileBlobStore):
        root = blobs.root
        return {str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files}
    client, bucket, prefix = blobs.client, blobs.bucket, blobs.prefix  # type: ignore[attr-defined]
    return {o.object_name[len(prefix) :] for o in client.list_objects(bucket, prefix=prefix, recursive=True)}


def spooled(archive: Archive) -> list[Path]:
    """Temporary files of C-MOVE/C-GET sub-operations (`pacs.suboperations`) left behind."""
    return list(archive.temp_dir.glob("pacs-retrieve-*"))


def temporary_files(archive: Archive) -> list[Path]:
    """Every temporary file in the archive's folders for them (received data sets, STOW-RS
    parts, retrieval copies), of every process: what a request left behind."""
    root = archive.settings.run_dir / "tmp"
    return [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
