"""Errors as RFC 9457 problem details (application/problem+json), one handler per error type."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from storage.errors import CannotTranscode, NotAuthorized, NotFound, OutOfResources, RejectedInput, StorageError

PROBLEM = "application/problem+json"


def problem(
    status: int, title: str, detail: str = "", headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def http_status(exc: StorageError) -> int:
    if isinstance(exc, RejectedInput):
        return 400
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, CannotTranscode):
        return 406
    if isinstance(exc, NotAuthorized):
        return 403
    if isinstance(exc, OutOfResources):
        return 503
    return 500


def install(app: FastAPI) -> None:
    @app.exception_handler(StorageError)
    async def _storage(_request: Request, exc: StorageError) -> JSONResponse:
        return problem(http_status(exc), exc.reason.replace("_", " "), exc.detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        return problem(exc.status_code, _title(exc.status_code), str(exc.detail), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", [])), "msg": e.get("msg", "")} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return problem(400, "Bad Request", detail, errors=errors)


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
