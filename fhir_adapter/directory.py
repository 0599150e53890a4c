"""Endpoint and Organization: the archive's DICOMweb endpoint and the registered providers."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.organization import Organization

from fhir_adapter.imaging_study import ENDPOINT_ID
from fhir_adapter.meta import versioned
from storage.access.orgs import OrgSummary

ORG_SYSTEM = "urn:pacs:org"
SEARCH_PARAMS: dict[str, dict[str, tuple[str, str]]] = {
    "Endpoint": {"_id": ("token", "dicomweb")},
    "Organization": {"_id": ("token", "the organization's id"), "name": ("string", "the start of its name")},
}


def endpoint(dicomweb_root: str) -> dict[str, Any]:
    """The archive's DICOMweb endpoint (WADO-RS, QIDO-RS, STOW-RS at one root)."""
    data = {
        "resourceType": "Endpoint",
        "id": ENDPOINT_ID,
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "name": "DICOMweb (WADO-RS, QIDO-RS, STOW-RS)",
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom", "application/dicom+json"],
        "address": dicomweb_root,
    }
    return Endpoint.model_validate(versioned(data)).model_dump(mode="json", exclude_none=True)


def organization(org: OrgSummary) -> dict[str, Any]:
    data = {
        "resourceType": "Organization",
        "id": org.id,
        "identifier": [{"system": ORG_SYSTEM, "value": org.id}],
        "active": not org.disabled,
        "name": org.name or org.id,
    }
    return Organization.model_validate(versioned(data)).model_dump(mode="json", exclude_none=True)
