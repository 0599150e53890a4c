"""Security headers on every answer (DESIGN.md limits; OWASP's secure headers for an API).

Answers are JSON, DICOM, images and multipart bodies that a browser must never sniff into
something executable, frame, or cache: `X-Content-Type-Options: nosniff`, a
`Content-Security-Policy` that allows nothing (the /docs page gets the one its Swagger UI
needs), `Referrer-Policy: no-referrer` (a viewer's URLs carry study UIDs) and, on every path
that reaches patient data, `Cache-Control: no-store`: a shared workstation's browser cache or a
proxy must not keep images or names after the session.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NONE = "default-src 'none'; frame-ancestors 'none'"
#: Swagger UI (FastAPI's page): its script and style from jsDelivr, the description inline
DOCS = (
    "default-src 'none'; script-src 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
    "connect-src 'self'; frame-ancestors 'none'"
)
PATIENT_DATA = ("/dicomweb", "/wado", "/api", "/fhir")


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("X-Frame-Options", "DENY")
                headers["Content-Security-Policy"] = DOCS if path == "/docs" else NONE
                if path.startswith(PATIENT_DATA):
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, with_headers)
