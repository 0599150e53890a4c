"""STOW-RS (PS3.18 10.5): store the parts of a multipart/related body, one ingest per part.

Each part goes through `storage.ingest.pipeline.ingest`, the function C-STORE and `pacs import` use,
as soon as the reader has it: nothing is buffered beyond one part, and a bad part is
reported without touching the others. The response is the Store Instances Response Module
(PS3.18 10.5.3) in DICOM JSON: ReferencedSOPSequence for what is stored (an object already
present counts, with WarningReason 0xB00E), FailedSOPSequence with the DICOM status of the
`StorageError` as FailureReason (the same code C-STORE answers). 200 when nothing failed,
202 when some parts failed, 409 when all did.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydicom import dcmread

from gateway.audit import record_early
from gateway.deps import ArchiveDep, DicomwebContext, SettingsDep, StudyUid, dicomweb_root
from gateway.dicomweb.multipart_reader import (
    MultipartError,
    Part,
    PartTooLarge,
    parse_content_type,
    read_parts,
    request_chunks,
)
from storage import metrics
from storage.access.context import Context
from storage.archive import Archive
from storage.dicom.parse import Source
from storage.dicom.uids import is_uid
from storage.errors import NotDicom, RejectedInput, StorageError, Truncated
from storage.ingest.pipeline import IngestResult, Outcome, ingest
from storage.logs import event
from storage.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(tags=["STOW-RS"])

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
#: WarningReason of an instance that was already stored. PS3.4's warning codes (0xB000
#: coercion, 0xB006 elements discarded, 0xB007 SOP class mismatch) do not cover it; this is
#: the "SOP instance already exists" code of Microsoft's DICOM server, in the warning range.
ALREADY_PRESENT = 0xB00E
MAX_WARNING_HEADERS = 20


class DicomJSONResponse(JSONResponse):
    media_type = DICOM_JSON


_STUDY_CONTENT = {DICOM_JSON: {"schema": {"type": "object"}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "All instances stored (or already present)", "content": _STUDY_CONTENT},
    202: {"description": "Some instances stored, some failed (see FailedSOPSequence)", "content": _STUDY_CONTENT},
    400: {"description": "Not a readable multipart body, or a malformed study UID in the path"},
    406: {"description": "The Accept header excludes application/dicom+json (XML is not implemented)"},
    409: {"description": "No instance could be stored (see FailedSOPSequence)", "content": _STUDY_CONTENT},
    413: {"description": "A part is over PACS_HTTP_MAX_OBJECT_SIZE; the parts before it were stored"},
    415: {"description": 'Not multipart/related; type="application/dicom"'},
}
_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}},
    }
}
_ROUTE: dict[str, Any] = {"response_class": DicomJSONResponse, "responses": _RESPONSES, "openapi_extra": _OPENAPI}


@router.post("/studies", summary="Store instances (STOW-RS)", **_ROUTE)
def store_instances(request: Request, archive: ArchiveDep, ctx: DicomwebContext, settings: SettingsDep) -> Any:
    return _store(request, None, archive, ctx, settings)


@router.post("/studies/{study}", summary="Store instances of one study (STOW-RS)", **_ROUTE)
def store_study_instances(
    study: StudyUid, request: Request, archive: ArchiveDep, ctx: DicomwebContext, settings: SettingsDep
) -> Any:
    return _store(request, study, archive, ctx, settings)  # `StudyUid`: the UID was checked as the path was read


def _store(request: Request, study: str | None, archive: Archive, ctx: Context, settings: Settings) -> Any:
    started = time.perf_counter()
    _check_accept(request.headers.get("accept", ""))
    boundary = _boundary(request.headers.get("content-type", ""))
    response = StoreResponse(dicomweb_root(request, settings), study)
    limit = int(settings.http_max_object_size)
    parts = read_parts(request_chunks(request), boundary, spool_dir=archive.temp_dir, max_part_size=limit)
    try:
        for part in parts:
            try:
                response.stored(_store_part(part, study, ctx, archive))
            except StorageError as exc:
                response.failed(exc, _identify(_source(part)))
    except PartTooLarge:
        stored = len(response.referenced)
        event(log, "stow.too_large", sub=ctx.principal.sub, part=response.parts + 1, limit=limit, stored=stored)
        raise HTTPException(
            413,
            f"part {response.parts + 1} is over the {limit} bytes this archive takes (PACS_HTTP_MAX_OBJECT_SIZE); "
            f"the {stored} instance(s) before it were stored",
        ) from None
    except MultipartError as exc:
        if not response.parts:
            raise HTTPException(400, str(exc)) from None
        response.failed(NotDicom(f"the rest of the body cannot be read: {exc}"), (None, None, None))
    if not response.parts:
        raise HTTPException(400, "the multipart body holds no part")
    event(log, "stow.done", sub=ctx.principal.sub, org=ctx.principal.org, **response.counts(), duration_ms=_ms(started))
    record_early(request, response.http_status)  # what was stored is known: commit while answering
    answer = DicomJSONResponse(response.dataset(), status_code=response.http_status)
    for warning in response.warnings():
        answer.headers.append("Warning", warning)
    return answer


def _store_part(part: Part, study: str | None, ctx: Context, archive: Archive) -> IngestResult:
    source = _source(part)
    try:
        if not part.complete:
            raise Truncated("the body ended before this part's closing boundary")
        if part.media_type not in ("", DICOM):
            raise NotDicom(f"part Content-Type {part.media_type[:80]} is not {DICOM}")
    except RejectedInput as exc:  # refused here, before ingest: counted and logged as ingest would
        metrics.INSTANCES_REJECTED.labels("stow", exc.reason).inc()
        event(
            log,
            "stow.rejected",
            level=logging.WARNING,
            reason=exc.reason,
            status=f"0x{exc.status:04X}",
            detail=exc.detail,
        )
        raise
    return ingest(source, ctx, archive=archive, expect_study=study)


def _source(part: Part) -> Source:
    return Source(path=part.path, disposable=True) if part.path is not None else Source(data=part.data or b"")


def _identify(source: Source) -> tuple[str | None, str | None, str | None]:
    """SOP Class, SOP Instance and Study UIDs of a part, where readable and valid (else None).

    Best effort, for the response: a failed part is reported with what can be read of it.
    """
    try:
        with source.open() as fp:
            ds = dcmread(fp, stop_before_pixels=True, specific_tags=[0x00080016, 0x00080018, 0x0020000D])
        meta = ds.file_meta
        values = (
            ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID"),
            ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID"),
            ds.get("StudyInstanceUID"),
        )
    except Exception:  # noqa: BLE001 - unreadable: the failure is reported without UIDs
        return None, None, None
    valid = [str(v).strip("\x00 ") if v else "" for v in values]
    a, b, c = (v if is_uid(v) else None for v in valid)
    return a, b, c


@dataclass
class StoreResponse:
    """Builds the Store Instances Response Module (PS3.18 10.5.3) in DICOM JSON."""

    base: str
    study: str | None
    referenced: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)
    already_present: int = 0
    parts: int = 0

    def stored(self, r: IngestResult) -> None:
        self.parts += 1
        self.studies.add(r.study_uid)
        url = f"{self.base}/studies/{r.study_uid}/series/{r.series_uid}/instances/{r.sop_uid}"
        item = {"00081150": _ui(r.sop_class_uid), "00081155": _ui(r.sop_uid), "00081190": _ur(url)}
        if r.outcome is Outcome.ALREADY_PRESENT:
            self.already_present += 1
            item["00081196"] = _us(ALREADY_PRESENT)
        self.referenced.append(item)

    def failed(self, exc: StorageError, uids: tuple[str | None, str | None, str | None]) -> None:
        self.parts += 1
        item: dict[str, Any] = {}
        if uids[0]:
            item["00081150"] = _ui(uids[0])
        if uids[1]:
            item["00081155"] = _ui(uids[1])
        item["00081197"] = _us(exc.status)
        self.failures.append(item)
        self.notes.append(f"part {self.parts}: {exc.reason}: {exc.detail}")

    @property
    def http_status(self) -> int:
        if not self.failures:
            return 200
        return 202 if self.referenced else 409

    def dataset(self) -> dict[str, Any]:
        ds: dict[str, Any] = {}
        study = self.study or (next(iter(self.studies)) if len(self.studies) == 1 else None)
        if study:
            ds["00081190"] = _ur(f"{self.base}/studies/{study}")
        if self.failures:
            ds["00081198"] = {"vr": "SQ", "Value": self.failures}
        if self.referenced:
            ds["00081199"] = {"vr": "SQ", "Value": self.referenced}
        return ds

    def warnings(self) -> list[str]:
        """Why parts failed, as PS3.18 Warning header values (code 299), the first few of them."""
        agent = urlsplit(self.base).netloc
        texts = [re.sub(r'[^\x20-\x7e]|"', "?", n)[:300] for n in self.notes[:MAX_WARNING_HEADERS]]
        return [f'299 {agent}: "{t}"' for t in texts]

    def counts(self) -> dict[str, int]:
        present = self.already_present
        return {"stored": len(self.referenced) - present, "already_present": present, "failed": len(self.failures)}


def _ui(v: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [v]}


def _ur(v: str) -> dict[str, Any]:
    return {"vr": "UR", "Value": [v]}


def _us(v: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [v]}


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _boundary(content_type: str) -> str:
    """The boundary of a `multipart/related; type="application/dicom"` body, else 415/400."""
    ct = parse_content_type(content_type)
    if ct.media_type != "multipart/related":
        raise HTTPException(415, f'STOW-RS takes multipart/related; type="{DICOM}", not {ct.media_type or "this"}')
    kind = parse_content_type(ct.params.get("type", DICOM)).media_type
    if kind != DICOM:
        raise HTTPException(
            415, f"only {DICOM} parts are accepted (type={kind}): metadata with bulk data is not supported"
        )
    boundary = ct.params.get("boundary", "")
    if not boundary:
        raise HTTPException(400, "the multipart/related Content-Type has no boundary parameter")
    return boundary


def _check_accept(accept: str) -> None:
    """406 unless the client takes application/dicom+json (or JSON, or anything)."""
    if not accept.strip():
        return
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        q = re.search(r"q\s*=\s*(0(\.0*)?|1(\.0*)?|0\.[0-9]+)\s*$", params)
        if q and float(q.group(1)) == 0:
            continue
        if media.strip().lower() in ("*/*", "application/*", DICOM_JSON, "application/json"):
            return
    raise HTTPException(406, f"STOW-RS answers in {DICOM_JSON}; application/dicom+xml is not implemented")
