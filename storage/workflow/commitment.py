"""Storage commitment: which referenced instances the archive takes responsibility for.

PS3.4 J.3.3.1.2: the archive may commit only to what it keeps. Here that means an instance
whose row is committed in the index with the SOP class the requester named: ingest writes
(and fsyncs) the blob before that row's transaction commits, and a write in flight is only a
pending row, so an indexed instance is durable. The reference must also lie within what the
requester may see (`storage.access.policy.visible_to`), so that commitment cannot be used to learn
which instances another organization holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from storage.access.context import Context
from storage.access.policy import visible_to
from storage.access.principal import Principal
from storage.dicom.uids import is_uid
from storage.errors import InvalidCommitmentRequest
from storage.index.claims import held, take
from storage.index.models import ApplicationEntity, CommitmentRequest, Instance, Study

#: Failure Reason (0008,1197) values, PS3.3 C.14.1.1
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119

#: Event Type ID of the N-EVENT-REPORT, PS3.4 J.3.3.1
ALL_COMMITTED = 1
FAILURES_EXIST = 2

_CHUNK = 500  # UIDs per IN (...) list: far below SQLite's and PostgreSQL's parameter limits


@dataclass(frozen=True, slots=True)
class Reference:
    """One item of the Referenced SOP Sequence (0008,1199)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class Request:
    """A Storage Commitment Request (N-ACTION, Action Type 1)."""

    transaction_uid: str
    references: tuple[Reference, ...]


@dataclass(frozen=True, slots=True)
class Failure:
    reference: Reference
    reason: int


@dataclass(frozen=True, slots=True)
class Result:
    """What the N-EVENT-REPORT says: every reference of the request, committed or failed."""

    transaction_uid: str
    committed: tuple[Reference, ...]
    failed: tuple[Failure, ...]

    @property
    def event_type(self) -> int:
        return FAILURES_EXIST if self.failed else ALL_COMMITTED


def request(transaction_uid: str, references: Iterable[tuple[str, str]]) -> Request:
    """Check a Storage Commitment Request before it is acknowledged.

    PS3.4 J.3.2.1.3: a success status on the N-ACTION promises an N-EVENT-REPORT, which must
    carry the Transaction UID and can only list references that name an instance; a request
    the archive could not answer that way is refused at once instead.

    Raises
    ------
    InvalidCommitmentRequest
        No valid Transaction UID, no references, or a reference without both UIDs.
    """
    if not is_uid(transaction_uid):
        raise InvalidCommitmentRequest("Transaction UID (0008,1195) missing or not a valid UID")
    refs = tuple(Reference(c.strip(), i.strip()) for c, i in references)
    if not refs:
        raise InvalidCommitmentRequest("Referenced SOP Sequence (0008,1199) missing or empty")
    if any(not r.sop_class_uid or not r.sop_instance_uid for r in refs):
        raise InvalidCommitmentRequest("a Referenced SOP Sequence item lacks its SOP Class or Instance UID")
    return Request(transaction_uid, refs)


def evaluate(session: Session, ctx: Context, req: Request) -> Result:
    """Sort the references into committed and failed (PS3.4 J.3.3.1.2).

    Every reference appears in the result, in the order of the request: not in the index (or
    not visible to `ctx`) fails with 0112H No such object instance, indexed under another
    SOP class with 0119H Class/Instance conflict.
    """
    stored = _stored_classes(session, ctx, {r.sop_instance_uid for r in req.references})
    committed: list[Reference] = []
    failed: list[Failure] = []
    for ref in req.references:
        sop_class = stored.get(ref.sop_instance_uid)
        if sop_class is None:
            failed.append(Failure(ref, NO_SUCH_OBJECT_INSTANCE))
        elif sop_class != ref.sop_class_uid:
            failed.append(Failure(ref, CLASS_INSTANCE_CONFLICT))
        else:
            committed.append(ref)
    return Result(req.transaction_uid, tuple(committed), tuple(failed))


def _stored_classes(session: Session, ctx: Context, sop_uids: set[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    ordered = sorted(sop_uids)
    for start in range(0, len(ordered), _CHUNK):
        rows = session.execute(
            select(Instance.sop_uid, Instance.sop_class_uid)
            .join(Study, Study.id == Instance.study_id)
            .where(Instance.sop_uid.in_(ordered[start : start + _CHUNK]), visible_to(ctx))
        )
        found.update({str(sop): str(cls) for sop, cls in rows})
    return found


def report_address(session: Session, ae_title: str) -> tuple[str, int] | None:
    """Where a registered AE accepts the association that carries a late N-EVENT-REPORT.

    PS3.4 J.3.3.1.3: the requester must accept the report on another association; it is
    opened to the address registered with `pacs org add ID --ae AET@host:port`.
    """
    row = session.execute(
        select(ApplicationEntity.host, ApplicationEntity.port).where(ApplicationEntity.ae_title == ae_title.strip())
    ).first()
    if row is None or not row.host or not row.port:
        return None
    return str(row.host), int(row.port)


# ----- requests acknowledged and not yet reported: kept in the index until their report ------


@dataclass(frozen=True, slots=True)
class Pending:
    """A kept request, claimed by this process for one delivery attempt."""

    id: int
    principal: Principal  # the requester, as it was when it asked
    request: Request
    attempts: int  # made before this one
    previous_owner: str | None  # whose claim this one took over (a process that died), if any


def keep(session: Session, ctx: Context, req: Request, owner: str, lease: timedelta) -> int:
    """Record an acknowledged request, claimed by `owner` for its first attempt; its id."""
    now = datetime.now(UTC)
    row = CommitmentRequest(
        transaction_uid=req.transaction_uid,
        calling_ae=ctx.principal.sub,
        org_id=ctx.principal.org,
        referenced=orjson.dumps([[r.sop_class_uid, r.sop_instance_uid] for r in req.references]).decode(),
        attempts=0,
        due_at=now,
        claimed_by=owner,
        claimed_until=now + lease,
    )
    session.add(row)
    session.flush()
    return int(row.id)


def any_due(session: Session) -> bool:
    """Whether some kept request may be due: a read, so an idle sweep takes no write lock."""
    due = select(CommitmentRequest.id).where(CommitmentRequest.due_at <= datetime.now(UTC)).limit(1)
    return session.execute(due).first() is not None


def claim_due(session: Session, owner: str, lease: timedelta, *, limit: int = 16) -> list[Pending]:
    """Claim for `owner` the kept requests whose next attempt is due and that no live process holds.

    A claim is taken with a compare-and-set on the holder seen, so of two processes that
    sweep at once only one gets a row, on SQLite as on PostgreSQL.
    """
    now = datetime.now(UTC)
    due = session.scalars(
        select(CommitmentRequest).where(CommitmentRequest.due_at <= now).order_by(CommitmentRequest.due_at).limit(limit)
    ).all()
    claimed: list[Pending] = []
    for row in due:
        holder = row.claimed_by
        if held(holder, row.claimed_until, now):
            continue
        if take(session, CommitmentRequest, row.id, holder, owner, now + lease):
            claimed.append(_pending(row, None if holder == owner else holder))
    return claimed


def settle(session: Session, job_id: int, owner: str) -> None:
    """The report is delivered, or given up: forget the request."""
    session.execute(
        delete(CommitmentRequest).where(CommitmentRequest.id == job_id, CommitmentRequest.claimed_by == owner)
    )


def postpone(session: Session, job_id: int, owner: str, *, attempts: int, delay: float) -> None:
    """An attempt failed: release the claim, and let the next one wait `delay` seconds."""
    session.execute(
        update(CommitmentRequest)
        .where(CommitmentRequest.id == job_id, CommitmentRequest.claimed_by == owner)
        .values(
            attempts=attempts,
            due_at=datetime.now(UTC) + timedelta(seconds=delay),
            claimed_by=None,
            claimed_until=None,
        )
    )


def _pending(row: CommitmentRequest, previous_owner: str | None) -> Pending:
    principal = Principal.dicom_node(row.calling_ae, row.org_id)
    references = tuple(Reference(c, i) for c, i in orjson.loads(row.referenced))
    return Pending(row.id, principal, Request(row.transaction_uid, references), row.attempts, previous_owner)
