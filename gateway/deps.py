"""Annotated dependencies shared by the routes: the archive, settings, the caller and its context.

Each route takes the request context of its channel (`DicomwebContext`, `WadoUriContext`,
`ApiContext`): who is asking (the bearer token's principal, `gateway.auth`), from which address,
and the recorder of its accesses. Storage decides what that context may see and do.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Path, Request
from pydantic import BeforeValidator
from starlette.concurrency import run_in_threadpool

from gateway.auth import get_principal
from storage.access.context import Channel, Context, RequestNote
from storage.access.principal import Principal, Role
from storage.archive import Archive
from storage.dicom.uids import MAX_LENGTH, UID_RE
from storage.settings import Settings

# The dependencies are coroutines though they never wait: FastAPI runs a plain function
# dependency on a worker thread, and that hop (two thread switches) cost more than the lookup.


async def get_archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def public_root(request: Request, public_url: str) -> str:
    """PACS_PUBLIC_URL, with the real port put in when the server listens on an ephemeral one (0).

    The request's Host header is not used: clients get it wrong (dicomweb-client drops the
    port) and behind a proxy it names the wrong host anyway.
    """
    url = urlsplit(public_url)
    server = request.scope.get("server")
    if url.port == 0 and server and server[1]:
        url = url._replace(netloc=f"{url.hostname}:{server[1]}")
    return url.geturl().rstrip("/")


def dicomweb_root(request: Request, settings: Settings) -> str:
    """The DICOMweb root to advertise in RetrieveURL and BulkDataURI values."""
    return f"{public_root(request, settings.public_url)}/dicomweb"


ArchiveDep = Annotated[Archive, Depends(get_archive)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


#: DESIGN.md "Access, shares, emergency access, consent and audit": a clinician's emergency read
EMERGENCY_HEADER = "PACS-Emergency-Access"
EMERGENCY_MAX = 200
#: the channels whose reads emergency access opens (studies' images and metadata)
_EMERGENCY_CHANNELS = frozenset({Channel.DICOMWEB, Channel.WADO_URI, Channel.FHIR})


def _context_of(channel: Channel) -> Callable[[Request, Principal], Awaitable[Context]]:
    async def context(request: Request, principal: PrincipalDep) -> Context:
        address = request.client.host if request.client else ""
        ctx = Context(
            principal,
            channel,
            address,
            request.app.state.archive.audit,
            emergency=_emergency_reason(request, principal, channel),
            note=RequestNote(),
            care_relationship=request.app.state.archive.settings.care_relationship,
        )
        request.state.pacs_context = ctx  # for its audit record (gateway.audit)
        return ctx

    return context


def _emergency_reason(request: Request, principal: Principal, channel: Channel) -> str:
    """The reason of an emergency access, checked: 1 to 200 printable characters, a clinician's.

    Raises
    ------
    HTTPException
        400 for a reason that is empty, too long or not printable; 403 when the caller is not
        a clinician (an integrator's system or an admin has no patient in front of it).
    """
    reason = request.headers.get(EMERGENCY_HEADER)
    if reason is None or channel not in _EMERGENCY_CHANNELS:
        return ""
    reason = reason.strip()
    if not 1 <= len(reason) <= EMERGENCY_MAX or not reason.isprintable():
        request.state.pacs_refusal = "emergency access without a valid reason"
        raise HTTPException(400, f"{EMERGENCY_HEADER} needs a reason of 1 to {EMERGENCY_MAX} printable characters")
    if not principal.has(Role.CLINICIAN):
        request.state.pacs_refusal = "emergency access by a non-clinician"
        raise HTTPException(403, "emergency access is for clinicians")
    return reason


#: the FHIR router's request context (wired into `fhir_adapter.router` by `gateway.app`)
fhir_context = _context_of(Channel.FHIR)


async def fhir_base(request: Request) -> str:
    """The FHIR base URL to write in Bundles and references: the public root + /fhir."""
    return f"{public_root(request, request.app.state.settings.public_url)}/fhir"


async def fhir_oauth_uris(request: Request) -> dict[str, str] | None:
    """The identity provider's OAuth endpoints for the CapabilityStatement (a network read the
    first time, so on a worker thread)."""
    uris: dict[str, str] | None = await run_in_threadpool(request.app.state.authenticator.oauth_uris)
    return uris


DicomwebContext = Annotated[Context, Depends(_context_of(Channel.DICOMWEB))]
WadoUriContext = Annotated[Context, Depends(_context_of(Channel.WADO_URI))]
ApiContext = Annotated[Context, Depends(_context_of(Channel.API))]


def _uid_path(title: str) -> Any:
    """A UID in the URL path, described in the OpenAPI document as what the server enforces."""
    return Path(title=title, pattern=UID_RE.pattern, max_length=MAX_LENGTH, examples=["1.2.840.113619.2.55.3.1"])


StudyUid = Annotated[str, _uid_path("Study Instance UID")]
SeriesUid = Annotated[str, _uid_path("Series Instance UID")]
InstanceUid = Annotated[str, _uid_path("SOP Instance UID")]
#: a row's key in a URL (/api/worklist/{id}): what the index's BIGINT keys can hold
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]

#: PS3.18 10.4.1.1.3: frame numbers separated by commas (the route also refuses 0, a frame named
#: twice, too many frames, and frames the instance does not have)
FRAME_LIST_RE = re.compile(r"^[0-9]{1,9}(,[0-9]{1,9})*$")
#: the path of a BulkDataURI as metadata writes it: a tag, or sequence/item/tag steps, items from 1
BULK_PATH_RE = re.compile(r"^[0-9A-Fa-f]{8}(/[1-9][0-9]{0,8}/[0-9A-Fa-f]{8})*$")


def _syntax_path(title: str, syntax: re.Pattern[str], examples: list[str]) -> Any:
    """A path parameter whose route checks its syntax (`fullmatch`) with a message of its own: the
    pattern is written in the OpenAPI document for clients, FastAPI does not enforce it twice."""
    return Path(title=title, json_schema_extra={"pattern": syntax.pattern}, examples=examples)


def _rfc3339(value: object) -> datetime:
    """An RFC 3339 date-time as text, what the OpenAPI description promises (`format: date-time`);
    pydantic alone would also take a number of seconds."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("expected an RFC 3339 date-time such as 2026-12-07T10:00:00Z")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("expected an RFC 3339 date-time such as 2026-12-07T10:00:00Z") from None


#: text a person typed (a name, a reason): no control characters, NUL included (PostgreSQL
#: refuses NUL in text, and a name with a line break has no place in a log or a record)
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"

#: a date-time in a query or body: RFC 3339 text only
Rfc3339 = Annotated[datetime, BeforeValidator(_rfc3339)]

FrameList = Annotated[str, _syntax_path("Frame numbers", FRAME_LIST_RE, ["1", "1,3,5"])]
BulkPath = Annotated[str, _syntax_path("Bulk data path", BULK_PATH_RE, ["7FE00010", "00540016/1/00181072"])]
