"""One audit record per HTTP request that reaches patient data, written before the answer starts.

DESIGN.md "Access, shares, emergency access, consent and audit": every read or write of
patient data and every refusal (401, 403, 404 on an invisible object) is recorded, and the
record is committed before or with the answer, or the request fails. This middleware sees
every request under the audited prefixes, whatever route (or none) answers it: when the
answer's status line is about to go out, it records who asked (the request context, else the
token's principal, else nobody), from where, the route, the study (the path's, the query's, or
those a STOW-RS request wrote), the patient a query named, and the outcome, and waits for the
commit (`storage.audit.trail`, batched with the other requests'). When that fails the client
gets 503 instead of the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storage.access.context import AccessEvent, Channel, Context
from storage.access.principal import Principal
from storage.logs import event

log = logging.getLogger(__name__)

#: path prefix -> channel: the paths that reach patient data (not /healthz, /metrics, /docs)
AUDITED = (("/dicomweb", Channel.DICOMWEB), ("/wado", Channel.WADO_URI), ("/api", Channel.API), ("/fhir", Channel.FHIR))
#: answered without a token and without patient data
UNAUDITED = frozenset({"/fhir/metadata"})


def outcome_of(status: int) -> str:
    """The audit outcome of an HTTP status."""
    if status < 400:
        return "ok"
    return {401: "denied", 403: "refused", 404: "not-found", 429: "limited"}.get(
        status, "failed" if status < 500 else "error"
    )


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        channel = _channel(scope)
        if channel is None:
            await self.app(scope, receive, send)
            return
        replaced = False

        async def audited_send(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the original answer's body, after the 503 that replaced it
            if message["type"] == "http.response.start":
                if not await _recorded(scope, channel, int(message["status"])):
                    replaced = True
                    await _unavailable(send)
                    return
            await send(message)

        await self.app(scope, receive, audited_send)


def _channel(scope: Scope) -> Channel | None:
    if scope["type"] != "http" or scope["method"] == "OPTIONS":
        return None
    path: str = scope["path"]
    if path in UNAUDITED:
        return None
    for prefix, channel in AUDITED:
        if path == prefix or path.startswith(prefix + "/"):
            return channel
    return None


def record_early(request: Request, status: int = 200) -> None:
    """Commit the request's record now, as if it will answer `status`.

    For a route that knows its outcome before it has built its answer (a search, once its rows
    are read; STOW-RS, once its last part is stored). The route's worker thread commits it
    itself when no other commit is under way (`AuditTrail.submit(lead=True)`), so the answer
    does not wait for a hand-off to the writer thread and back through the event loop. When the
    answer's status turns out to have another outcome, the middleware records that too, so the
    trail then holds both (what was read, then how the answer ended). A route outside the
    audited paths records nothing.
    """
    channel = _channel(request.scope)
    if channel is None:
        return
    archive = request.app.state.archive
    request.state.pacs_audit_early = _Early(
        outcome_of(status), [archive.audit.submit(a, lead=True) for a in _events(request.scope, channel, status)]
    )


@dataclass(frozen=True, slots=True)
class _Early:
    outcome: str
    futures: list[Future[None]]


async def _recorded(scope: Scope, channel: Channel, status: int) -> bool:
    """Whether the request's access events are committed (False: the answer must not go out).

    Events submitted early (`record_early`) with this status's outcome are waited for, the
    others submitted and waited for now.
    """
    early: _Early | None = (scope.get("state") or {}).get("pacs_audit_early")
    try:
        if early is None or early.outcome != outcome_of(status):
            archive = scope["app"].state.archive
            pending = [archive.audit.submit(access) for access in _events(scope, channel, status)]
        else:
            pending = early.futures
        for done in pending:
            if done.done():  # committed while the route built its answer: no hop through the loop
                done.result()
            else:
                await asyncio.wrap_future(done)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the answer must not go out
        event(log, "audit.request_failed", level=logging.ERROR, path=scope["path"], error=type(exc).__name__)
        return False
    return True


def _events(scope: Scope, channel: Channel, status: int) -> list[AccessEvent]:
    state: dict[str, Any] = scope.get("state") or {}
    ctx: Context | None = state.get("pacs_context")
    principal: Principal | None = ctx.principal if ctx is not None else state.get("pacs_principal")
    params = scope.get("path_params") or {}
    action = f"{scope['method']} {_template(scope['path'], params)}" if scope.get("route") else scope["method"]
    query = _query(scope)
    detail = (ctx.note.detail if ctx is not None and ctx.note is not None else "") or state.get("pacs_refusal", "")
    studies: dict[str, str | None] = {params["study"]: None} if "study" in params else {}
    if not studies and ctx is not None and ctx.note is not None:
        studies = dict(ctx.note.studies)
    named = query.get("studyUID") or query.get("StudyInstanceUID") or query.get("0020000D")
    if not studies and named:
        studies = {named: None}
    base = AccessEvent(
        actor=principal.sub if principal is not None else "",
        org=principal.org if principal is not None else None,
        channel=channel,
        source=scope["client"][0] if scope.get("client") else "",
        action=action,
        outcome=outcome_of(status),
        detail=f"HTTP {status}" + (f": {detail}" if detail else ""),
        patient=query.get("PatientID") or query.get("00100020") or _noted_patient(ctx),
        reason=(ctx.emergency or None) if ctx is not None else None,
        care_relationship=ctx.care_relationship if ctx is not None else False,
    )
    if not studies:
        return [base]
    return [_with_study(base, uid, patient) for uid, patient in studies.items()]


def _noted_patient(ctx: Context | None) -> str | None:
    return ctx.note.patient if ctx is not None and ctx.note is not None and ctx.note.patient else None


def _template(path: str, params: dict[str, Any]) -> str:
    """The route's path as declared (`/dicomweb/studies/{study}`): the request's path with each
    path parameter's segment named again, so the record says which route without its values."""
    segments, start = path.split("/"), 0
    for name, value in params.items():
        for i in range(start, len(segments)):
            if segments[i] == str(value):
                segments[i], start = f"{{{name}}}", i + 1
                break
    return "/".join(segments)


def _with_study(base: AccessEvent, study: str, patient: str | None) -> AccessEvent:
    """`base` naming `study`, and its patient when the request already knows it (a STOW-RS
    request learns it from ingest), which spares the audit writer a lookup."""
    fields = {name: getattr(base, name) for name in AccessEvent.__slots__}
    fields["study"] = study[:64]
    if patient is not None:
        fields["patient"] = patient
    return AccessEvent(**fields)


def _query(scope: Scope) -> dict[str, str]:
    """The query parameters an audit record names (a patient, a study), at most 64 characters."""
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[:64] for k, v in parse_qsl(raw)[:64] if k in _QUERY_KEYS}


_QUERY_KEYS = frozenset({"PatientID", "00100020", "StudyInstanceUID", "0020000D", "studyUID"})


async def _unavailable(send: Send) -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "the audit trail cannot be written",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"5"),  # the audit database is away: a retry may succeed
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
