"""The CapabilityStatement (`/fhir/metadata`), derived from the routes the app serves.

Nothing here is kept by hand beside the routes: the resource types and their interactions are
read from the FHIR router's routes (`GET /X/{id}` is read, `PUT` update, `DELETE` delete,
`GET /X` is search-type, `POST /X` create, `POST /X/$op` an operation, paths relative to the
FHIR base), and each type's search parameters from the
module that parses them (`SEARCH_PARAMS`, which also refuses any other). So a route added or
removed changes the statement, and a test compares the two.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from starlette.routing import BaseRoute

from fhir_adapter import audit_event, consent, directory, imaging_study, patient, subscription

FHIR_VERSION = "4.0.1"
#: each type's search parameters: name -> (FHIR type, what it matches)
SEARCH_PARAMS: dict[str, Mapping[str, tuple[str, str]]] = {
    "Patient": patient.SEARCH_PARAMS,
    "ImagingStudy": imaging_study.SEARCH_PARAMS,
    "Endpoint": directory.SEARCH_PARAMS["Endpoint"],
    "Organization": directory.SEARCH_PARAMS["Organization"],
    "Consent": consent.SEARCH_PARAMS,
    "AuditEvent": audit_event.SEARCH_PARAMS,
    "Subscription": subscription.SEARCH_PARAMS,
}
INCLUDES = {"ImagingStudy": ["ImagingStudy:patient"]}
#: the canonical definitions of the operations served
OPERATIONS = {
    "ihe-pix": "https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix",
    "match": "http://hl7.org/fhir/OperationDefinition/Patient-match",
}
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
_READ_ONLY = (
    "A view of what DICOM senders stored and of the patient index: create, update, patch and "
    "delete are answered 405 with an OperationOutcome."
)
#: what a type whose writes are served says of them
DOCUMENTATION = {
    "Subscription": "Integrators and admins create, update and delete their organization's Subscriptions: "
    "channel rest-hook (headers and an application/fhir+json payload optional), criteria an ImagingStudy "
    "search. A study is notified once no instance has arrived for PACS_SUBSCRIPTION_QUIET seconds, and "
    "only if the subscription's owner may see it.",
}


#: an instance path's method -> the interaction it serves
_INSTANCE = {"GET": "read", "PUT": "update", "DELETE": "delete"}


def interactions(routes: Iterable[BaseRoute]) -> dict[str, dict[str, list[str]]]:
    """resource type -> {"interaction": [...], "operation": [...]} of `routes` (paths relative
    to the FHIR base)."""
    found: dict[str, dict[str, list[str]]] = {}
    for route in routes:
        path: str = getattr(route, "path", "")
        methods: set[str] = getattr(route, "methods", None) or set()
        parts = path.lstrip("/").split("/")
        if not parts[0][:1].isupper():
            continue  # metadata, not a resource type
        kinds = found.setdefault(parts[0], {"interaction": [], "operation": []})
        if len(parts) == 1 and "GET" in methods:
            kinds["interaction"].append("search-type")
        elif len(parts) == 2 and parts[1].startswith("$"):
            kinds["operation"].append(parts[1][1:])
        elif len(parts) == 1 and "POST" in methods:
            kinds["interaction"].append("create")
        elif len(parts) == 2 and parts[1].startswith("{"):
            kinds["interaction"].extend(_INSTANCE[m] for m in sorted(methods) if m in _INSTANCE)
    return found


def capability_statement(routes: Iterable[BaseRoute], base: str, oauth: Mapping[str, str] | None) -> dict[str, Any]:
    """The statement of what `routes` serve at `base`, with SMART-on-FHIR's OAuth endpoints
    when an external identity provider is configured (`oauth`)."""
    resources = []
    for resource_type, kinds in sorted(interactions(routes).items()):
        entry: dict[str, Any] = {
            "type": resource_type,
            "interaction": [{"code": code} for code in sorted(set(kinds["interaction"]), reverse=True)],
            "versioning": "versioned",
            "readHistory": False,
            "updateCreate": False,
            "conditionalRead": "not-match",
            "documentation": DOCUMENTATION.get(resource_type, _READ_ONLY),
        }
        params = SEARCH_PARAMS.get(resource_type, {})
        if "search-type" in kinds["interaction"] and params:
            entry["searchParam"] = [
                {"name": name, "type": kind, "documentation": what} for name, (kind, what) in params.items()
            ]
        if resource_type in INCLUDES:
            entry["searchInclude"] = INCLUDES[resource_type]
        if kinds["operation"]:
            entry["operation"] = [
                {"name": name, "definition": OPERATIONS[name]} for name in sorted(set(kinds["operation"]))
            ]
        resources.append(entry)
    data = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "kind": "instance",
        "software": {"name": "Municipal PACS"},
        "implementation": {"description": "Municipal PACS FHIR R4 API", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [{"mode": "server", "security": _security(oauth), "resource": resources}],
    }
    return CapabilityStatement.model_validate(data).model_dump(mode="json", exclude_none=True)


def _security(oauth: Mapping[str, str] | None) -> dict[str, Any]:
    if not oauth:
        return {
            "cors": True,
            "description": "Every path but /fhir/metadata needs Authorization: Bearer <token> (`pacs token`).",
        }
    return {
        "cors": True,
        "service": [{"coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}]}],
        "extension": [
            {
                "url": OAUTH_URIS,
                "extension": [{"url": name, "valueUri": uri} for name, uri in sorted(oauth.items())],
            }
        ],
        "description": "Bearer tokens of the identity provider; every path but /fhir/metadata needs one.",
    }
