"""Consent: the patient's opt-out or opt-in of cross-organization sharing, read and searched.

Each recorded choice (`PUT /api/persons/{id}/consent`) is one Consent, the newest `active` and
the ones before it `inactive`; its `patient` is the record the caller knows the person by. The
policy is the archive's cross-organization sharing rule (DESIGN.md, care relationship): an
opt-out is `provision.type` deny (only the person's own providers and explicit shares), an
opt-in permit. Who recorded it for the patient, and the note, are in `sourceAttachment.title`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B.consent import Consent

from fhir_adapter.meta import fhir_instant, versioned
from fhir_adapter.outcome import FhirError
from fhir_adapter.params import RESULT_PARAMS, local_id, values
from storage.query.consents import ConsentRow

SEARCH_PARAMS: dict[str, tuple[str, str]] = {
    "patient": ("reference", "Patient/<id>: the choices recorded for that patient's person (required)"),
}
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
POLICY = "urn:pacs:policy:cross-organization-sharing"


def resource(row: ConsentRow) -> dict[str, Any]:
    """The Consent of a recorded choice, validated."""
    opted_out = row.cross_org_sharing == "opt-out"
    title = f"recorded by {row.recorded_by}" + (f": {row.note}" if row.note else "")
    data: dict[str, Any] = {
        "resourceType": "Consent",
        "id": str(row.id),
        "meta": {"lastUpdated": fhir_instant(row.time)},
        "status": "active" if row.active else "inactive",
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"reference": f"Patient/{row.identity_id}"},
        "dateTime": fhir_instant(row.time),
        "policy": [{"uri": POLICY}],
        "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTOUT" if opted_out else "OPTIN"}]},
        "provision": {"type": "deny" if opted_out else "permit"},
        "sourceAttachment": {"title": title[:500]},
    }
    if row.org:
        data["organization"] = [{"reference": f"Organization/{row.org}"}]
    return Consent.model_validate(versioned(data)).model_dump(mode="json", exclude_none=True)


def patient_of(query: Mapping[str, list[str]]) -> int:
    """The Patient id a Consent search names (-1: one this server never gives).

    Raises
    ------
    FhirError
        400: an unknown parameter, or no `patient` (a person's choices are read one patient at a time).
    """
    for name in query:
        if name not in SEARCH_PARAMS and name not in RESULT_PARAMS:
            raise FhirError(400, f"unknown search parameter for Consent: {name}")
    given = values("patient", query.get("patient", []))
    if len(set(given)) != 1:
        raise FhirError(400, "patient: one patient (Patient/<id>) is required")
    reference = given[0].removeprefix("Patient/")
    return local_id(reference) or -1
