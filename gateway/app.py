"""The HTTP gateway: FastAPI app factory (DICOMweb, FHIR and admin routes mount here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import health
from storage.archive import Archive
from storage.settings import Settings


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

    app = FastAPI(title="Municipal PACS gateway", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.archive = arch
    app.include_router(health.router)
    return app
