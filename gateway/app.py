"""The HTTP gateway: FastAPI app factory. DICOMweb, WADO-URI and health mount here.

Every route but /healthz, /readyz and /metrics (and, later, /fhir/metadata) goes through
`gateway.auth.get_principal`, attached where each router is included, so a route cannot
forget it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from gateway import capabilities, delete, health, problems, qido, stow, wado, wado_uri
from gateway.auth import Authenticator, get_principal
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
        yield
        if owned:
            arch.close()

    app = FastAPI(
        title="Municipal PACS gateway",
        version="0.1.0",
        description="DICOMweb (QIDO-RS, WADO-RS, STOW-RS, WADO-URI) for authorized providers. "
        "Authenticate with `Authorization: Bearer <token>` (`pacs token`).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.archive = arch
    app.state.authenticator = Authenticator(settings)
    problems.install(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type", "Range"],
            expose_headers=["Warning", "Content-Location", "Content-Range", "Content-Length"],
            max_age=600,
        )
    authenticated = [Depends(get_principal)]
    app.include_router(health.router)
    for module in (capabilities, qido, wado, stow, delete):
        app.include_router(module.router, prefix=DICOMWEB, dependencies=authenticated)
    app.include_router(wado_uri.router, dependencies=authenticated)
    return app
