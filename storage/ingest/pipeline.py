"""The one ingest pipeline: C-STORE, STOW-RS and `pacs import` all store through `ingest`.

The order is what makes an acknowledgement safe (DESIGN.md "Ingest rules", after the
store orchestrator of Microsoft's DICOM server): parse and validate; reserve a pending row
that names a fresh server-made key; write the blob durably under that key; then, in one
transaction, drop the pending row and insert patient, study, series and instance rows with
the aggregates. Only after that commit does the caller answer success. A crash before the
commit leaves a pending row that start-up recovery (`storage.ingest.recovery`) cleans up; a crash
after it leaves a complete instance.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from storage import metrics
from storage.access.principal import Principal
from storage.archive import Archive
from storage.blobs.protocol import BlobInfo, new_key
from storage.dicom.charset import fold
from storage.dicom.parse import ParsedInstance, Source, parse, with_preamble
from storage.errors import InvalidUid, OutOfResources, RejectedInput, StorageError, StudyMismatch
from storage.index.models import Base, Instance, PatientIdentity, PendingBlob, Series, Study, utcnow
from storage.logs import event

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an object came from; for the log, the metrics and the study's source."""

    via: str
    calling_ae: str = ""
    called_ae: str = ""
    address: str = ""
    sub: str = ""
    path: str = ""

    @classmethod
    def dimse(cls, calling_ae: str, called_ae: str, address: str) -> Origin:
        return cls(via="dimse", calling_ae=calling_ae, called_ae=called_ae, address=address)

    @classmethod
    def stow(cls, sub: str, address: str) -> Origin:
        return cls(via="stow", sub=sub, address=address)

    @classmethod
    def cli(cls, path: str) -> Origin:
        return cls(via="cli", path=path)


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


def ingest(
    source: Source, origin: Origin, principal: Principal, *, archive: Archive, expect_study: str | None = None
) -> IngestResult:
    """Store one Part-10 object; return only once it is durable and indexed.

    `expect_study` refuses an instance of another study (STOW-RS to /studies/{study}).

    Raises
    ------
    RejectedInput
        The object is not acceptable (not DICOM, truncated, bad UID or character set);
        nothing of it was kept.
    OutOfResources
        The blob store or the database failed; nothing of it was kept.
    """
    started = time.perf_counter()
    source = with_preamble(source)
    try:
        parsed = parse(source)
        if expect_study is not None and parsed.study_uid != expect_study:
            raise StudyMismatch(f"StudyInstanceUID {parsed.study_uid} is not the study {expect_study} of the request")
    except RejectedInput as exc:
        _rejected(origin, exc, source.describe())
        raise
    key = new_key()
    pending_id = _reserve(archive, parsed.sop_uid, key)
    if pending_id is None:
        return _already_present(origin, parsed, source.size)
    try:
        blob = _write_blob(archive, key, source)
        with archive.db.write_conn() as conn:
            _commit(conn, parsed, blob, origin, principal, pending_id)
    except IntegrityError as exc:
        _cleanup(archive, key, pending_id)
        if _is_present(archive, parsed.sop_uid):  # a concurrent sender committed it first
            return _already_present(origin, parsed, source.size)
        raise OutOfResources(f"index rejected the instance: {exc.orig}") from exc
    except RejectedInput as exc:
        _cleanup(archive, key, pending_id)
        _rejected(origin, exc, source.describe())
        raise
    except Exception as exc:
        _cleanup(archive, key, pending_id)
        metrics.INSTANCES_REJECTED.labels(origin.via, OutOfResources.reason).inc()
        event(
            log,
            "ingest.failed",
            level=logging.ERROR,
            via=origin.via,
            sop_instance_uid=parsed.sop_uid,
            error=f"{type(exc).__name__}: {exc}",
        )
        if isinstance(exc, StorageError):
            raise
        raise OutOfResources(f"could not store the instance: {type(exc).__name__}") from exc

    elapsed = time.perf_counter() - started
    metrics.INSTANCES_STORED.labels(origin.via).inc()
    metrics.BYTES_STORED.labels(origin.via).inc(blob.size)
    metrics.INGEST_SECONDS.labels(origin.via).observe(elapsed)
    event(
        log,
        "ingest.stored",
        level=logging.DEBUG,
        via=origin.via,
        calling_ae=origin.calling_ae,
        org=principal.org,
        sop_instance_uid=parsed.sop_uid,
        bytes=blob.size,
        duration_ms=round(elapsed * 1000, 2),
    )
    return _result(Outcome.STORED, parsed, blob.size)


def _result(outcome: Outcome, parsed: ParsedInstance, size: int) -> IngestResult:
    return IngestResult(outcome, parsed.sop_uid, parsed.sop_class_uid, parsed.study_uid, parsed.series_uid, size)


def _rejected(origin: Origin, exc: StorageError, what: str) -> None:
    metrics.INSTANCES_REJECTED.labels(origin.via, exc.reason).inc()
    event(
        log,
        "ingest.rejected",
        level=logging.WARNING,
        via=origin.via,
        calling_ae=origin.calling_ae,
        source=what if origin.via == "cli" else None,
        reason=exc.reason,
        status=f"0x{exc.status:04X}",
        detail=exc.detail,
    )


def _already_present(origin: Origin, parsed: ParsedInstance, size: int) -> IngestResult:
    metrics.INSTANCES_ALREADY_PRESENT.labels(origin.via).inc()
    event(log, "ingest.already_present", via=origin.via, calling_ae=origin.calling_ae, sop_instance_uid=parsed.sop_uid)
    return _result(Outcome.ALREADY_PRESENT, parsed, size)


_PRESENT = select(Instance.id).where(Instance.sop_uid == bindparam("sop_uid"))
_RESERVE = insert(PendingBlob).returning(PendingBlob.id)
_UNRESERVE = delete(PendingBlob).where(PendingBlob.id == bindparam("pending_id"))
_SERIES_OF = (
    select(Series.id, Series.study_id, Study.study_uid)
    .join(Study, Study.id == Series.study_id)
    .where(Series.series_uid == bindparam("series_uid"))
)
_INSERT_INSTANCE = insert(Instance)
_COUNT_INSTANCE_IN_SERIES = (
    update(Series).where(Series.id == bindparam("sid")).values(num_instances=Series.num_instances + 1)
)
_COUNT_INSTANCE_IN_STUDY = (
    update(Study)
    .where(Study.id == bindparam("stid"))
    .values(num_instances=Study.num_instances + 1, updated_at=bindparam("now"))
)


def _is_present(archive: Archive, sop_uid: str) -> bool:
    with archive.db.engine.connect() as conn:
        return conn.scalar(_PRESENT, {"sop_uid": sop_uid}) is not None


def _reserve(archive: Archive, sop_uid: str, key: str) -> int | None:
    """Check for a stored copy and reserve the key in one short transaction.

    The reservation is a light commit: lost in a power cut it would only leave an orphan
    blob, never a visible half instance, so it does not pay for a WAL fsync.
    """
    with archive.db.write_conn(light=True) as conn:
        if conn.scalar(_PRESENT, {"sop_uid": sop_uid}) is not None:
            return None
        row = conn.execute(_RESERVE, {"object_key": key, "owner": archive.owner, "created_at": utcnow()})
        return int(row.scalar_one())


def _write_blob(archive: Archive, key: str, source: Source) -> BlobInfo:
    if source.path is not None:
        return archive.blobs.put_file(key, source.path)
    data = source.data or b""
    return archive.blobs.put(key, io.BytesIO(data), len(data))


def _cleanup(archive: Archive, key: str, pending_id: int) -> None:
    """Best effort: remove what a failed ingest wrote; recovery retries whatever remains."""
    try:
        archive.blobs.delete(key)
        with archive.db.write_conn(light=True) as conn:
            conn.execute(_UNRESERVE, {"pending_id": pending_id})
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the original error
        event(log, "ingest.cleanup_failed", level=logging.ERROR, object_key=key, error=repr(exc))


def _commit(
    conn: Connection, p: ParsedInstance, blob: BlobInfo, origin: Origin, principal: Principal, pending_id: int
) -> None:
    """Index the instance, its series, study and patient, in the caller's one transaction."""
    now = utcnow()
    conn.execute(_UNRESERVE, {"pending_id": pending_id})
    row = conn.execute(_SERIES_OF, {"series_uid": p.series_uid}).first()
    new_series = row is None
    if row is not None:
        series_id, study_id, study_uid = row
        if study_uid != p.study_uid:
            raise InvalidUid(f"SeriesInstanceUID {p.series_uid} already belongs to another study")
    else:
        identity_id = _upsert_identity(conn, p, origin, principal)
        study_id = _upsert_study(conn, p, identity_id, origin, principal)
        series_id = _upsert_series(conn, p, study_id)
    conn.execute(
        _INSERT_INSTANCE,
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
            "source_ae": origin.calling_ae[:16],
            "created_at": now,
        },
    )
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


def _insert_or_get(conn: Connection, model: type[Base], key: dict[str, Any], values: dict[str, Any]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING, then the id of whichever row holds `key`.

    Two associations storing the first instances of one study race here; the conflict clause
    lets both proceed without an error and both end up on the same row.
    """
    ins = pg_insert(model) if conn.dialect.name == "postgresql" else sqlite_insert(model)
    table = model.__table__
    new_id = conn.scalar(
        ins.values(**key, **values).on_conflict_do_nothing(index_elements=list(key)).returning(table.c.id)
    )
    if new_id is not None:
        return int(new_id)
    return int(conn.execute(select(table.c.id).filter_by(**key)).scalar_one())


def _identity_key(p: ParsedInstance, origin: Origin, principal: Principal) -> dict[str, str]:
    """The namespace of the patient ID: the sender's issuer, else its organization, else its AE."""
    if not p.patient_id:
        return {"issuer_kind": "none", "issuer": p.study_uid, "patient_id": ""}
    if p.issuer_of_patient_id:
        return {"issuer_kind": "dicom", "issuer": p.issuer_of_patient_id[:128], "patient_id": p.patient_id[:64]}
    if principal.org:
        return {"issuer_kind": "org", "issuer": principal.org, "patient_id": p.patient_id[:64]}
    sender = origin.calling_ae or origin.sub or origin.via
    return {"issuer_kind": "ae", "issuer": sender, "patient_id": p.patient_id[:64]}


def _upsert_identity(conn: Connection, p: ParsedInstance, origin: Origin, principal: Principal) -> int:
    return _insert_or_get(
        conn,
        PatientIdentity,
        _identity_key(p, origin, principal),
        {
            "patient_name": p.patient_name,
            "patient_name_folded": fold(p.patient_name),
            "birth_date": p.birth_date,
            "sex": p.sex,
            "created_at": utcnow(),
        },
    )


def _upsert_study(conn: Connection, p: ParsedInstance, identity_id: int, origin: Origin, principal: Principal) -> int:
    return _insert_or_get(
        conn,
        Study,
        {"study_uid": p.study_uid},
        {
            "identity_id": identity_id,
            "org_id": principal.org,
            "source_ae": origin.calling_ae[:16],
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
    return _insert_or_get(
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
