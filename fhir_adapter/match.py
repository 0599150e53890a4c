"""`Patient/$match` (FHIR R4 Patient-match): the patient index's model, asked by a provider's system.

The request is a Parameters resource with a Patient (`resource`), and optionally
`onlyCertainMatches` and `count`. The Patient's name, birth date, gender, address and
identifiers (a CNP in `urn:pacs:national-id:RO-CNP`; others as issuer and value) are compared
with the identities the caller may see, exactly as the linker compares two identities
(`storage.patients.model.compare`), so an answer here is what linking would decide: `certain`
for a score at or above the link threshold (or the same valid CNP), `probable` in the review
band. The searchset Bundle carries each match with `search.score` (the score over the link
threshold, at most 1) and the match-grade extension.
"""

from __future__ import annotations

import math
from typing import Any

from fhir.resources.R4B.parameters import Parameters
from pydantic import ValidationError

from fhir_adapter.outcome import FhirError
from fhir_adapter.patient import CNP_SYSTEM
from storage.patients import cnp, names
from storage.patients.model import LINK, Demographics, Model, Verdict, parse_address
from storage.patients.persons import issuer_key

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
#: the most matches one answer holds, and the default
MAX_COUNT, DEFAULT_COUNT = 50, 10
_SEX = {"male": "M", "female": "F", "other": "O"}


def request_of(body: Any) -> tuple[Demographics, bool, int]:
    """(what to match, only certain matches, how many) of a `$match` request body.

    Raises
    ------
    FhirError
        400: not a Parameters resource with one Patient, or a parameter that cannot be read.
    """
    try:
        parameters = Parameters.model_validate(body)
    except (ValidationError, ValueError, TypeError) as exc:
        raise FhirError(400, f"not a Parameters resource: {str(exc).splitlines()[0][:200]}") from None
    patient: dict[str, Any] | None = None
    only_certain, wanted = False, DEFAULT_COUNT
    for parameter in parameters.parameter or []:
        if parameter.name == "resource" and parameter.resource is not None:
            patient = parameter.resource.model_dump(mode="json", exclude_none=True)
        elif parameter.name == "onlyCertainMatches":
            only_certain = bool(parameter.valueBoolean)
        elif parameter.name == "count":
            wanted = max(1, min(int(parameter.valueInteger or DEFAULT_COUNT), MAX_COUNT))
        else:
            raise FhirError(400, f"unknown parameter of $match: {str(parameter.name)[:64]}")
    if patient is None or patient.get("resourceType") != "Patient":
        raise FhirError(400, "$match needs a Patient as the parameter `resource`")
    return demographics_of(patient), only_certain, wanted


def demographics_of(patient: dict[str, Any]) -> Demographics:
    """What the model compares of a FHIR Patient."""
    official = (patient.get("name") or [{}])[0]
    family = str(official.get("family", ""))
    given = " ".join(str(g) for g in official.get("given", []))
    birth = str(patient.get("birthDate", "")).replace("-", "")
    sex = _SEX.get(str(patient.get("gender", "")), "")
    address = (patient.get("address") or [None])[0]
    national, others = None, set()
    for identifier in patient.get("identifier", []):
        system, value = str(identifier.get("system", "")), str(identifier.get("value", ""))
        if system == CNP_SYSTEM:
            national = cnp.valid_for(value, sex=sex, birth_date=birth if len(birth) == 8 else "")
        elif system and value:
            others.add((issuer_key(system)[1], value))
    return Demographics(
        names.parse(f"{family}^{given}"),
        birth if len(birth) == 8 and birth.isdigit() else "",
        sex,
        parse_address(_address_text(address)) if address else None,
        national,
        frozenset(others),
    )


def grade(verdict: Verdict) -> str:
    return "certain" if verdict.decision == LINK else "probable"


def score(verdict: Verdict, model: Model) -> float:
    """The score as FHIR's `search.score` (0 to 1): over the link threshold, at most 1."""
    if math.isinf(verdict.score):
        return 1.0
    return round(max(0.0, min(1.0, verdict.score / model.link_at)), 3)


def with_grade(resource: dict[str, Any], verdict: Verdict, model: Model) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the Patient, its Bundle entry's `search`) of one match."""
    search = {
        "mode": "match",
        "score": score(verdict, model),
        "extension": [{"url": MATCH_GRADE, "valueCode": grade(verdict)}],
    }
    return resource, search


def _address_text(address: dict[str, Any]) -> str:
    if address.get("text"):
        return str(address["text"])
    parts = [*address.get("line", []), address.get("city", ""), address.get("postalCode", "")]
    return ", ".join(str(p) for p in parts if p)
