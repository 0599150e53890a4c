"""The patient's recorded choices about cross-organization sharing, as FHIR's Consent reads them.

A choice belongs to a master person (`storage.patients.consent`); FHIR names patients by
identity. So a caller reaches a person's consents through one of its identities it may see
(`storage.query.patients.visible_identity`): the same rule as for the Patient itself, and an
invisible one answers as if it did not exist. The newest choice is the one in force (`active`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from storage.access.context import Context
from storage.errors import NotFound
from storage.index.models import ConsentRecord, PatientIdentity, Person
from storage.patients.consent import current_person
from storage.query import patients


@dataclass(frozen=True, slots=True)
class ConsentRow:
    """One recorded choice, with the identity the caller knows the person by."""

    id: int
    identity_id: int
    cross_org_sharing: str
    recorded_by: str
    note: str | None
    org: str | None
    time: datetime
    active: bool


def of_identity(identity_id: int, ctx: Context, *, session: Session) -> list[ConsentRow]:
    """Every choice recorded for the person of identity `identity_id`, oldest first.

    Raises
    ------
    NotFound
        No such identity, or one the caller may not see.
    """
    row = patients.get(identity_id, ctx, session=session)
    if row.person_id is None:
        return []
    return _history(session, _current(session, row.person_id), identity_id)


def one(consent_id: int, ctx: Context, *, session: Session) -> ConsentRow:
    """One recorded choice whose person the caller may see.

    Raises
    ------
    NotFound
        No such record, or one of a person the caller may not see (the same answer).
    """
    person_of = session.scalar(select(ConsentRecord.person_id).where(ConsentRecord.id == consent_id))
    if person_of is None:
        raise NotFound(f"no consent {consent_id}")
    person = _current(session, person_of)
    seen = session.scalar(
        select(func.min(PatientIdentity.id)).where(PatientIdentity.person_id == person, patients.visible_identity(ctx))
    )
    if seen is None:
        raise NotFound(f"no consent {consent_id}")
    return next(r for r in _history(session, person, int(seen)) if r.id == consent_id)


def _current(session: Session, person_id: int) -> int:
    """The person `person_id` is now (the survivor of the merges that absorbed it)."""
    return current_person(session.connection(), person_id)


def _history(session: Session, person: int, identity_id: int) -> list[ConsentRow]:
    absorbed = select(Person.id).where(Person.merged_into == person)
    rows = session.execute(
        select(ConsentRecord)
        .where(or_(ConsentRecord.person_id == person, ConsentRecord.person_id.in_(absorbed)))
        .order_by(ConsentRecord.time, ConsentRecord.id)
    ).scalars()
    found = list(rows)
    return [
        ConsentRow(r.id, identity_id, r.cross_org_sharing, r.recorded_by, r.note, r.org, r.time, r is found[-1])
        for r in found
    ]
