"""Liveness and readiness (no token: load balancers and orchestrators probe them), and the
Prometheus metrics (a token, like every other path: configure the scraper's bearer token)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.deps import ArchiveDep, PrincipalDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the index database and the blob store are reachable")
def readyz(archive: ArchiveDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        archive.db.check()
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure as not ready
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        archive.blobs.check()
        checks["storage"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["storage"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(archive: ArchiveDep, _caller: PrincipalDep) -> Response:
    registry: CollectorRegistry = REGISTRY
    if archive.settings.metrics_dir is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(archive.settings.metrics_dir))  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
