"""The HTTP gateway: FastAPI app factory. DICOMweb, WADO-URI and health mount here.

Every route but /healthz, /readyz and /fhir/metadata goes through
`gateway.auth.get_principal`: attached where each router is included, so a route cannot
forget it, and for the FHIR router through the request context every route of it but
metadata takes (`tests/gateway/test_fhir.py` checks that every one answers 401 without a token).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from fhir_adapter import notify
from fhir_adapter import router as fhir
from gateway import deps, health, problems
from gateway.api import audit as audit_api
from gateway.api import orgs, patients, shares, worklist
from gateway.audit import AuditMiddleware
from gateway.auth import Authenticator, get_principal
from gateway.compression import GzipJsonMiddleware
from gateway.dicomweb import capabilities, delete, qido, stow, wado, wado_uri
from gateway.openapi import describe
from gateway.security import SecurityHeadersMiddleware
from storage.archive import Archive
from storage.settings import Settings

DICOMWEB = "/dicomweb"


def create_app(settings: Settings | None = None, archive: Archive | None = None) -> FastAPI:
    """Build the app; `archive` is shared when the SCP runs in the same process."""
    settings = settings or Settings()
    owned = archive is None
    arch = archive or Archive.open(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        notifier = notify.start(arch)  # FHIR Subscriptions: matched and sent by every gateway process
        yield
        notifier.stop()
        if owned:
            arch.close()

    app = FastAPI(
        title="Municipal PACS gateway",
        version="0.1.0",
        description="DICOMweb (QIDO-RS, WADO-RS, STOW-RS, WADO-URI) for authorized providers. "
        "Authenticate with `Authorization: Bearer <token>` (`pacs token`).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.archive = arch
    app.state.authenticator = Authenticator(settings)
    problems.install(app)
    app.add_middleware(problems.OutageMiddleware)  # the database or object store away: 503, retryable
    app.add_middleware(AuditMiddleware)  # one record per request to patient data, before its answer
    app.add_middleware(GzipJsonMiddleware)  # JSON answers only; multipart and images pass untouched
    app.add_middleware(SecurityHeadersMiddleware)  # on every answer, the problems and the 503 included
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type", "Range"],
            expose_headers=["Warning", "Content-Location", "Content-Range", "Content-Length", "Accept-Ranges"],
            max_age=600,
        )
    authenticated = [Depends(get_principal)]
    app.include_router(health.router)
    for module in (capabilities, qido, wado, stow, delete):
        app.include_router(module.router, prefix=DICOMWEB, dependencies=authenticated, responses=problems.COMMON)
    app.include_router(wado_uri.router, dependencies=authenticated, responses=problems.COMMON)
    for module in (worklist, orgs, shares, patients, audit_api):
        app.include_router(module.router, dependencies=authenticated, responses=problems.COMMON)
    _mount_fhir(app)
    _add_api_docs(app, authenticated)
    return app


def create_health_app(settings: Settings, archive: Archive) -> FastAPI:
    """The HTTP port of a DICOM-only process (`pacs serve --only dicom`): the probes a load
    balancer and an orchestrator ask (/healthz, /readyz) and /metrics (with a token), nothing
    else, so that the SCP is taken out of rotation when its database or object store is away."""
    app = FastAPI(title="Municipal PACS (DICOM service)", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.archive = archive
    app.state.authenticator = Authenticator(settings)
    problems.install(app)
    app.add_middleware(SecurityHeadersMiddleware)
    app.include_router(health.router)
    return app


def _mount_fhir(app: FastAPI) -> None:
    """The FHIR API at /fhir, with this app's request context, archive, base URL and OAuth
    endpoints wired in (DESIGN.md: the gateway passes its auth into the FHIR router). Its
    routes authenticate through the context, all but /fhir/metadata."""
    app.include_router(fhir.router, prefix=fhir.PREFIX)
    wired = (deps.fhir_context, deps.get_archive, deps.fhir_base, deps.fhir_oauth_uris)
    app.dependency_overrides.update(dict(zip(fhir.WIRING, wired, strict=True)))


def _add_api_docs(app: FastAPI, authenticated: list[Any]) -> None:
    """/openapi.json and /docs, behind a token like every path but the health probes."""

    @app.get("/openapi.json", include_in_schema=False, dependencies=authenticated)
    def openapi() -> JSONResponse:
        return JSONResponse(describe(app))

    @app.get("/docs", include_in_schema=False, dependencies=authenticated)
    def docs() -> HTMLResponse:
        # the page embeds the description: a browser would fetch /openapi.json without the token
        html = bytes(get_swagger_ui_html(openapi_url="", title=app.title).body).decode()
        spec = json.dumps(describe(app)).replace("</", "<\\/")
        return HTMLResponse(html.replace("url: ''", f"spec: {spec}"))
