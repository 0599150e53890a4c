"""Patient: one institution's record of a patient (an identity of the patient index), read and searched.

A Patient is an identity, not the master person: that is what each institution knows and what
DICOM objects carry. Its `identifier`s are the institution's ID in its issuer's system (DESIGN.md:
`urn:oid:<IssuerOfPatientID>` for an OID, `urn:pacs:issuer:<IssuerOfPatientID>` for another
issuer, `urn:pacs:org:<org>` when the sender gave none) and a checked CNP
(`urn:pacs:national-id:RO-CNP`); `link` names the person's other identities the caller may see
(type `seealso`: each is a record of the same person kept by another institution). Names are
DICOM's, split into family and given names; search on them folds diacritics and case.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B.patient import Patient

from fhir_adapter.meta import versioned
from fhir_adapter.outcome import FhirError
from fhir_adapter.params import date_range, local_id, token, values
from storage.patients.identities import DICOM, ORG
from storage.patients.persons import issuer_label
from storage.query.patients import BirthDate, IdentifierMatch, PatientSearch

CNP_SYSTEM = "urn:pacs:national-id:RO-CNP"
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_GENDER = {"M": "male", "F": "female", "O": "other"}
_SEX = {"male": "M", "female": "F", "other": "O"}

#: the search parameters of Patient: name -> (FHIR type, what it matches); the CapabilityStatement
#: lists these, and `search_of` refuses any other
SEARCH_PARAMS: dict[str, tuple[str, str]] = {
    "_id": ("token", "the Patient's logical id"),
    "identifier": ("token", "system|value: an institution's ID in its issuer's system, or a CNP"),
    "name": ("string", "the start of any word of the name, diacritics and case folded"),
    "family": ("string", "the start of the family name, diacritics and case folded"),
    "given": ("string", "the start of a given name, diacritics and case folded"),
    "birthdate": ("date", "the birth date, with eq, ne, lt, le, gt, ge prefixes"),
    "gender": ("token", "male, female, other"),
}


def system_of(issuer_kind: str, issuer: str) -> str:
    """The identifier system of an identity's issuer (DESIGN.md "HTTP surface")."""
    if issuer_kind == DICOM:
        return f"urn:oid:{issuer}" if _OID.match(issuer) else f"urn:pacs:issuer:{issuer}"
    return issuer_label(issuer_kind, issuer)  # an organization's or an unregistered AE's namespace


def resource(row: Any, others: list[Any]) -> dict[str, Any]:
    """The Patient of an identity row (`storage.query.patients`), validated."""
    data: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(row.id),
        "identifier": identifiers_of(row),
        "active": True,
    }
    name = human_name(row.patient_name)
    if name:
        data["name"] = [name]
    if row.sex in _GENDER:
        data["gender"] = _GENDER[row.sex]
    if len(row.birth_date) == 8 and row.birth_date.isdigit():
        data["birthDate"] = f"{row.birth_date[:4]}-{row.birth_date[4:6]}-{row.birth_date[6:]}"
    if row.issuer_kind == ORG:
        data["managingOrganization"] = {"reference": f"Organization/{row.issuer}"}
    if others:
        data["link"] = [{"other": {"reference": f"Patient/{o.id}"}, "type": "seealso"} for o in others]
    return Patient.model_validate(versioned(data)).model_dump(mode="json", exclude_none=True)


def identifiers_of(row: Any) -> list[dict[str, Any]]:
    """An identity's identifiers: its ID in its issuer's system, and its checked CNP."""
    identifiers = [{"use": "usual", "system": system_of(row.issuer_kind, row.issuer), "value": row.patient_id}]
    if row.cnp:
        identifiers.append({"use": "official", "system": CNP_SYSTEM, "value": row.cnp})
    return identifiers


def human_name(person_name: str) -> dict[str, Any] | None:
    """A DICOM PN (`FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX`, its first component group) as a HumanName."""
    group = person_name.split("=", 1)[0]
    parts = (group.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (p.strip() for p in parts)
    name: dict[str, Any] = {"use": "official"}
    if family:
        name["family"] = family
    words = [w for w in f"{given} {middle}".split() if w]
    if words:
        name["given"] = words
    if prefix:
        name["prefix"] = prefix.split()
    if suffix:
        name["suffix"] = suffix.split()
    text = " ".join([*words, family]).strip()
    if text:
        name["text"] = text
    return name if len(name) > 1 else None


def search_of(query: Mapping[str, list[str]]) -> PatientSearch:
    """The storage search of a Patient search's parameters.

    Raises
    ------
    FhirError
        400: an unknown parameter, or a value that cannot be read (the diagnostics name it).
    """
    for name in query:
        if name not in SEARCH_PARAMS:
            raise FhirError(400, f"unknown search parameter for Patient: {name}")
    ids = [local_id(value) or -1 for value in values("_id", query.get("_id", []))]  # -1: matches nothing
    return PatientSearch(
        ids=tuple(ids),
        family=tuple(values("family", query.get("family", []))),
        given=tuple(values("given", query.get("given", []))),
        name=tuple(values("name", query.get("name", []))),
        birth=tuple(_birth(v) for v in values("birthdate", query.get("birthdate", []))),
        sex=tuple(_sex(v) for v in values("gender", query.get("gender", []))),
        identifiers=tuple(_identifier(v) for v in values("identifier", query.get("identifier", []))),
    )


def _birth(value: str) -> BirthDate:
    found = date_range("birthdate", value)
    return BirthDate(found.op, found.low, found.high)


def _sex(value: str) -> str:
    code = token(value)[1] or ""
    if code == "unknown":
        return ""
    if code not in _SEX:
        raise FhirError(400, f"gender: {value!r} is not male, female, other or unknown")
    return _SEX[code]


def _identifier(value: str) -> IdentifierMatch:
    system, code = token(value)
    if system == CNP_SYSTEM:
        return IdentifierMatch(None, code, national=True)
    if system is None:
        return IdentifierMatch(None, code)
    if not system:
        raise FhirError(400, "identifier: an empty system (|value) names no issuer")
    return IdentifierMatch(system, code)
