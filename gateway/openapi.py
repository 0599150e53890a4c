"""The OpenAPI description, corrected to say what the routes really answer.

FastAPI infers `application/json` bodies and 422 validation errors; our routes stream
multipart/related, DICOM JSON and images, answer bad input with 400 problem+json and a
missing token with 401. This rewrites those parts of the generated description, keyed on
the route's path, so /docs shows a client what it will get.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI

from gateway.problems import PROBLEM

MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
MULTIPART_OCTETS = 'multipart/related; type="application/octet-stream"'
DICOM_JSON = "application/dicom+json"
IMAGES = ["image/jpeg", "image/png", "image/gif"]
UNAUTHENTICATED = ("/healthz", "/readyz")

#: (path pattern, media types of a 200 answer), first match wins
_SUCCESS: list[tuple[re.Pattern[str], list[str]]] = [
    (re.compile(r"/(rendered|thumbnail)$"), IMAGES),
    (re.compile(r"^/dicomweb/.*/metadata$"), [DICOM_JSON]),
    (re.compile(r"/(frames/\{frames\}|bulk/\{path\})$"), [MULTIPART_OCTETS]),
    (
        re.compile(r"^/dicomweb/studies/\{study\}/series/\{series\}/instances/\{sop\}$"),
        [MULTIPART_DICOM, "application/dicom"],
    ),
    (re.compile(r"^/dicomweb/studies/\{study\}(/series/\{series\})?$"), [MULTIPART_DICOM]),
    (
        re.compile(r"^/dicomweb/(studies|series|instances)$|/(series|instances)$"),
        [DICOM_JSON, 'multipart/related; type="application/dicom+xml"'],
    ),
    (re.compile(r"^/wado$"), ["application/dicom", "image/jpeg", "image/png"]),
]


def describe(app: FastAPI) -> dict[str, Any]:
    """The generated description with the real media types and error answers.

    FastAPI caches the generated description; the corrections are made in place on it and
    are idempotent, so every caller sees the same corrected document.
    """
    spec = app.openapi()
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            _correct(path, method, operation)
    return spec


def _correct(path: str, method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if "422" in responses:
        del responses["422"]
        responses.setdefault("400", {"description": "Bad request"})
    for code, answer in responses.items():
        declared = set(answer.get("content", {})) - {"application/json"}
        if code[0] in "45" and not declared:  # STOW's 409 is a store response, not a problem
            answer["content"] = {PROBLEM: {}}
    if not path.startswith(UNAUTHENTICATED):
        responses.setdefault(
            "401", {"description": "Missing, malformed, wrongly signed or expired token", "content": {PROBLEM: {}}}
        )
    if method == "get" and "200" in responses:
        for pattern, media_types in _SUCCESS:
            if pattern.search(path):
                responses["200"]["content"] = {m: {} for m in media_types}
                break
