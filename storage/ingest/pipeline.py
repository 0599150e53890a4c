"""The one ingest pipeline: C-STORE, STOW-RS and `pacs import` all store through `ingest`.

The order is what makes an acknowledgement safe (DESIGN.md "Ingest rules", after the
store orchestrator of Microsoft's DICOM server): parse and validate; take a pending row that
names a fresh server-made key (reserved ahead, a batch at a time: `storage.index.reserved`);
write the blob durably under that key; then, in one transaction, drop the pending row and
insert patient, study, series and instance rows with the aggregates. Only after that commit
does the caller answer success. A crash before the commit leaves a pending row that start-up
recovery (`storage.ingest.recovery`) cleans up; a crash after it leaves a complete instance.

A received data set (a disposable file in the archive's folder) is staged instead of copied
(`BlobStore.stage`): its fsync starts before the parse, it is renamed into place after the
reservation, and its folder's fsync runs while the index commits; its pending row is dropped
only once that fsync is done (`_settle`), so that recovery can tell an instance whose blob a
power cut lost. Success is still answered only after both are durable. An imported file is
copied into that folder first and staged the same way (`_stageable_copy`).
"""

from __future__ import annotations

import io
import logging
import shutil
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, delete, exists, func, select, text, update
from sqlalchemy.exc import IntegrityError

from storage import metrics
from storage.access.context import Channel, Context
from storage.access.policy import may_write_into
from storage.archive import Archive
from storage.blobs.protocol import BlobInfo, Staging, new_keys
from storage.dicom.charset import fold
from storage.dicom.parse import ParsedInstance, Source, parse, with_preamble
from storage.errors import (
    Conflict,
    InvalidUid,
    NotAuthorized,
    OutOfResources,
    PatientMismatch,
    RejectedInput,
    StorageError,
    StudyMismatch,
    StudyNotWritable,
    TooLarge,
)
from storage.index.db import dialect_insert, insert_or_get_new
from storage.index.models import Instance, PatientIdentity, PendingBlob, Series, Study, StudyOwner, utcnow
from storage.ingest import provenance
from storage.logs import event
from storage.outages import outage
from storage.patients import identities

log = logging.getLogger(__name__)


class Outcome(Enum):
    STORED = "stored"
    ALREADY_PRESENT = "already_present"


@dataclass(frozen=True, slots=True)
class IngestResult:
    outcome: Outcome
    sop_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    size: int


def ingest(source: Source, ctx: Context, *, archive: Archive, expect_study: str | None = None) -> IngestResult:
    """Store one Part-10 object for `ctx`; return only once it is durable and indexed.

    The study is filed under the caller's organization (none for an unregistered AE: held
    unassigned, for admins); its patient ID in the namespace `storage.patients.identities`
    gives it. `expect_study` refuses an instance of another study (STOW-RS to /studies/{study}).

    Raises
    ------
    RejectedInput
        The object is not acceptable (not DICOM, truncated, bad UID or character set);
        nothing of it was kept.
    OutOfResources
        The blob store or the database failed; nothing of it was kept.
    """
    copy = _stageable_copy(archive, source)
    try:
        return _ingest(source, ctx, archive, expect_study, copy)
    finally:
        if copy is not None:  # moved into the store, unless the object was refused or present
            copy.unlink(missing_ok=True)


def _ingest(
    source: Source, ctx: Context, archive: Archive, expect_study: str | None, copy: Path | None
) -> IngestResult:
    started = time.perf_counter()
    try:
        _check_size(source, ctx, archive)
        source = with_preamble(source)
        staging = _stage(archive, source, ctx, copy)  # its fsync runs while the header is parsed
        parsed = parse(source)
        if expect_study is not None and parsed.study_uid != expect_study:
            raise StudyMismatch(f"StudyInstanceUID {parsed.study_uid} is not the study {expect_study} of the request")
    except RejectedInput as exc:
        _rejected(ctx, exc, source.describe())
        raise
    # An object stored already is found by a read before its blob is written. A received one,
    # staged, is only renamed into place: the index commit finds it then (`_StoredAlready`),
    # and each new instance saves the read (7 % of the SCP's CPU). An import's copy keeps the
    # read: a second import of a folder moves nothing.
    size = staging.size if staging is not None else source.size  # a staged file is moved away
    if (staging is None or copy is not None) and _is_present(archive, parsed.sop_uid):
        return _already_present(ctx, parsed, size)
    return _store(archive, source, parsed, staging, ctx, size, started)


def _store(
    archive: Archive,
    source: Source,
    parsed: ParsedInstance,
    staging: Staging | None,
    ctx: Context,
    size: int,
    started: float,
) -> IngestResult:
    """Steps 2 to 5 of DESIGN's ingest for a parsed object not known to be stored: its key, its
    blob (placed if staged, else written), the index commit, then what the caller is told."""
    pending_id, key = archive.reserved.take(archive.db, archive.owner, new_keys)
    durable: Future[None] | None = None
    try:
        if staging is not None:
            placed = archive.blobs.put_staged(key, staging)
            blob, durable = placed.info, placed.durable
        else:
            blob = _write_blob(archive, key, source, ctx)
        # a staged blob's pending row stays until its name is durable
        _index(archive, parsed, blob, ctx, None if durable is not None else pending_id)
    except _StoredAlready:  # sent again (a staged copy is not looked for before), or concurrently
        _cleanup(archive, key, pending_id)
        return _already_present(ctx, parsed, size)
    except IntegrityError as exc:
        _cleanup(archive, key, pending_id)
        if _is_present(archive, parsed.sop_uid):  # a concurrent sender committed it first
            return _already_present(ctx, parsed, size)
        raise OutOfResources(f"index rejected the instance: {exc.orig}") from exc
    except (RejectedInput, NotAuthorized) as exc:
        _cleanup(archive, key, pending_id)
        _rejected(ctx, exc, source.describe())
        raise
    except Exception as exc:
        _cleanup(archive, key, pending_id)
        metrics.INSTANCES_REJECTED.labels(_via(ctx), OutOfResources.reason).inc()
        backend = outage(exc)
        if backend is not None:  # a restart or an outage, not a bug: the sender retries later
            event(log, "ingest.unavailable", level=logging.WARNING, via=_via(ctx), backend=backend)
            raise OutOfResources(f"the {backend} is unavailable; send again later") from exc
        event(
            log,
            "ingest.failed",
            level=logging.ERROR,
            via=_via(ctx),
            sop_instance_uid=parsed.sop_uid,
            error=f"{type(exc).__name__}: {exc}",
        )
        if isinstance(exc, StorageError):
            raise
        raise OutOfResources(f"could not store the instance: {type(exc).__name__}") from exc

    if durable is not None:
        _settle(archive, durable, key)
    ctx.touched(parsed.study_uid, parsed.patient_id[:64])
    elapsed = time.perf_counter() - started
    metrics.INSTANCES_STORED.labels(_via(ctx)).inc()
    metrics.BYTES_STORED.labels(_via(ctx)).inc(blob.size)
    metrics.INGEST_SECONDS.labels(_via(ctx)).observe(elapsed)
    event(
        log,
        "ingest.stored",
        level=logging.DEBUG,
        via=_via(ctx),
        actor=ctx.principal.sub,
        org=ctx.principal.org,
        sop_instance_uid=parsed.sop_uid,
        bytes=blob.size,
        duration_ms=round(elapsed * 1000, 2),
    )
    return _result(Outcome.STORED, parsed, blob.size)


def _check_size(source: Source, ctx: Context, archive: Archive) -> None:
    """Refuse an object over the size its channel takes (DIMSE and STOW-RS; an import has none).

    The edges stop a larger one while it arrives (`pacs.wire.guard`, the STOW-RS reader); this
    is the pipeline's own word on it, whoever calls.
    """
    settings = archive.settings
    limits = {Channel.DIMSE: settings.dicom_max_object_size, Channel.DICOMWEB: settings.http_max_object_size}
    limit = limits.get(ctx.channel)
    if limit is not None and source.size > limit:
        raise TooLarge(f"the object is {source.size} bytes, over the {int(limit)} this archive takes")


def _result(outcome: Outcome, parsed: ParsedInstance, size: int) -> IngestResult:
    return IngestResult(outcome, parsed.sop_uid, parsed.sop_class_uid, parsed.study_uid, parsed.series_uid, size)


def _via(ctx: Context) -> str:
    """The entry point, as the metrics label it: `dimse`, `stow` (DICOMweb's one way in) or `cli`."""
    return "stow" if ctx.channel is Channel.DICOMWEB else ctx.channel.value


def _rejected(ctx: Context, exc: StorageError, what: str) -> None:
    metrics.INSTANCES_REJECTED.labels(_via(ctx), exc.reason).inc()
    event(
        log,
        "ingest.rejected",
        level=logging.WARNING,
        via=_via(ctx),
        actor=ctx.principal.sub,
        source=what if ctx.channel is Channel.CLI else None,
        reason=exc.reason,
        status=f"0x{exc.status:04X}",
        detail=exc.detail,
    )


def _already_present(ctx: Context, parsed: ParsedInstance, size: int) -> IngestResult:
    ctx.touched(parsed.study_uid, parsed.patient_id[:64])
    metrics.INSTANCES_ALREADY_PRESENT.labels(_via(ctx)).inc()
    event(log, "ingest.already_present", via=_via(ctx), actor=ctx.principal.sub, sop_instance_uid=parsed.sop_uid)
    return _result(Outcome.ALREADY_PRESENT, parsed, size)


_PRESENT = select(Instance.id).where(Instance.sop_uid == bindparam("sop_uid"))
_UNRESERVE = delete(PendingBlob).where(PendingBlob.id == bindparam("pending_id"))
#: the study of a series, read when the instance's study was not found
_STUDY_OF_SERIES = (
    select(Study.study_uid)
    .join(Series, Series.study_id == Study.id)
    .where(Series.series_uid == bindparam("series_uid"))
)
#: where an instance goes, when its study exists: the study, its patient, the series if it
#: exists (in this study or, wrongly, in another) and whether the sender's organization owns it
_PLACE_OF = (
    select(
        Study.id,
        Study.patient_id,
        PatientIdentity.issuer_kind,
        PatientIdentity.issuer,
        Series.id.label("series_id"),
        Series.study_id.label("series_study_id"),
        exists().where(StudyOwner.study_id == Study.id, StudyOwner.org_id == bindparam("org")).label("owned"),
    )
    .join(PatientIdentity, PatientIdentity.id == Study.identity_id)
    .outerjoin(Series, Series.series_uid == bindparam("series_uid"))
    .where(Study.study_uid == bindparam("study_uid"))
)
#: the instance's row, unless its SOP Instance UID is indexed already (sent again, or by a
#: concurrent sender): then no id comes back, without the error a unique violation would log on
#: the server, and the commit is undone (`_StoredAlready`)
_INSERT_INSTANCE = {
    dialect: dialect_insert(dialect, Instance).on_conflict_do_nothing(index_elements=["sop_uid"]).returning(Instance.id)
    for dialect in ("sqlite", "postgresql")
}


class _StoredAlready(Exception):
    """The instance's SOP Instance UID was indexed by the time of its commit."""


_COUNT_INSTANCE_IN_SERIES = (
    update(Series).where(Series.id == bindparam("sid")).values(num_instances=Series.num_instances + 1)
)
_COUNT_INSTANCE_IN_STUDY = (
    update(Study)
    .where(Study.id == bindparam("stid"))
    .values(num_instances=Study.num_instances + 1, updated_at=bindparam("now"))
)


def _is_present(archive: Archive, sop_uid: str) -> bool:
    with archive.db.statement_engine.connect() as conn:  # PostgreSQL: no transaction around one read
        return conn.scalar(_PRESENT, {"sop_uid": sop_uid}) is not None


def _index(archive: Archive, p: ParsedInstance, blob: BlobInfo, ctx: Context, pending_id: int | None) -> None:
    """The index commit (`_commit`), which also drops the pending rows of earlier instances
    that have settled since (`storage.index.settled`)."""
    settled: list[str] = []
    try:
        with archive.db.write_conn() as conn:
            settled = archive.settled.drop_within(conn)
            _commit(conn, p, blob, ctx, pending_id)
    except BaseException:
        archive.settled.give_back(settled)
        raise


def index_stored(archive: Archive, key: str, source: Source, ctx: Context) -> bool:
    """Index an object the store already holds under `key`, as sent by `ctx` (`pacs reindex`):
    the same parse and the same commit as a received one, without writing it again. False when
    its SOP Instance UID is indexed already (a second object of it: the first one stays).

    Raises
    ------
    RejectedInput
        The object cannot be read as an instance.
    """
    parsed = parse(source)
    size = source.path.stat().st_size if source.path is not None else len(source.data or b"")
    try:
        with archive.db.write_conn() as conn:
            _commit(conn, parsed, BlobInfo(key=key, size=size), ctx, pending_id=None)
    except _StoredAlready:
        return False
    except IntegrityError:
        if _is_present(archive, parsed.sop_uid):
            return False
        raise
    return True


def _stage(archive: Archive, source: Source, ctx: Context, copy: Path | None) -> Staging | None:
    """Hand a disposable file (a received data set, a STOW-RS part, an import's `copy`) to the
    blob store before its key exists, so that making it durable overlaps the parse and the
    reservation (DESIGN: still durable before the index commit). What stays unstaged (an object
    in memory, a remote store) is written by `_write_blob`."""
    if source.path is None:
        return None  # in memory (a STOW-RS part, or a file that lacked its preamble)
    if copy is not None:
        return archive.blobs.stage(copy, provenance.of(ctx))
    return archive.blobs.stage(source.path, provenance.of(ctx)) if source.disposable else None


def _stageable_copy(archive: Archive, source: Source) -> Path | None:
    """A file that is not ours to move (`pacs import`'s), copied into the archive's temporary
    folder where the blob store can stage it as a received data set: its fsync then overlaps the
    parse and its folder's the index commit, which `pacs import` otherwise waited for in turn
    (~40 % of a worker's time). The same one copy as `put_file` would make, made earlier; the
    price is a copy of a file found stored already, deleted unused (a second import of the same
    files took 3.8 s instead of 3.0 s for 2,000 CT slices). None where staging would not take
    it (a remote store, another filesystem)."""
    if source.path is None or source.disposable or not archive.blobs.stages(archive.temp_dir):
        return None
    copy = archive.temp_dir / f"import-{uuid.uuid4().hex}.dcm"
    try:
        shutil.copyfile(source.path, copy)  # copy_file_range: no copy through Python
    except BaseException:
        copy.unlink(missing_ok=True)
        raise
    return copy


def _settle(archive: Archive, durable: Future[None], key: str) -> None:
    """After the index commit of a staged blob: wait for its name to be durable (the folder's
    fsync ran while the index committed), then let its pending row go (with the next
    index commit, `storage.index.settled`). Until its name is durable, a power cut
    could have lost the name of a blob the index already points at: the pending row is what
    lets recovery find such an instance and take it out (`storage.ingest.recovery`); it was
    never acknowledged.

    Raises
    ------
    OutOfResources
        The folder's fsync failed: the instance is not acknowledged (its pending row stays,
        recovery keeps it if its blob is there; a retry finds it already present).
    """
    try:
        durable.result()
    except OSError as exc:
        event(log, "ingest.settle_failed", level=logging.ERROR, object_key=key, error=type(exc).__name__)
        raise OutOfResources(f"could not make the instance durable: {type(exc).__name__}") from exc
    archive.settled.add(key)


def _write_blob(archive: Archive, key: str, source: Source, ctx: Context) -> BlobInfo:
    meta = provenance.of(ctx)  # who sent it and for whom: what `pacs reindex` needs besides the bytes
    if source.path is not None:
        return archive.blobs.put_file(key, source.path, meta)
    data = source.data or b""
    return archive.blobs.put(key, io.BytesIO(data), len(data), meta)


def _cleanup(archive: Archive, key: str, pending_id: int) -> None:
    """Best effort: remove what a failed ingest wrote; recovery retries whatever remains."""
    try:
        archive.blobs.delete(key)
        with archive.db.write_conn(light=True) as conn:
            conn.execute(_UNRESERVE, {"pending_id": pending_id})
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the original error
        backend = outage(exc)
        if backend is not None:  # the pending row stays: start-up recovery removes what it names
            event(log, "ingest.cleanup_deferred", level=logging.WARNING, object_key=key, backend=backend)
            return
        event(log, "ingest.cleanup_failed", level=logging.ERROR, object_key=key, error=repr(exc))


def _commit(conn: Connection, p: ParsedInstance, blob: BlobInfo, ctx: Context, pending_id: int | None) -> None:
    """Index the instance, its series, study and patient, in the caller's one transaction, and
    drop its pending row (`pending_id`; None: the caller drops it later, `_settle`)."""
    now = utcnow()
    if pending_id is not None:
        conn.execute(_UNRESERVE, {"pending_id": pending_id})
    org = ctx.principal.org
    study_id, series_id, owned = _study_of(conn, p, ctx)
    if org is not None and not owned:
        _add_owner(conn, study_id, org, now)
    new_series = series_id is None
    if series_id is None:
        series_id = _upsert_series(conn, p, study_id)
    instance_id = conn.scalar(
        _INSERT_INSTANCE[conn.dialect.name],
        {
            "sop_uid": p.sop_uid,
            "series_id": series_id,
            "study_id": study_id,
            "sop_class_uid": p.sop_class_uid,
            "instance_number": p.instance_number,
            "transfer_syntax_uid": p.transfer_syntax_uid,
            "object_key": blob.key,
            "size": blob.size,
            "rows": p.rows,
            "columns": p.columns,
            "number_of_frames": p.number_of_frames,
            "pixel_layout": p.layout.to_json() if p.layout else None,
            "dicom_json": p.dicom_json,
            "attrs_json": p.instance_attrs_json,
            "source_ae": _source_ae(ctx),
            "created_at": now,
        },
    )
    if instance_id is None:
        raise _StoredAlready(p.sop_uid)
    conn.execute(_COUNT_INSTANCE_IN_SERIES, {"sid": series_id})
    conn.execute(_COUNT_INSTANCE_IN_STUDY, {"stid": study_id, "now": now})
    if new_series:
        modalities = conn.scalars(
            select(Series.modality).where(Series.study_id == study_id, Series.modality != "").distinct()
        ).all()
        conn.execute(
            update(Study)
            .where(Study.id == study_id)
            .values(
                num_series=select(func.count(Series.id)).where(Series.study_id == study_id).scalar_subquery(),
                modalities="\\".join(sorted(set(modalities))),
            )
        )


def _study_of(conn: Connection, p: ParsedInstance, ctx: Context) -> tuple[int, int | None, bool]:
    """The instance's study, made if new: (study id, series id if the series exists, whether the
    sender's organization owns the study). An existing study is checked (`_check_may_add`)."""
    place = _place_of(conn, p, ctx.principal.org)
    if place is None:
        created = _new_study(conn, p, ctx)
        if created is not None:
            return created, None, False
        # PostgreSQL (read committed): a concurrent sender created the study after the read. It
        # is an existing study and checked as one: its patient, its owners.
        place = _place_of(conn, p, ctx.principal.org)
        if place is None:
            raise Conflict(f"study {p.study_uid} was deleted while this instance was stored: send it again")
    owned = bool(place.owned)
    _check_may_add(ctx, p, place, owned)
    return int(place.id), None if place.series_id is None else int(place.series_id), owned


def _place_of(conn: Connection, p: ParsedInstance, org: str | None) -> Any:
    """The instance's study as `_PLACE_OF` reads it, or None for a new study. Its series, if it
    exists, must be in that study (else `InvalidUid`: it belongs to another study)."""
    where = {"study_uid": p.study_uid, "series_uid": p.series_uid, "org": org}
    place = conn.execute(_PLACE_OF, where).first()
    if place is not None:
        if place.series_id is not None and place.series_study_id != place.id:
            raise _series_elsewhere(p)
        return place
    series_study = conn.scalar(_STUDY_OF_SERIES, {"series_uid": p.series_uid})
    if series_study is None:
        return None
    if series_study != p.study_uid:
        raise _series_elsewhere(p)
    # PostgreSQL (read committed): a concurrent sender committed this very study between the two
    # reads; read it again (seen under load in CI, as a false "belongs to another study")
    return conn.execute(_PLACE_OF, where).first()


def _series_elsewhere(p: ParsedInstance) -> InvalidUid:
    return InvalidUid(f"SeriesInstanceUID {p.series_uid} already belongs to another study")


def _check_may_add(ctx: Context, p: ParsedInstance, study: Any, owned: bool) -> None:
    """Refuse an instance of another patient, or a token holder's write into another's study.

    The study's patient is its PatientID with the IssuerOfPatientID it was sent with (none when
    its identity is namespaced by an organization or AE): a second sender must name the same
    one, whoever it is, or a study would show two people. A modality's organization becomes a
    co-owner (`_add_owner`); STOW-RS and imports write only into their organization's studies,
    and the refusal does not say whose the study is.
    """
    issuer = study.issuer if study.issuer_kind == identities.DICOM else ""
    if (p.patient_id[:64], p.issuer_of_patient_id[:128]) != (study.patient_id, issuer):
        raise PatientMismatch(
            f"the instance's patient ({p.patient_id[:64]!r}, issuer {p.issuer_of_patient_id[:64]!r})"
            f" is not the patient of study {p.study_uid}"
        )
    if ctx.channel is not Channel.DIMSE and not may_write_into(ctx, owned):
        raise StudyNotWritable(f"study {p.study_uid} cannot be written by this caller")


_INSERT_OWNER_SQL = {
    "sqlite": "INSERT OR IGNORE INTO study_owners (study_id, org_id, study_date, person_id, created_at)"
    " SELECT s.id, :o, s.study_date, i.person_id, :t FROM studies s"
    " JOIN patient_identities i ON i.id = s.identity_id WHERE s.id = :s",
    "postgresql": "INSERT INTO study_owners (study_id, org_id, study_date, person_id, created_at)"
    " SELECT s.id, :o, s.study_date, i.person_id, :t FROM studies s"
    " JOIN patient_identities i ON i.id = s.identity_id WHERE s.id = :s ON CONFLICT DO NOTHING",
}
#: PostgreSQL: hold the study's identity against a concurrent link until this commits, so that the
#: person copied onto the owner row is the one the linker leaves (`linker.follow_persons`)
_LOCK_IDENTITY = text(
    "SELECT 1 FROM patient_identities WHERE id = (SELECT identity_id FROM studies WHERE id = :s) FOR SHARE"
)


def _add_owner(conn: Connection, study_id: int, org: str, now: datetime) -> None:
    """Make `org` an owner of the study (a second sender of the same patient's study co-owns it),
    with the study's date as the study row holds it (the first instance's, never changed) and
    the person of its identity (for the care relationship, `storage.access.policy.care_of`)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_LOCK_IDENTITY, {"s": study_id})
    conn.execute(text(_INSERT_OWNER_SQL[conn.dialect.name]), {"s": study_id, "o": org, "t": now})


def _source_ae(ctx: Context) -> str:
    """The calling AE title an object came from (empty for STOW-RS and imports)."""
    return ctx.principal.sub[:16] if ctx.channel is Channel.DIMSE else ""


def _new_study(conn: Connection, p: ParsedInstance, ctx: Context) -> int | None:
    """Create the instance's study with its patient identity; None if the study exists already
    (a concurrent sender's, committed after `_place_of` read)."""
    sender = ctx.principal.sub if ctx.channel is not Channel.CLI else ctx.channel.value
    key = identities.identity_key(
        p.patient_id, p.issuer_of_patient_id, study_uid=p.study_uid, org=ctx.principal.org, sender=sender
    )
    demographics = identities.Demographics(
        p.patient_name,
        p.birth_date,
        p.sex,
        p.patient_address,
        identities.national_id_of(p.patient_id, p.issuer_of_patient_id, p.other_patient_ids),
        p.other_patient_ids,
    )
    identity_id = identities.upsert(conn, key, demographics)
    study_id, created = _upsert_study(conn, p, identity_id, ctx)
    return study_id if created else None


def _upsert_study(conn: Connection, p: ParsedInstance, identity_id: int, ctx: Context) -> tuple[int, bool]:
    return insert_or_get_new(
        conn,
        Study,
        {"study_uid": p.study_uid},
        {
            "identity_id": identity_id,
            "org_id": ctx.principal.org,
            "source_ae": _source_ae(ctx),
            "patient_id": p.patient_id[:64],
            "patient_name": p.patient_name,
            "patient_name_folded": fold(p.patient_name),
            "study_date": p.study_date,
            "study_time": p.study_time,
            "accession_number": p.accession_number,
            "study_id": p.study_id,
            "description": p.study_description,
            "referring_physician_folded": p.referring_physician,
            "attrs_json": p.study_attrs_json,
            "created_at": utcnow(),
            "updated_at": utcnow(),
        },
    )


def _upsert_series(conn: Connection, p: ParsedInstance, study_id: int) -> int:
    """The series' row, made in `study_id`; one a concurrent sender made first (PostgreSQL) must
    be in the same study."""
    series_id, created = insert_or_get_new(
        conn,
        Series,
        {"series_uid": p.series_uid},
        {
            "study_id": study_id,
            "modality": p.modality,
            "series_number": p.series_number,
            "description": p.series_description,
            "body_part": p.body_part,
            "series_date": p.series_date,
            "series_time": p.series_time,
            "attrs_json": p.series_attrs_json,
            "created_at": utcnow(),
        },
    )
    if not created and conn.scalar(select(Series.study_id).where(Series.id == series_id)) != study_id:
        raise _series_elsewhere(p)
    return series_id
