"""The patient's consent: whether the person's studies reach other organizations by care relationship.

The city's strategy asks for "patient empowerment": a person may opt out of cross-organization
sharing (then only the organizations that sent their studies, and explicit shares, see them) or
opt back in (DESIGN.md "Access, shares, emergency access, consent and audit"). An admin, or an
integrator of an organization that cares for the person (acting for the patient at its desk),
records the choice with who the patient told it to (`recorded_by`); every choice is kept
(`consents`) and the newest is in force (`Person.cross_org_sharing`), read by the one policy
every channel applies (`storage.access.policy.care_of`), so it holds at once on DICOMweb, DIMSE
and FHIR. A link that merges two persons keeps an opt-out of either (`linker.merge`); a split
keeps the choice on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import Connection, insert, select, update

from storage.access.context import Context
from storage.access.policy import cared_for_by
from storage.access.principal import Role
from storage.errors import NotFound
from storage.index.models import ConsentRecord, Person, utcnow

Choice = Literal["opt-in", "opt-out"]
#: how many merges a person ID is followed through to the person it became
_MAX_MERGES = 64


@dataclass(frozen=True, slots=True)
class ConsentView:
    person_id: int
    cross_org_sharing: str
    recorded_by: str
    recorded_at: datetime
    note: str | None


def current_person(conn: Connection, person_id: int) -> int:
    """The person `person_id` is now: itself, or the survivor of the merges that absorbed it.

    Raises
    ------
    NotFound
        No such person.
    """
    for _ in range(_MAX_MERGES):
        merged_into = conn.execute(select(Person.merged_into).where(Person.id == person_id)).first()
        if merged_into is None:
            raise NotFound(f"no person {person_id}")
        if merged_into[0] is None:
            return person_id
        person_id = merged_into[0]
    raise NotFound(f"no person {person_id}")


def record(
    conn: Connection, ctx: Context, person_id: int, choice: Choice, recorded_by: str, note: str | None = None
) -> ConsentView:
    """Record the person's choice about cross-organization sharing; in force at once.

    Raises
    ------
    NotAuthorized
        The caller is neither an admin nor an integrator.
    NotFound
        No such person, or (for an integrator) a person its organization does not care for,
        answered as if the person did not exist.
    """
    principal = ctx.principal
    if not (principal.is_admin or principal.has(Role.INTEGRATOR)):
        raise ctx.refused("consent", "recording a consent needs the admin or integrator role")
    person = current_person(conn, person_id)
    if not principal.is_admin and not _cares_for(conn, principal.org, person):
        raise NotFound(f"no person {person_id}")
    now = utcnow()
    conn.execute(
        update(Person)
        .where(Person.id == person)
        .values(
            cross_org_sharing=choice, consent_recorded_by=recorded_by[:256], consent_recorded_at=now, consent_note=note
        )
    )
    conn.execute(
        insert(ConsentRecord).values(
            person_id=person,
            cross_org_sharing=choice,
            recorded_by=recorded_by[:256],
            note=note,
            actor=principal.sub[:256],
            org=principal.org,
            time=now,
        )
    )
    if ctx.note is not None:  # the request's audit record says what was recorded
        ctx.note.detail = f"cross_org_sharing={choice} for person {person}"
    return ConsentView(person, choice, recorded_by, now, note)


def history(conn: Connection, person_id: int) -> list[ConsentView]:
    """Every choice recorded for the person or for a person merged into it, oldest first."""
    absorbed = select(Person.id).where(Person.merged_into == person_id)
    rows = conn.execute(
        select(ConsentRecord)
        .where((ConsentRecord.person_id == person_id) | ConsentRecord.person_id.in_(absorbed))
        .order_by(ConsentRecord.time, ConsentRecord.id)
    ).all()
    return [ConsentView(r.person_id, r.cross_org_sharing, r.recorded_by, r.time, r.note) for r in rows]


def _cares_for(conn: Connection, org: str | None, person: int) -> bool:
    if org is None:
        return False
    cared = cared_for_by(org).subquery()
    return conn.scalar(select(cared.c[0]).where(cared.c[0] == person).limit(1)) is not None
