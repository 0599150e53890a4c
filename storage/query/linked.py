"""Search across links: a patient ID with its issuer finds the whole person, not one institution's record.

DESIGN.md "Patients across institutions" and [7/10]: the master patient index links the same
person's identities across institutions (PID 123 at the hospital, 9-44 at a clinic). A query
(QIDO-RS or C-FIND, at every level) that gives both PatientID (0010,0020) and IssuerOfPatientID
(0010,0021), each as one value without wild cards, matches the studies of every identity linked
to that one, which the caller may see, and, at PATIENT level, answers each of those identities
with its own ID, the caller's own among them. The issuer is written as the admin API writes it:
the IssuerOfPatientID as sent, `urn:pacs:org:<org>` for IDs a sender gave without an issuer
(its organization's namespace), or `urn:pacs:person` for the master person's ID itself.

A query naming another institution's identity expands only when the caller sees a study of that
identity, so a guessed ID teaches it nothing it cannot already see (with the care relationship on
and the patient not opted out, the caller sees them; otherwise the query matches as a plain ID).
Without an issuer, PatientID matches the IDs as sent, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import aliased

from storage.access.context import Context
from storage.access.policy import visible_to
from storage.index.models import PatientIdentity, Person, Study
from storage.patients.persons import issuer_key
from storage.query.matching import clean, has_wildcard

PATIENT_ID, ISSUER = "00100020", "00100021"
#: the issuer that names a master person's ID (`/api/persons/{person_id}`)
PERSON_ISSUER = "urn:pacs:person"
_MAX_PERSON_ID = 2**63 - 1


def named(keys: Mapping[str, str]) -> tuple[str, str] | None:
    """(issuer, patient ID) when `keys` give both as single values without wild cards."""
    patient_id, issuer = clean(keys.get(PATIENT_ID, "")), clean(keys.get(ISSUER, ""))
    if not patient_id or not issuer or has_wildcard(patient_id) or has_wildcard(issuer) or "\\" in patient_id + issuer:
        return None
    return issuer, patient_id


def linked_identities(issuer: str, patient_id: str, ctx: Context) -> Select[Any]:
    """The identities linked to (issuer, patient ID), itself included (`PatientIdentity.id`)."""
    if issuer == PERSON_ISSUER:
        return _of_person(patient_id)
    kind, value = issuer_key(issuer)

    def itself(table: Any) -> ColumnElement[bool]:
        return and_(table.issuer_kind == kind, table.issuer == value, table.patient_id == patient_id)

    return _with_person(itself, ctx)


def linked_to(identity_id: int, ctx: Context) -> Select[Any]:
    """The identities linked to identity `identity_id` (FHIR's `ImagingStudy?patient=`), itself
    included, under the same rule as `linked_identities`."""
    return _with_person(lambda table: table.id == identity_id, ctx)


def _with_person(itself: Callable[[Any], ColumnElement[bool]], ctx: Context) -> Select[Any]:
    """The identities matching `itself`, and those of its person when `ctx` sees one of its studies."""
    one = aliased(PatientIdentity)
    seen = select(Study.id).where(Study.identity_id == one.id, visible_to(ctx)).correlate_except(Study).exists()
    person = select(one.person_id).where(itself(one), seen).scalar_subquery()
    return select(PatientIdentity.id).where(or_(itself(PatientIdentity), PatientIdentity.person_id == person))


def _of_person(patient_id: str) -> Select[Any]:
    """The identities of master person `patient_id`, or of the person it was merged into."""
    if not patient_id.isdigit() or int(patient_id) > _MAX_PERSON_ID:
        return select(PatientIdentity.id).where(PatientIdentity.id.is_(None))
    wanted = int(patient_id)
    survivor = select(func.coalesce(Person.merged_into, Person.id)).where(Person.id == wanted).scalar_subquery()
    return select(PatientIdentity.id).where(PatientIdentity.person_id == survivor)


def across_links(
    keys: Mapping[str, str], ctx: Context, column: Any
) -> tuple[dict[str, str], ColumnElement[bool] | None]:
    """(the keys left to match, the condition on `column`, an identity ID column) for a query
    that names one identity; (`keys`, None) for any other."""
    found = named(keys)
    if found is None:
        return dict(keys), None
    rest = {tag: value for tag, value in keys.items() if tag not in (PATIENT_ID, ISSUER)}
    return rest, column.in_(linked_identities(*found, ctx))
