"""IHE PIXm (ITI-83, Mobile Patient Identifier Cross-reference Query): `Patient/$ihe-pix`.

A regional network's other systems ask: this patient, known by `sourceIdentifier` (system|value)
in one assigning authority, what is it known as elsewhere? The answer is the patient index's
links: every identity of the same person the caller may see (its own record's identifiers
included, as PIXm allows), as `targetIdentifier` (each identity's ID in its issuer's system, and
its checked CNP) and `targetId` (its Patient). `targetSystem` narrows the answer to those systems.

The statuses are PIXm's: an assigning authority no identity has is 400 (`code-invalid`), a
patient it does not have (or one the caller may not see: the same answer) 404, a `targetSystem`
no identity has 403 (`targetSystem not found`); a known patient with no identifier in the asked
systems is 200 with no parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fhir.resources.R4B.parameters import Parameters

from fhir_adapter.outcome import FhirError
from fhir_adapter.params import token, values
from fhir_adapter.patient import CNP_SYSTEM, identifiers_of
from storage.query.patients import IdentifierMatch

PARAMS = ("sourceIdentifier", "targetSystem", "_format")


def source_of(query: Mapping[str, list[str]]) -> IdentifierMatch:
    """The identity a query names (`sourceIdentifier=system|value`, exactly one).

    Raises
    ------
    FhirError
        400: an unknown parameter, or a sourceIdentifier missing, repeated or without system or value.
    """
    for name in query:
        if name not in PARAMS:
            raise FhirError(400, f"unknown parameter for $ihe-pix: {name}")
    given = values("sourceIdentifier", query.get("sourceIdentifier", []))
    if len(given) != 1:
        raise FhirError(400, "sourceIdentifier: exactly one system|value")
    system, value = token(given[0])
    if not system or not value:
        raise FhirError(400, "sourceIdentifier: a system and a value (system|value)")
    if system == CNP_SYSTEM:
        return IdentifierMatch(None, value, national=True)
    return IdentifierMatch(system, value)


def targets_of(query: Mapping[str, list[str]]) -> frozenset[str]:
    """The systems asked for (`targetSystem`, repeated or comma-separated); empty: all."""
    return frozenset(values("targetSystem", query.get("targetSystem", [])))


def answer(rows: Iterable[Any], targets: frozenset[str]) -> dict[str, Any]:
    """The Parameters of a PIXm answer: each identity's identifiers in the asked systems, and its
    Patient reference (once per identity, when one of its identifiers is asked for)."""
    parameters: list[dict[str, Any]] = []
    for row in rows:
        found = [i for i in identifiers_of(row) if not targets or i["system"] in targets]
        parameters += [
            {"name": "targetIdentifier", "valueIdentifier": {k: v for k, v in i.items() if k != "use"}} for i in found
        ]
        if found:
            parameters.append({"name": "targetId", "valueReference": {"reference": f"Patient/{row.id}"}})
    data: dict[str, Any] = {"resourceType": "Parameters"}
    if parameters:
        data["parameter"] = parameters
    return Parameters.model_validate(data).model_dump(mode="json", exclude_none=True)
