"""Errors as RFC 9457 problem details (application/problem+json), one handler per error type."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_adapter import outcome as fhir_outcome
from fhir_adapter.outcome import FhirError
from fhir_adapter.router import PREFIX as FHIR  # errors under it answer OperationOutcomes
from storage.errors import (
    CannotTranscode,
    Conflict,
    Gone,
    NotAuthorized,
    NotFound,
    OutOfResources,
    RejectedInput,
    StorageError,
)
from storage.logs import event
from storage.outages import outage

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
_PROBLEM_BODY = {PROBLEM: {"schema": {"type": "object"}}}
#: what every authenticated route may answer besides its own codes, all as problem details
COMMON: dict[int | str, dict[str, Any]] = {
    400: {"description": "A parameter, header or body is malformed; the detail names it", "content": _PROBLEM_BODY},
    401: {
        "description": "No bearer token, or one that is malformed, wrongly signed or expired",
        "content": _PROBLEM_BODY,
    },
    403: {"description": "The caller lacks the role the operation needs", "content": _PROBLEM_BODY},
    404: {"description": "No such resource, or not one the caller may see", "content": _PROBLEM_BODY},
    405: {"description": "The path takes other methods (see Allow)", "content": _PROBLEM_BODY},
    406: {"description": "None of the accepted media types can be served", "content": _PROBLEM_BODY},
    503: {"description": "The index database or the blob store cannot be reached", "content": _PROBLEM_BODY},
}


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
    if isinstance(exc, Gone):
        return 410
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, CannotTranscode):
        return 406
    if isinstance(exc, NotAuthorized):
        return 403
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, OutOfResources):
        return 503
    return 500


def install(app: FastAPI) -> None:
    """The handlers of every error type: problem details, or an OperationOutcome under /fhir."""

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError) -> JSONResponse:
        if _is_fhir(request):
            return fhir_outcome.response(http_status(exc), exc.detail or exc.reason.replace("_", " "))
        return problem(http_status(exc), exc.reason.replace("_", " "), exc.detail)

    @app.exception_handler(FhirError)
    async def _fhir(_request: Request, exc: FhirError) -> JSONResponse:
        return fhir_outcome.response(exc.status, exc.diagnostics, code=exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # RFC 9110 15.5.6: every method the path takes, not one route's
            headers["Allow"] = allowed_methods(request)
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=headers)
        if _is_fhir(request):
            return fhir_outcome.response(exc.status_code, _fhir_detail(request, exc), headers=headers or None)
        return problem(exc.status_code, _title(exc.status_code), str(exc.detail), headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", [])), "msg": _message(e)} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        if _is_fhir(request):
            return fhir_outcome.response(400, detail)
        return problem(400, "Bad Request", detail, errors=errors)


def _is_fhir(request: Request) -> bool:
    path = request.url.path
    return path == FHIR or path.startswith(FHIR + "/")


def _fhir_detail(request: Request, exc: StarletteHTTPException) -> str:
    """What an OperationOutcome says of a routing or auth failure under /fhir."""
    if exc.status_code == 404 and exc.detail == "Not Found":  # no route: Starlette's own 404
        kind = request.url.path[len(FHIR) + 1 :].split("/")[0]
        return f"no such resource, resource type or operation: {kind[:64]!r} with this path"
    if exc.status_code == 405:
        return f"{request.method} is not supported here (the resources but Subscription are read-only views)"
    return str(exc.detail)


def _message(error: Any) -> str:
    """pydantic's message, in DICOM's words where the rule is DICOM's (a UID in the path)."""
    loc = tuple(error.get("loc", ()))
    title = _UIDS.get(str(loc[-1])) if loc[:1] == ("path",) and loc else None
    if title and error.get("type") in ("string_pattern_mismatch", "string_too_long"):
        return f"{str(error.get('input', ''))[:80]!r} is not a valid {title} (PS3.5 9.1)"
    return str(error.get("msg", ""))


_UIDS = {"study": "Study Instance UID", "series": "Series Instance UID", "sop": "SOP Instance UID"}


def allowed_methods(request: Request) -> str:
    """Every method some route of the app takes on the request's path, and OPTIONS.

    Asked of the routes themselves (a full match with that method), so routers included with a
    prefix answer for their routes too.
    """
    methods = {"OPTIONS"}
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            methods.add(method)
    return ", ".join(sorted(methods))


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


#: seconds a client is told to wait before retrying during an outage
RETRY_AFTER = "5"


class OutageMiddleware:
    """A request that failed because the database or the object store is away answers 503 with
    Retry-After (an OperationOutcome under /fhir), not 500: a client, or nginx for a GET,
    retries, and the answer it then gets is a right one (`storage.outages`). One warning line
    per such request; any other failure goes on to the last-resort 500 with its traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            backend = outage(exc)
            if backend is None or started:
                raise
            event(log, "http.unavailable", level=logging.WARNING, path=scope["path"][:200], backend=backend)
            detail = f"the {backend} is unavailable; retry in a few seconds"
            headers = {"Retry-After": RETRY_AFTER}
            path = scope["path"]
            if path == FHIR or path.startswith(FHIR + "/"):
                answer: Response = fhir_outcome.response(503, detail, headers=headers)
            else:
                answer = problem(503, "Service Unavailable", detail, headers=headers)
            await answer(scope, receive, send)
