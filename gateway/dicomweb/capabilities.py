"""GET /dicomweb: what this DICOMweb service supports, in plain JSON.

The list of transactions is read from the app's own OpenAPI description (paths, methods,
summaries, query parameters, media types), so it names exactly the routes that are mounted,
never a plan. Around it, the facts a route table cannot say: how to authenticate, what STOW
accepts and how it answers, and the FailureReason codes it uses.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.deps import SettingsDep, dicomweb_root
from gateway.dicomweb.stow import ALREADY_PRESENT, DICOM, DICOM_JSON
from gateway.openapi import describe
from storage.errors import OutOfResources, RejectedInput, StorageError, StudyMismatch

router = APIRouter(tags=["capabilities"])

_SERVED = ("/dicomweb", "/wado")
_METHODS = ("get", "post", "put", "delete")


@router.get("", summary="What this DICOMweb service supports (transactions, media types, parameters)")
def capabilities(request: Request, settings: SettingsDep) -> dict[str, Any]:
    return {
        "standard": "DICOM PS3.18 (DICOMweb)",
        "root": dicomweb_root(request, settings),
        "authentication": {
            "scheme": "Bearer",
            "header": "Authorization: Bearer <token>",
            "roles": ["clinician", "integrator", "admin"],
            "delete_needs": "admin",
        },
        "transactions": _transactions(describe(request.app)),
        "store": {
            "request_media_type": f'multipart/related; type="{DICOM}"',
            "response_media_type": DICOM_JSON,
            "transfer_syntaxes": "any; objects are kept byte for byte as received, never transcoded",
            "already_present": f"acknowledged in ReferencedSOPSequence with WarningReason 0x{ALREADY_PRESENT:04X}",
            "failure_reasons": _failure_reasons(),
            "status_codes": {"200": "all stored", "202": "some failed", "409": "all failed"},
        },
        "openapi": "/openapi.json",
    }


def _transactions(openapi: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for path, item in openapi.get("paths", {}).items():
        if not path.startswith(_SERVED):
            continue
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            out.append(
                {
                    "service": (op.get("tags") or ["other"])[0],
                    "method": method.upper(),
                    "path": path,
                    "summary": op.get("summary", ""),
                    "query_parameters": [p["name"] for p in op.get("parameters", []) if p.get("in") == "query"],
                    "request_media_types": sorted(op.get("requestBody", {}).get("content", {})),
                    "response_media_types": _response_types(op.get("responses", {})),
                }
            )
    return out


def _response_types(responses: dict[str, Any]) -> list[str]:
    """Media types of the 2xx answers a route declares.

    FastAPI describes a route that declares nothing as `application/json` with an empty
    schema; such a route may answer anything, so that entry is left out rather than guessed.
    """
    types: set[str] = set()
    for code, resp in responses.items():
        if code.startswith("2"):
            types.update(t for t, body in resp.get("content", {}).items() if body.get("schema") != {})
    return sorted(types)


def _failure_reasons() -> dict[str, str]:
    """reason -> FailureReason, from the error types STOW can report."""
    seen: dict[str, str] = {}
    todo: list[type[StorageError]] = [RejectedInput, OutOfResources, StudyMismatch]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls is not RejectedInput:
            seen[cls.reason] = f"0x{cls.status:04X}"
    return dict(sorted(seen.items()))
