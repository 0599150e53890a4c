"""`pacs reindex`: the index rebuilt from the object store alone, the recovery of last resort.

When the database is lost and no backup of it is left, the objects still say what they are (the
DICOM bytes: patient, study, series, instance) and, in their metadata, who sent them and for
which organization (`storage.ingest.provenance`), so that a rebuilt index shows each provider
what it saw before. Objects are indexed in the order they were received, by the same commit as
ingest (`pipeline.index_stored`): co-owners, counts, modalities and each instance's DICOM JSON
come out as they were. The organizations are recreated by id (their names, AE titles and
network rules are the registry's, not the objects': register them again); what lived only in the
database (shares, consents, links decided by a reviewer, the audit trail, worklists,
subscriptions) is not in the store: restore it from a database backup (README, "Backup and
restore"). Identities are queued again, so the linker links them anew.

It refuses a database that holds studies: it rebuilds into an empty index, never over one.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from storage.access.context import Context
from storage.access.orgs import add_org, check_org_id
from storage.archive import Archive
from storage.dicom.parse import Source
from storage.errors import Conflict, RejectedInput
from storage.index.models import Organization, Study
from storage.ingest import provenance
from storage.ingest.pipeline import index_stored
from storage.logs import event

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReindexReport:
    #: objects in the store; instances indexed; second objects of an indexed SOP Instance UID
    #: (a retry of a write that had crashed: the first is kept); objects without provenance
    #: (indexed as unassigned: admins only); objects that are not instances
    objects: int
    indexed: int
    duplicates: int
    unattributed: int
    unreadable: int
    organizations: int


def reindex(archive: Archive, *, progress: Callable[[int, int], None] | None = None) -> ReindexReport:
    """Index every object of the store into the archive's (empty) database.

    Raises
    ------
    Conflict
        The database holds studies already.
    """
    with archive.db.read() as session:
        if session.scalar(select(func.count()).select_from(Study)):
            raise Conflict("the index is not empty: point PACS_DATABASE_URL at a new, empty database")
    entries = sorted(
        ((provenance.read(archive.blobs.meta(key)), key) for key in archive.blobs.keys()),
        key=lambda entry: (entry[0].received, entry[1]),  # as received: co-owners come out the same
    )
    made = _organizations(archive, {p.principal.org for p, _ in entries if p.principal.org})
    indexed = duplicates = unreadable = 0
    for done, (found, key) in enumerate(entries, 1):
        ctx = Context(found.principal, found.channel, "reindex")
        try:
            with _local(archive, key) as path:
                if index_stored(archive, key, Source(path=path), ctx):
                    indexed += 1
                else:
                    duplicates += 1
                    event(log, "reindex.duplicate", object_key=key)
        except RejectedInput as exc:
            unreadable += 1
            event(log, "reindex.unreadable", level=logging.WARNING, object_key=key, reason=exc.reason)
        if progress is not None:
            progress(done, len(entries))
    report = ReindexReport(
        objects=len(entries),
        indexed=indexed,
        duplicates=duplicates,
        unattributed=sum(1 for p, _ in entries if not p.known),
        unreadable=unreadable,
        organizations=made,
    )
    event(log, "reindex.done", **{k: getattr(report, k) for k in report.__dataclass_fields__})
    return report


def _organizations(archive: Archive, wanted: set[str]) -> int:
    """Create the organizations the objects name and the database lacks (named by their id)."""
    made = 0
    with archive.db.write() as session:
        for org in sorted(wanted):
            try:
                check_org_id(org)
            except ValueError:
                continue  # not an id this archive gives: its objects stay unassigned below
            if session.get(Organization, org) is None:
                add_org(session, org, org, [])
                made += 1
    return made


@contextmanager
def _local(archive: Archive, key: str) -> Iterator[Path]:
    """The object as a file: the store's own, or a temporary copy of a remote one."""
    path = archive.blobs.local_path(key)
    if path is not None:
        yield path
        return
    copy = archive.temp_dir / "reindex.dcm"
    try:
        with archive.blobs.open(key) as body, open(copy, "wb") as out:
            shutil.copyfileobj(body, out, 1 << 20)
        yield copy
    finally:
        copy.unlink(missing_ok=True)
