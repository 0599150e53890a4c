"""FHIR errors: every failure under /fhir answers an OperationOutcome with the right status.

The gateway's error handlers hand a /fhir request's failure here (`response`), so an unknown
resource type, a bad parameter, a missing token, a refused role or an invisible resource all
answer in FHIR's own shape, with the status the storage error's type means.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.operationoutcome import OperationOutcome
from starlette.responses import JSONResponse

#: FHIR's JSON media type (R4 3.1.0.1.2)
FHIR_JSON = "application/fhir+json"

#: HTTP status -> the IssueType code (R4 ValueSet issue-type) an outcome of that status carries
_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    429: "throttled",
    503: "transient",
}


class FhirError(Exception):
    """A request the FHIR API cannot answer: its status and what to tell the client."""

    def __init__(self, status: int, diagnostics: str, code: str | None = None) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code or _CODES.get(status, "exception")


def outcome(status: int, diagnostics: str, code: str | None = None) -> dict[str, Any]:
    """An OperationOutcome (validated by fhir.resources) as JSON-ready data."""
    resource = OperationOutcome.model_validate(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error" if status < 500 else "fatal",
                    "code": code or _CODES.get(status, "exception"),
                    "diagnostics": diagnostics[:1000] or "error",
                }
            ],
        }
    )
    return resource.model_dump(mode="json", exclude_none=True)


def response(
    status: int, diagnostics: str, headers: dict[str, str] | None = None, code: str | None = None
) -> JSONResponse:
    """The answer to a failed /fhir request."""
    body = outcome(status, diagnostics, code)
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON, headers=headers)
