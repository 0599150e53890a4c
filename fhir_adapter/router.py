"""The FHIR R4 API (`/fhir`): each route parses its request, asks storage, and answers resources.

The app that mounts `router` wires four dependencies in (`WIRING`, through FastAPI's
`dependency_overrides`), since this package imports no edge: the request context of the FHIR
channel (which authenticates the caller and carries what it may see), the archive, the public
base URL, and the identity provider's OAuth endpoints. Every route but `metadata` takes the
context, so none can answer without a token; storage decides visibility, and an invisible
resource is absent (404), as on DICOMweb.

Searches page on keysets (`_cursor`: the last identity id or Study Instance UID of the page), so
a next page reads no skipped rows. The resources are views of what DICOM senders stored, so
their writes are answered 405 (and the CapabilityStatement lists none); Subscription, the one
resource a client makes, is created, updated and deleted here (`storage.workflow.subscriptions`),
and notified from `fhir_adapter.notify`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi import Query as Param
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import JSONResponse

from fhir_adapter import audit_event, consent, directory, imaging_study, match, patient, pix, subscription
from fhir_adapter.bundle import searchset
from fhir_adapter.capability import capability_statement
from fhir_adapter.meta import etag
from fhir_adapter.outcome import FHIR_JSON, FhirError
from fhir_adapter.params import RESULT_PARAMS, Cursors, count, local_id
from storage.access.context import Context
from storage.access.orgs import get_org, list_orgs
from storage.access.policy import require_admin
from storage.archive import Archive
from storage.audit import records
from storage.dicom.uids import is_uid
from storage.errors import NotFound
from storage.patients.linker import model_of
from storage.query import consents, imaging, patients
from storage.query.search import Query
from storage.workflow import subscriptions


class FhirJSONResponse(JSONResponse):
    """An answer in FHIR's JSON media type (what the OpenAPI description says each route gives),
    written by orjson: a page of a hundred studies is a third of a megabyte of JSON."""

    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


_OUTCOME = {"content": {FHIR_JSON: {"schema": {"type": "object"}}}}
#: what every route may answer besides its resource, all as OperationOutcomes
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "A parameter is malformed or unknown; the diagnostics name it", **_OUTCOME},
    401: {"description": "No bearer token, or one that is malformed, wrongly signed or expired", **_OUTCOME},
    403: {"description": "The token's organization or role may not use the API", **_OUTCOME},
    404: {"description": "No such resource, or not one the caller may see", **_OUTCOME},
    405: {"description": "A write: the resources are read-only views of the archive", **_OUTCOME},
    406: {"description": "A format other than JSON was asked for", **_OUTCOME},
}
#: where the app mounts the router: the FHIR base path
PREFIX = "/fhir"
router = APIRouter(tags=["FHIR R4"], default_response_class=FhirJSONResponse, responses=ERRORS)


class _FhirIdConvertor(Convertor[str]):
    r"""A FHIR id in a path (R4 2.24.0.1: [A-Za-z0-9\-\.]{1,64}), matched by the routing itself, so
    that `Patient/$match` or `Patient/$ihe-pix` is never taken for a Patient's id (a GET there is
    405 with the operation's own methods, not a read of patient "$match")."""

    regex = r"[A-Za-z0-9\-.]{1,64}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("fhirid", _FhirIdConvertor())
#: FHIR ids as the routes take them (`{name:fhirid}` in the path)
FhirId = Annotated[str, Path(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
#: the required parameters of `$ihe-pix` and of a Consent search, as the OpenAPI description shows them
SourceIdentifier = Annotated[str, Param(max_length=256, pattern=r"^[^|]+\|.+$", description="system|value")]
PatientRef = Annotated[
    str, Param(alias="patient", pattern=r"^(Patient/)?[A-Za-z0-9\-.]{1,64}$", description="Patient/<id>")
]


async def request_context() -> Context:
    """The caller's request context (channel FHIR); wired by the mounting app."""
    raise NotImplementedError("the app that mounts the FHIR router wires its request context")


async def archive_of() -> Archive:
    """The archive; wired by the mounting app."""
    raise NotImplementedError("the app that mounts the FHIR router wires its archive")


async def base_url() -> str:
    """This server's public FHIR base URL (`PACS_PUBLIC_URL` + `/fhir`); wired by the mounting app."""
    raise NotImplementedError("the app that mounts the FHIR router wires its base URL")


async def oauth_uris() -> dict[str, str] | None:
    """The identity provider's authorize and token endpoints, None without one; wired by the app."""
    raise NotImplementedError("the app that mounts the FHIR router wires its OAuth endpoints")


#: what the mounting app must provide (each placeholder above, overridden by its own dependency)
WIRING = (request_context, archive_of, base_url, oauth_uris)

Ctx = Annotated[Context, Depends(request_context)]
Arch = Annotated[Archive, Depends(archive_of)]
Base = Annotated[str, Depends(base_url)]


def _fhir_format(request: Request) -> None:
    """`_format` and Accept: JSON is what this server writes (FHIR R4 3.1.0.1.2); a request for
    XML alone is answered 406 rather than with JSON it did not ask for."""
    wanted = request.query_params.get("_format")
    if wanted is not None and wanted not in ("json", FHIR_JSON, "application/json"):
        raise FhirError(406, f"_format: only json ({FHIR_JSON}) is served, not {wanted[:40]!r}")
    accept = request.headers.get("accept", "")
    if accept and not any(
        kind.split(";")[0].strip() in ("*/*", "application/*", FHIR_JSON, "application/json")
        for kind in accept.split(",")
    ):
        raise FhirError(406, f"Accept: only {FHIR_JSON} is served")


Formatted = Depends(_fhir_format)


@router.get("/metadata", summary="CapabilityStatement (open: no token needed)", dependencies=[Formatted])
def metadata(base: Base, uris: Annotated[dict[str, str] | None, Depends(oauth_uris)]) -> Response:
    return _answer(capability_statement(router.routes, base, uris))


@router.get("/Patient/$ihe-pix", summary="IHE PIXm: the patient's identifiers elsewhere", dependencies=[Formatted])
def pix_query(
    request: Request,
    ctx: Ctx,
    archive: Arch,
    sourceIdentifier: SourceIdentifier,  # noqa: N803
) -> Response:
    del sourceIdentifier  # described (and required) here; read with the others below
    query = _query(request)
    source = pix.source_of(query)
    targets = pix.targets_of(query)
    _note_patient(ctx, source.value or "")
    with archive.db.read(per_statement=True) as session:
        if source.issuer is not None and not patients.known_issuer(source.issuer, session=session):
            raise FhirError(400, "sourceIdentifier Assigning Authority not found", code="code-invalid")
        unknown = [t for t in targets if t != patient.CNP_SYSTEM and not patients.known_issuer(t, session=session)]
        if unknown:
            raise FhirError(403, f"targetSystem not found: {unknown[0][:64]}", code="code-invalid")
        rows = patients.search(patients.PatientSearch(identifiers=(source,), limit=1), ctx, session=session)
        if not rows:
            raise FhirError(404, "sourceIdentifier Patient Identifier not found")
        linked = [rows[0], *patients.linked(rows[:1], ctx, session=session).get(rows[0].id, [])]
    return _answer(pix.answer(linked, targets))


_MATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {FHIR_JSON: {"schema": {"type": "object", "description": "a Parameters resource"}}},
    }
}


@router.post(
    "/Patient/$match",
    summary="Patient-match: the patient index's model on a Patient",
    openapi_extra=_MATCH_BODY,
    dependencies=[Formatted],
    responses={
        413: {"description": "A body over 64 KiB", **_OUTCOME},
        415: {"description": "A body that is not FHIR JSON", **_OUTCOME},
    },
)
async def match_patient(request: Request, ctx: Ctx, archive: Arch, base: Base) -> Response:
    body = await _json_body(request)
    wanted, only_certain, limit = match.request_of(body)
    model = model_of(archive.settings)
    found = await run_in_threadpool(_matches, archive, ctx, wanted, model, limit)
    if only_certain:
        found = [(row, verdict) for row, verdict in found if match.grade(verdict) == "certain"]
    graded = [match.with_grade(patient.resource(row, []), verdict, model) for row, verdict in found]
    matches, searches = [r for r, _ in graded], [s for _, s in graded]
    return _answer(searchset(base, "Patient", [], matches, len(matches), None, searches=searches))


def _matches(archive: Archive, ctx: Context, wanted: Any, model: Any, limit: int) -> list[Any]:
    with archive.db.read(per_statement=True) as session:
        return patients.match(wanted, ctx, session=session, model=model, limit=limit)


#: the largest request body read (`$match`, a Subscription)
MAX_BODY = 64 * 1024


async def _json_body(request: Request) -> Any:
    """The request's JSON, at most `MAX_BODY` bytes."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind not in (FHIR_JSON, "application/json"):
        raise FhirError(415, f"the body must be {FHIR_JSON}")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise FhirError(413, f"the body is over {MAX_BODY} bytes", code="too-costly")
    try:
        return json.loads(data)
    except ValueError:
        raise FhirError(400, "the body is not JSON") from None


@router.get(
    "/Patient/{patient_id:fhirid}", summary="Read a Patient (an institution's record)", dependencies=[Formatted]
)
def read_patient(patient_id: FhirId, request: Request, ctx: Ctx, archive: Arch) -> Response:
    identity = _identity_id(patient_id)
    _note_patient(ctx, f"Patient/{patient_id}")  # what was asked, should it not be found
    with archive.db.read(per_statement=True) as session:
        row = patients.get(identity, ctx, session=session)
        others = patients.linked([row], ctx, session=session).get(row.id, [])
    _note_patient(ctx, row.patient_id)
    return _read(request, patient.resource(row, others))


@router.get("/Patient", summary="Search Patients", dependencies=[Formatted])
def search_patients(request: Request, ctx: Ctx, archive: Arch, base: Base) -> Response:
    query = _query(request)
    search = patient.search_of(_filters(query))
    limit = count(query.get("_count", []))
    at = Cursors.of(query)
    after, before = _row_id(at.after), _row_id(at.before)
    with archive.db.read(per_statement=True) as session:
        rows = patients.search(replace(search, after=after, before=before, limit=limit), ctx, session=session)
        whole = after is None and before is None and len(rows) <= limit  # the page is all there is
        total = len(rows) if whole else patients.count(search, ctx, session=session)
        page = rows[-limit:] if before is not None and limit else rows[:limit]
        others = patients.linked(page, ctx, session=session)
    matches = [patient.resource(row, others.get(row.id, [])) for row in page]
    ends = (str(page[0].id), str(page[-1].id)) if page else (None, None)
    following, previous = at.links(*ends, more=len(rows) > limit)
    own = request.query_params.multi_items()
    return _answer(searchset(base, "Patient", own, matches, total, following, previous=previous))


@router.get(
    "/ImagingStudy/{study:fhirid}", summary="Read an ImagingStudy (by Study Instance UID)", dependencies=[Formatted]
)
def read_imaging_study(study: FhirId, request: Request, ctx: Ctx, archive: Arch) -> Response:
    with archive.db.read(per_statement=True) as session:
        found = imaging.one(study, ctx, session=session)
    return _read(request, imaging_study.resource(found.studies[0], found))


@router.get("/ImagingStudy", summary="Search ImagingStudies", dependencies=[Formatted])
def search_imaging_studies(request: Request, ctx: Ctx, archive: Arch, base: Base) -> Response:
    query = _query(request)
    keys, updated = imaging_study.keys_of(query)
    subject = imaging_study.patient_of(query)
    limit = count(query.get("_count", []))
    at = Cursors.of(query)
    if not all(is_uid(c) for c in (at.after, at.before) if c is not None):
        raise FhirError(400, "_cursor: not a cursor this server gave")
    wanted = Query("STUDY", keys)
    summary = (query.get("_summary") or ["false"])[-1]
    if summary == "count":  # the total alone (FHIR R4 3.1.1.5.8): no page is read
        with archive.db.read(per_statement=True) as session:
            total = imaging.count(wanted, ctx, session=session, updated=updated, patient=subject)
        return _answer(searchset(base, "ImagingStudy", request.query_params.multi_items(), [], total, None))
    with archive.db.read(per_statement=True) as session:
        found = imaging.page(
            wanted,
            ctx,
            session=session,
            limit=limit,
            after=at.after,
            before=at.before,
            updated=updated,
            patient=subject,
            instances=summary != "true",
        )
        whole = at.after is None and at.before is None and not found.more  # the page is all there is
        total = (
            len(found.studies)
            if whole
            else imaging.count(wanted, ctx, session=session, updated=updated, patient=subject)
        )
        included = _included(query, found, ctx, session)
    for row in found.studies:
        if ctx.note is not None:
            ctx.note.study(row.study_uid)
    matches = [imaging_study.data(row, found, summary=summary == "true") for row in found.studies]
    ends = (found.studies[0].study_uid, found.studies[-1].study_uid) if found.studies else (None, None)
    following, previous = at.links(*ends, more=found.more)
    own = request.query_params.multi_items()
    return _answer(searchset(base, "ImagingStudy", own, matches, total, following, included, previous=previous))


@router.get(
    "/Consent/{consent_id:fhirid}", summary="Read a Consent (a patient's sharing choice)", dependencies=[Formatted]
)
def read_consent(consent_id: FhirId, request: Request, ctx: Ctx, archive: Arch) -> Response:
    wanted = local_id(consent_id)
    if wanted is None:
        raise FhirError(404, f"no Consent {consent_id}")
    with archive.db.read() as session:
        row = consents.one(wanted, ctx, session=session)
    return _read(request, consent.resource(row))


@router.get("/Consent", summary="Search Consents (of one patient)", dependencies=[Formatted])
def search_consents(
    request: Request,
    ctx: Ctx,
    archive: Arch,
    base: Base,
    patient_ref: Annotated[
        str, Param(alias="patient", pattern=r"^(Patient/)?[A-Za-z0-9\-.]{1,64}$", description="Patient/<id>")
    ],
) -> Response:
    del patient_ref  # described (and required) here; read with the others below
    query = _query(request)
    identity = consent.patient_of(query)
    _note_patient(ctx, f"Patient/{identity}")
    try:
        with archive.db.read() as session:
            rows = consents.of_identity(identity, ctx, session=session)
    except NotFound:
        rows = []  # a patient the caller may not see has no consent it may read
    matches = [consent.resource(r) for r in reversed(rows)]  # the one in force first
    return _answer(searchset(base, "Consent", request.query_params.multi_items(), matches, len(matches), None))


@router.get("/AuditEvent/{event_id:fhirid}", summary="Read an AuditEvent (admins)", dependencies=[Formatted])
def read_audit_event(event_id: FhirId, request: Request, ctx: Ctx, archive: Arch) -> Response:
    require_admin(ctx, "read the audit trail")
    wanted = local_id(event_id) or 0
    found = records.search(archive.db, ctx, records.Filters(before=wanted + 1, limit=1)) if wanted else []
    if not found or found[0]["id"] != wanted:
        raise FhirError(404, f"no AuditEvent {event_id}")
    return _read(request, audit_event.resource(found[0]))


@router.get("/AuditEvent", summary="Search the audit trail (admins)", dependencies=[Formatted])
def search_audit_events(request: Request, ctx: Ctx, archive: Arch, base: Base) -> Response:
    require_admin(ctx, "read the audit trail")
    query = _query(request)
    filters = audit_event.filters_of(query)
    at = Cursors.of(query)
    found = records.search(archive.db, ctx, replace(filters, limit=filters.limit + 1))
    limit = filters.limit
    page = found[-limit:] if filters.after is not None and limit else found[:limit]
    ends = (str(page[0]["id"]), str(page[-1]["id"])) if page else (None, None)
    following, previous = at.links(*ends, more=len(found) > limit)
    matches = [audit_event.resource(r) for r in page]
    own = request.query_params.multi_items()
    return _answer(searchset(base, "AuditEvent", own, matches, None, following, previous=previous))


@router.get("/Endpoint/{endpoint_id:fhirid}", summary="Read the DICOMweb Endpoint", dependencies=[Formatted])
def read_endpoint(endpoint_id: FhirId, request: Request, ctx: Ctx, base: Base) -> Response:
    del ctx  # authenticated and audited; the endpoint itself is no patient's data
    if endpoint_id != imaging_study.ENDPOINT_ID:
        raise FhirError(404, f"no Endpoint {endpoint_id}")
    return _read(request, directory.endpoint(_dicomweb(base)))


@router.get("/Endpoint", summary="Search Endpoints", dependencies=[Formatted])
def search_endpoints(request: Request, ctx: Ctx, base: Base) -> Response:
    del ctx
    query = _query(request)
    _known(query, directory.SEARCH_PARAMS["Endpoint"], "Endpoint")
    ids = query.get("_id")
    matches = [directory.endpoint(_dicomweb(base))] if not ids or imaging_study.ENDPOINT_ID in ids else []
    return _answer(searchset(base, "Endpoint", request.query_params.multi_items(), matches, len(matches), None))


@router.get(
    "/Organization/{org_id:fhirid}", summary="Read an Organization (a registered provider)", dependencies=[Formatted]
)
def read_organization(org_id: FhirId, request: Request, ctx: Ctx, archive: Arch) -> Response:
    del ctx
    with archive.db.read() as session:
        try:
            org = get_org(session, org_id)
        except KeyError:
            raise FhirError(404, f"no Organization {org_id}") from None
    return _read(request, directory.organization(org))


@router.get("/Organization", summary="Search Organizations", dependencies=[Formatted])
def search_organizations(request: Request, ctx: Ctx, archive: Arch, base: Base) -> Response:
    del ctx
    query = _query(request)
    _known(query, directory.SEARCH_PARAMS["Organization"], "Organization")
    with archive.db.read() as session:
        orgs = list_orgs(session)
    ids = set(query.get("_id", []))
    names = [n.casefold() for n in query.get("name", [])]
    found = [
        o for o in orgs if (not ids or o.id in ids) and all((o.name or o.id).casefold().startswith(n) for n in names)
    ]
    matches = [directory.organization(o) for o in found]
    return _answer(searchset(base, "Organization", request.query_params.multi_items(), matches, len(matches), None))


_SUBSCRIPTION_BODY = {
    "requestBody": {
        "required": True,
        "content": {FHIR_JSON: {"schema": {"type": "object", "description": "a Subscription resource"}}},
    }
}
_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"description": "A body over 64 KiB", **_OUTCOME},
    415: {"description": "A body that is not FHIR JSON", **_OUTCOME},
    422: {"description": "A Subscription this server cannot serve as asked; the diagnostics say why", **_OUTCOME},
}


@router.post(
    "/Subscription",
    summary="Create a Subscription (rest-hook on ImagingStudy; integrators and admins)",
    status_code=201,
    openapi_extra=_SUBSCRIPTION_BODY,
    dependencies=[Formatted],
    responses=_BODY_ERRORS,
)
async def create_subscription(request: Request, ctx: Ctx, archive: Arch, base: Base) -> Response:
    spec = subscription.spec_of(await _json_body(request), archive.settings.subscription_endpoints)
    record = await run_in_threadpool(_create_subscription, archive, ctx, spec)
    resource = subscription.resource(record)
    response = _answer(resource, status=201)
    response.headers["Location"] = f"{base}/Subscription/{record.id}/_history/{resource['meta']['versionId']}"
    response.headers["ETag"] = etag(resource)
    return response


@router.get("/Subscription/{subscription_id:fhirid}", summary="Read a Subscription", dependencies=[Formatted])
def read_subscription(subscription_id: FhirId, request: Request, ctx: Ctx, archive: Arch) -> Response:
    wanted = _subscription_id(subscription_id)
    with archive.db.read() as session:
        record = subscriptions.get(session, ctx, wanted)
    return _read(request, subscription.resource(record))


@router.put(
    "/Subscription/{subscription_id:fhirid}",
    summary="Update a Subscription (status active again resumes an errored one)",
    openapi_extra=_SUBSCRIPTION_BODY,
    dependencies=[Formatted],
    responses={**_BODY_ERRORS, 410: {"description": "The Subscription was deleted", **_OUTCOME}},
)
async def update_subscription(subscription_id: FhirId, request: Request, ctx: Ctx, archive: Arch) -> Response:
    wanted = _subscription_id(subscription_id)
    body = await _json_body(request)
    if not isinstance(body, dict) or body.get("id") != subscription_id:
        raise FhirError(400, f"the body's id must be the one in the URL ({subscription_id})")
    spec = subscription.spec_of(body, archive.settings.subscription_endpoints)
    record = await run_in_threadpool(_replace_subscription, archive, ctx, wanted, spec)
    resource = subscription.resource(record)
    response = _answer(resource)
    response.headers["ETag"] = etag(resource)
    return response


@router.delete(
    "/Subscription/{subscription_id:fhirid}",
    summary="Delete a Subscription: no more notifications",
    status_code=204,
    dependencies=[Formatted],
    responses={410: {"description": "The Subscription was deleted already", **_OUTCOME}},
)
def delete_subscription(subscription_id: FhirId, ctx: Ctx, archive: Arch) -> Response:
    wanted = _subscription_id(subscription_id)
    with archive.db.write() as session:
        subscriptions.delete(session, ctx, wanted)
    return Response(status_code=204)


#: the most Subscriptions a search lists (an organization holds at most 100; an admin sees all)
MAX_SUBSCRIPTIONS = 1000


@router.get("/Subscription", summary="Search Subscriptions (its organization's)", dependencies=[Formatted])
def search_subscriptions(request: Request, ctx: Ctx, archive: Arch, base: Base) -> Response:
    query = _query(request)
    _known(query, subscription.SEARCH_PARAMS, "Subscription")
    statuses = query.get("status", [])
    with archive.db.read() as session:
        found = subscriptions.search(session, ctx, status=statuses[-1] if statuses else None, limit=MAX_SUBSCRIPTIONS)
    matches = [subscription.resource(r) for r in found]
    total = len(matches) if len(matches) < MAX_SUBSCRIPTIONS else None  # more than listed: not counted
    return _answer(searchset(base, "Subscription", request.query_params.multi_items(), matches, total, None))


def _create_subscription(archive: Archive, ctx: Context, spec: subscriptions.Spec) -> subscriptions.Record:
    with archive.db.write() as session:
        return subscriptions.create(session, ctx, spec)


def _replace_subscription(
    archive: Archive, ctx: Context, wanted: int, spec: subscriptions.Spec
) -> subscriptions.Record:
    with archive.db.write() as session:
        return subscriptions.replace(session, ctx, wanted, spec)


def _subscription_id(text: str) -> int:
    found = local_id(text)
    if found is None:
        raise FhirError(404, f"no Subscription {text}")
    return found


def _query(request: Request) -> dict[str, list[str]]:
    """The request's parameters, name -> values; the format parameter aside (`_fhir_format`)."""
    found: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        if name != "_format":
            found.setdefault(name, []).append(value)
    if len(found) > 30:
        raise FhirError(400, "at most 30 different search parameters")
    return found


def _filters(query: Mapping[str, list[str]]) -> dict[str, list[str]]:
    return {name: given for name, given in query.items() if name not in RESULT_PARAMS}


def _known(query: Mapping[str, list[str]], params: Mapping[str, Any], resource_type: str) -> None:
    for name in query:
        if name not in params and name not in RESULT_PARAMS:
            raise FhirError(400, f"unknown search parameter for {resource_type}: {name}")


def _identity_id(text: str) -> int:
    found = local_id(text)
    if found is None:
        raise FhirError(404, f"no Patient {text}")
    return found


def _row_id(cursor: str | None) -> int | None:
    """The row id a cursor of this server names (a Patient's, an AuditEvent's)."""
    if cursor is None:
        return None
    found = local_id(cursor)
    if found is None:
        raise FhirError(400, "_cursor: not a cursor this server gave")
    return found


def _note_patient(ctx: Context, patient_id: str) -> None:
    """Name the patient in the request's audit record."""
    if ctx.note is not None:
        ctx.note.patient = patient_id


def _included(query: Mapping[str, list[str]], found: imaging.StudyPage, ctx: Context, session: Any) -> list[Any]:
    """`_include=ImagingStudy:patient`: the subjects of the page's studies (each once)."""
    if "ImagingStudy:patient" not in query.get("_include", []):
        return []
    seen: dict[int, Any] = {}
    for row in found.studies:
        if row.identity_id not in seen:
            try:
                seen[row.identity_id] = patients.get(row.identity_id, ctx, session=session)
            except NotFound:
                continue
    others = patients.linked(list(seen.values()), ctx, session=session)
    return [patient.resource(row, others.get(row.id, [])) for row in seen.values()]


def _dicomweb(base: str) -> str:
    return base.removesuffix("/fhir") + "/dicomweb"


def _read(request: Request, resource: dict[str, Any]) -> Response:
    """A read's answer, with its ETag; 304 when the client already holds this version."""
    tag = etag(resource)
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers={"ETag": tag})
    response = _answer(resource)
    response.headers["ETag"] = tag
    return response


def _answer(resource: dict[str, Any], status: int = 200) -> JSONResponse:
    return FhirJSONResponse(resource, status_code=status)
