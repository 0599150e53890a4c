"""Storage commitment: which referenced instances the archive takes responsibility for.

PS3.4 J.3.3.1.2: the archive may commit only to what it keeps. Here that means an instance
whose row is committed in the index with the SOP class the requester named: ingest writes
(and fsyncs) the blob before that row's transaction commits, and a write in flight is only a
pending row, so an indexed instance is durable. The reference must also lie within what the
requester may see (`storage.access.visible_to`), so that commitment cannot be used to learn
which instances another organization holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.access import Principal, visible_to
from storage.errors import InvalidCommitmentRequest
from storage.models import ApplicationEntity, Instance, Study
from storage.parse import UID_RE

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
    if not transaction_uid or len(transaction_uid) > 64 or not UID_RE.match(transaction_uid):
        raise InvalidCommitmentRequest("Transaction UID (0008,1195) missing or not a valid UID")
    refs = tuple(Reference(c.strip(), i.strip()) for c, i in references)
    if not refs:
        raise InvalidCommitmentRequest("Referenced SOP Sequence (0008,1199) missing or empty")
    if any(not r.sop_class_uid or not r.sop_instance_uid for r in refs):
        raise InvalidCommitmentRequest("a Referenced SOP Sequence item lacks its SOP Class or Instance UID")
    return Request(transaction_uid, refs)


def evaluate(session: Session, principal: Principal, req: Request) -> Result:
    """Sort the references into committed and failed (PS3.4 J.3.3.1.2).

    Every reference appears in the result, in the order of the request: not in the index (or
    not visible to `principal`) fails with 0112H No such object instance, indexed under another
    SOP class with 0119H Class/Instance conflict.
    """
    stored = _stored_classes(session, principal, {r.sop_instance_uid for r in req.references})
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


def _stored_classes(session: Session, principal: Principal, sop_uids: set[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    ordered = sorted(sop_uids)
    for start in range(0, len(ordered), _CHUNK):
        rows = session.execute(
            select(Instance.sop_uid, Instance.sop_class_uid)
            .join(Study, Study.id == Instance.study_id)
            .where(Instance.sop_uid.in_(ordered[start : start + _CHUNK]), visible_to(principal))
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
