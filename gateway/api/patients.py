"""/api/identities, /api/persons, /api/links, /api/link-candidates: the patient index, for admins.

Thin routes over `storage.patients.persons` (DESIGN.md "HTTP surface"); every call is audited
by the gateway's audit middleware, as every /api request is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from gateway.deps import PRINTABLE, ApiContext, ArchiveDep, RowId
from storage.access.policy import require_admin
from storage.patients import consent as consents
from storage.patients import persons

router = APIRouter(prefix="/api", tags=["Patient index (admin)"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "A field is missing or malformed; the problem names it"},
    403: {"description": "The caller is not an admin"},
    404: {"description": "No such identity, person or open candidate"},
}
_LINK_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_RESPONSES,
    409: {"description": "The two persons hold different CNPs: they are two people"},
}

Issuer = Annotated[
    str, Field(min_length=1, max_length=160, pattern=PRINTABLE, examples=["urn:pacs:org:spital-municipal"])
]
PatientId = Annotated[str, Field(min_length=1, max_length=64, pattern=PRINTABLE, examples=["123"])]


class IdentityRef(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    issuer: Issuer
    patient_id: PatientId


class NewLink(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    a: IdentityRef
    b: IdentityRef


class Identity(BaseModel):
    issuer: str
    patient_id: str
    person_id: int | None = Field(description="none until the linker has seen the identity")
    patient_name: str
    birth_date: str
    sex: str
    cnp: str | None = Field(description="a CNP the sender gave that agrees with the demographics")


class Person(BaseModel):
    person_id: int
    merged_into: int | None
    identities: list[Identity]
    studies: list[dict[str, Any]]
    links: list[dict[str, Any]]
    cross_org_sharing: str
    consents: list[Consent] = Field(description="every choice recorded, oldest first; the last is in force")


class Linked(BaseModel):
    person_id: int


class NewConsent(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    cross_org_sharing: Literal["opt-out", "opt-in"] = Field(
        description="opt-out: only the organizations that sent the person's studies, and explicit "
        "shares, see them; opt-in: so do the organizations that care for the person"
    )
    recorded_by: Annotated[
        str, Field(min_length=1, max_length=256, pattern=PRINTABLE, examples=["front desk, Dr. Ionescu"])
    ] = Field(description="who took the patient's choice")
    note: Annotated[str, Field(max_length=2000, pattern=PRINTABLE)] | None = None


class Consent(BaseModel):
    person_id: int = Field(description="the person the choice holds for (the survivor, for a merged ID)")
    cross_org_sharing: str
    recorded_by: str
    recorded_at: datetime
    note: str | None


class Candidate(BaseModel):
    id: int
    a: Identity
    b: Identity
    score: float
    reasons: list[dict[str, Any]]
    status: str
    created_at: datetime
    decided_by: str | None


def _identity(view: persons.IdentityView) -> Identity:
    return Identity.model_validate(view, from_attributes=True)


@router.get("/identities", summary="An institution's patient identity and its person", responses=_RESPONSES)
def identity(
    archive: ArchiveDep,
    ctx: ApiContext,
    issuer: Annotated[str, Query(min_length=1, max_length=160, pattern=PRINTABLE)],
    patient_id: Annotated[str, Query(min_length=1, max_length=64, pattern=PRINTABLE)],
) -> Identity:
    require_admin(ctx, "identities")
    with archive.db.read() as session:
        return _identity(persons.find_identity(session, issuer, patient_id))


@router.get("/persons/{person_id}", summary="A person: identities, studies, link history", responses=_RESPONSES)
def person(person_id: RowId, archive: ArchiveDep, ctx: ApiContext) -> Person:
    require_admin(ctx, "persons")
    with archive.db.read() as session:
        return Person.model_validate(persons.person(session, person_id), from_attributes=True)


@router.put(
    "/persons/{person_id}/consent",
    summary="Record the patient's choice about cross-organization sharing",
    responses={**_RESPONSES, 403: {"description": "The caller is neither an admin nor an integrator"}},
)
def consent(person_id: RowId, spec: NewConsent, archive: ArchiveDep, ctx: ApiContext) -> Consent:
    """In force at once on every channel. An integrator records it for a person its organization
    cares for (holds a study of, or has an open worklist step for); another person is 404."""
    with archive.db.write_conn() as conn:
        view = consents.record(conn, ctx, person_id, spec.cross_org_sharing, spec.recorded_by, spec.note)
    return Consent.model_validate(view, from_attributes=True)


@router.post("/persons/{person_id}/unlink", summary="Split an identity off its person", responses=_RESPONSES)
def unlink(person_id: RowId, ref: IdentityRef, archive: ArchiveDep, ctx: ApiContext) -> Linked:
    require_admin(ctx, "unlink")
    with archive.db.write_conn() as conn:
        return Linked(person_id=persons.unlink(conn, ctx.principal.sub, person_id, ref.issuer, ref.patient_id))


@router.post("/links", summary="Link two identities by hand", responses=_LINK_RESPONSES)
def link(spec: NewLink, archive: ArchiveDep, ctx: ApiContext) -> Linked:
    require_admin(ctx, "link")
    with archive.db.write_conn() as conn:
        person_id = persons.link(
            conn, ctx.principal.sub, (spec.a.issuer, spec.a.patient_id), (spec.b.issuer, spec.b.patient_id)
        )
    return Linked(person_id=person_id)


@router.get("/link-candidates", summary="The review queue, highest score first", responses=_RESPONSES)
def candidates(
    archive: ArchiveDep,
    ctx: ApiContext,
    status: Literal["open", "accepted", "rejected"] = "open",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> list[Candidate]:
    require_admin(ctx, "link-candidates")
    with archive.db.read() as session:
        views = persons.candidates(session, status, limit, offset)
    return [Candidate.model_validate(v, from_attributes=True) for v in views]


@router.post("/link-candidates/{candidate_id}/accept", summary="Link the pair", responses=_LINK_RESPONSES)
def accept(candidate_id: RowId, archive: ArchiveDep, ctx: ApiContext) -> Linked:
    require_admin(ctx, "link-candidates")
    with archive.db.write_conn() as conn:
        person_id = persons.decide_candidate(conn, ctx.principal.sub, candidate_id, accept=True)
    assert person_id is not None  # accepted: linked
    return Linked(person_id=person_id)


@router.post("/link-candidates/{candidate_id}/reject", summary="Keep the pair apart for good", responses=_RESPONSES)
def reject(candidate_id: RowId, archive: ArchiveDep, ctx: ApiContext) -> dict[str, str]:
    require_admin(ctx, "link-candidates")
    with archive.db.write_conn() as conn:
        persons.decide_candidate(conn, ctx.principal.sub, candidate_id, accept=False)
    return {"status": "rejected"}
