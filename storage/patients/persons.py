"""The patient index over the admin API: identities, persons, manual links and unlinks, the review queue.

DESIGN.md "HTTP surface": `/api/identities`, `/api/persons/{id}`, `/api/links`,
`/api/persons/{id}/unlink`, `/api/link-candidates` (admin). An identity is named by its issuer
and patient ID; the issuer is written as DESIGN.md's identifier systems say: an organization's
namespace `urn:pacs:org:<org>`, an unregistered AE's `urn:pacs:ae:<AE>`, otherwise the
IssuerOfPatientID as sent (`urn:oid:<oid>` and `urn:pacs:issuer:<x>` are accepted for it too).
These functions hold the rules of the patient index; who may call them (admins) is checked by
the caller with `storage.access.policy.require_admin`, since the access rules sit above the
patient index (care relationship reads it). Every change is a person's decision
(`link_decisions`), which re-scoring never overrides, and
an entry of the person's history; an unlink splits a person without moving any study (studies
belong to identities, never to persons).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, or_, select, update
from sqlalchemy.orm import Session

from storage.errors import Conflict, NotFound
from storage.index.models import OPT_IN, LinkCandidate, LinkEvent, PatientIdentity, Person, Study, StudyOwner, utcnow
from storage.patients import consent, linker
from storage.patients.identities import AE, DICOM, ORG

ORG_PREFIX, AE_PREFIX = "urn:pacs:org:", "urn:pacs:ae:"
_DICOM_PREFIXES = ("urn:oid:", "urn:pacs:issuer:")


class LinkConflict(Conflict):
    """Two persons that cannot be one: they hold different CNPs."""

    reason = "link_conflict"


def issuer_label(kind: str, issuer: str) -> str:
    """The issuer of an identity as the API writes it."""
    return {ORG: ORG_PREFIX + issuer, AE: AE_PREFIX + issuer}.get(kind, issuer)


def issuer_key(label: str) -> tuple[str, str]:
    """(issuer kind, issuer) of an issuer as the API reads it."""
    if label.startswith(ORG_PREFIX):
        return ORG, label.removeprefix(ORG_PREFIX)
    if label.startswith(AE_PREFIX):
        return AE, label.removeprefix(AE_PREFIX)
    for prefix in _DICOM_PREFIXES:
        if label.startswith(prefix):
            return DICOM, label.removeprefix(prefix)
    return DICOM, label


@dataclass(frozen=True, slots=True)
class IdentityView:
    id: int
    issuer: str
    patient_id: str
    person_id: int | None
    patient_name: str
    birth_date: str
    sex: str
    cnp: str | None


_COLUMNS = linker.IDENTITY_COLUMNS


def _view(row: Any) -> IdentityView:
    return IdentityView(
        row.id,
        issuer_label(row.issuer_kind, row.issuer),
        row.patient_id,
        row.person_id,
        row.patient_name,
        row.birth_date,
        row.sex,
        row.cnp,
    )


def _identity_row(conn: Connection | Session, issuer: str, patient_id: str) -> Any:
    kind, value = issuer_key(issuer)
    row = conn.execute(
        select(*_COLUMNS).where(
            PatientIdentity.issuer_kind == kind,
            PatientIdentity.issuer == value,
            PatientIdentity.patient_id == patient_id,
        )
    ).first()
    if row is None:
        raise NotFound(f"no identity {patient_id!r} of issuer {issuer!r}")
    return row


def find_identity(session: Session, issuer: str, patient_id: str) -> IdentityView:
    """The identity (issuer, patient ID) and its person.

    Raises
    ------
    NotFound
        No such identity.
    """
    return _view(_identity_row(session, issuer, patient_id))


@dataclass(frozen=True, slots=True)
class PersonView:
    person_id: int
    merged_into: int | None
    identities: list[IdentityView]
    studies: list[dict[str, Any]]
    links: list[dict[str, Any]]
    cross_org_sharing: str
    consents: list[consent.ConsentView]


def person(session: Session, person_id: int) -> PersonView:
    """A person: its identities, their studies, its link history.

    Raises
    ------
    NotFound
        No such person.
    """
    row = session.execute(select(Person.id, Person.merged_into, Person.cross_org_sharing).where(Person.id == person_id))
    found = row.first()
    if found is None:
        raise NotFound(f"no person {person_id}")
    identities = [_view(r) for r in session.execute(select(*_COLUMNS).where(PatientIdentity.person_id == person_id))]
    studies = session.execute(
        select(Study.study_uid, Study.study_date, Study.identity_id, StudyOwner.org_id)
        .outerjoin(StudyOwner, StudyOwner.study_id == Study.id)
        .where(Study.identity_id.in_([i.id for i in identities]))
        .order_by(Study.study_date.desc(), Study.id.desc())
    ).all()
    by_uid: dict[str, dict[str, Any]] = {}
    for uid, day, identity_id, org in studies:
        entry = by_uid.setdefault(
            uid, {"study_instance_uid": uid, "study_date": day, "identity": identity_id, "orgs": []}
        )
        if org:
            entry["orgs"].append(org)
    events = session.execute(select(LinkEvent).where(LinkEvent.person_id == person_id).order_by(LinkEvent.id)).scalars()
    links = [
        {
            "time": e.time,
            "action": e.action,
            "identity_a": e.identity_a,
            "identity_b": e.identity_b,
            "rule": e.rule,
            "score": e.score,
            "actor": e.actor,
        }
        for e in events
    ]
    choices = consent.history(session.connection(), found.id)
    return PersonView(
        found.id, found.merged_into, identities, list(by_uid.values()), links, found.cross_org_sharing, choices
    )


def link(conn: Connection, actor: str, a: tuple[str, str], b: tuple[str, str]) -> int:
    """Link two identities by hand (a decision the model never undoes); the person's ID.

    Raises
    ------
    NotFound
        Either identity does not exist.
    LinkConflict
        Their persons hold different CNPs.
    """
    one, other = _identity_row(conn, *a), _identity_row(conn, *b)
    return _link_rows(conn, one, other, actor)


def _link_rows(conn: Connection, one: Any, other: Any, actor: str) -> int:
    first = one.person_id or linker.new_person(conn, identities=[one.id])
    second = other.person_id or linker.new_person(conn, identities=[other.id])
    linker.decide(conn, one.id, other.id, linker.SAME, actor)
    if first == second:
        return first
    if linker.merge_conflict(conn, first, second) == linker.CNP_CONFLICT:
        raise LinkConflict("the two identities' persons hold different CNPs: they are two people")
    return linker.merge(conn, first, second, one.id, other.id, rule="manual", score=0.0, actor=actor)


def unlink(conn: Connection, actor: str, person_id: int, issuer: str, patient_id: str) -> int:
    """Take the identity out of the person into a new person of its own; the new person's ID.

    The identity is decided `apart` from each other identity of the person, so that the model
    does not link it back; no study moves.

    Raises
    ------
    NotFound
        No such identity in that person.
    """
    row = _identity_row(conn, issuer, patient_id)
    if row.person_id != person_id:
        raise NotFound(f"identity {patient_id!r} of issuer {issuer!r} is not in person {person_id}")
    others = conn.scalars(
        select(PatientIdentity.id).where(PatientIdentity.person_id == person_id, PatientIdentity.id != row.id)
    ).all()
    if not others:
        return person_id
    for other in others:
        linker.decide(conn, row.id, other, linker.APART, actor)
    sharing = conn.scalar(select(Person.cross_org_sharing).where(Person.id == person_id)) or OPT_IN
    new = linker.new_person(conn, identities=[row.id], sharing=sharing)  # the patient's choice holds on both sides
    linker.record(conn, person_id, "unlink", row.id, None, rule="manual", actor=actor)
    linker.record(conn, new, "unlink", row.id, None, rule="manual", actor=actor)
    return new


@dataclass(frozen=True, slots=True)
class CandidateView:
    id: int
    a: IdentityView
    b: IdentityView
    score: float
    reasons: list[dict[str, Any]]
    status: str
    created_at: datetime
    decided_by: str | None


def candidates(session: Session, status: str = "open", limit: int = 100, offset: int = 0) -> list[CandidateView]:
    """The review queue (by default the open pairs, highest score first) with both sides."""
    rows = (
        session.execute(
            select(LinkCandidate)
            .where(LinkCandidate.status == status)
            .order_by(LinkCandidate.score.desc(), LinkCandidate.id)
            .limit(limit)
            .offset(offset)
        )
        .scalars()
        .all()
    )
    ids = {i for r in rows for i in (r.identity_a, r.identity_b)}
    views = {r.id: _view(r) for r in session.execute(select(*_COLUMNS).where(PatientIdentity.id.in_(ids)))}
    return [
        CandidateView(
            r.id, views[r.identity_a], views[r.identity_b], r.score, json.loads(r.reasons), r.status, r.created_at,
            r.decided_by,
        )
        for r in rows
    ]  # fmt: skip


def decide_candidate(conn: Connection, actor: str, candidate_id: int, *, accept: bool) -> int | None:
    """Accept (link the pair) or reject (keep it apart for good) an open candidate; the person's
    ID when accepted.

    Raises
    ------
    NotFound
        No such open candidate.
    LinkConflict
        Accepted, but the two persons hold different CNPs.
    """
    found = conn.execute(
        select(LinkCandidate.identity_a, LinkCandidate.identity_b).where(
            LinkCandidate.id == candidate_id, LinkCandidate.status == "open"
        )
    ).first()
    if found is None:
        raise NotFound(f"no open link candidate {candidate_id}")
    a, b = found
    status = "accepted" if accept else "rejected"
    conn.execute(
        update(LinkCandidate)
        .where(LinkCandidate.id == candidate_id)
        .values(status=status, decided_by=actor[:256], decided_at=utcnow())
    )
    if not accept:
        linker.decide(conn, a, b, linker.APART, actor)
        return None
    rows = {
        r.id: r for r in conn.execute(select(*_COLUMNS).where(or_(PatientIdentity.id == a, PatientIdentity.id == b)))
    }
    return _link_rows(conn, rows[a], rows[b], actor)
