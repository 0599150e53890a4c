"""WADO-URI (PS3.18 9): `GET /wado?requestType=WADO&studyUID=&seriesUID=&objectUID=...`.

The same retrieve path and renderer as WADO-RS, behind the older query-string interface that
report viewers and hospital portals still link to. `contentType=application/dicom` sends the
object (Explicit VR Little Endian unless `transferSyntax` names another we can produce, byte
ranges when it goes out as stored); image/jpeg, image/png and image/gif render one frame with
`windowCenter`/`windowWidth`, `rows`/`columns`, `region`, `imageQuality` and `frameNumber`.
Without contentType, a single-frame image (or a named frame) is image/jpeg and anything else
application/dicom (PS3.18 2013 7.1.2, 7.2.2).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydicom.uid import ExplicitVRLittleEndian
from starlette.datastructures import QueryParams

from gateway.deps import ArchiveDep, WadoUriContext
from gateway.dicomweb import multipart as mp
from gateway.dicomweb import render
from gateway.dicomweb.wado import dicom_file, rendered_image, resolve
from storage.dicom.uids import MAX_LENGTH, UID_RE, check_uid
from storage.retrieve import retrieval as retrieve
from storage.retrieve.retrieval import StoredInstance

router = APIRouter(tags=["WADO-URI"])

REQUIRED = ("studyUID", "seriesUID", "objectUID")
#: parameters that only make sense for a rendered image (PS3.18 9: not with application/dicom)
RENDERING = ("annotation", "rows", "columns", "region", "windowCenter", "windowWidth", "frameNumber", "imageQuality")
MAX_SIDE = 1 << 16


def _param(name: str, description: str, schema: dict[str, Any], *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


_UID = {"type": "string", "pattern": UID_RE.pattern, "maxLength": MAX_LENGTH}
_SIDE = {"type": "integer", "minimum": 1, "maximum": 8192}
#: The query parameters of PS3.18 9, described for /docs and clients; `wado` reads them itself
#: from the query string, as the standard names them (camelCase, rules that tie them together).
_PARAMETERS = [
    _param("requestType", "Always WADO", {"type": "string", "enum": ["WADO"]}, required=True),
    _param("studyUID", "Study Instance UID", _UID, required=True),
    _param("seriesUID", "Series Instance UID", _UID, required=True),
    _param("objectUID", "SOP Instance UID", _UID, required=True),
    _param("contentType", f"{mp.DICOM} or {', '.join(mp.RENDERED)}, with q-values", {"type": "string"}),
    _param("transferSyntax", f"Only with contentType={mp.DICOM}", _UID),
    _param("anonymize", "yes is not supported (400)", {"type": "string"}),
    _param("frameNumber", "Frame to render (from 1)", {"type": "integer", "minimum": 1}),
    _param("rows", "Height to fit the image in", _SIDE),
    _param("columns", "Width to fit the image in", _SIDE),
    _param("region", "x1,y1,x2,y2: fractions of the image, 0 <= x1 < x2 <= 1", {"type": "string"}),
    _param("windowCenter", "With windowWidth", {"type": "number"}),
    _param("windowWidth", "With windowCenter; at least 1", {"type": "number", "minimum": 1}),
    _param("imageQuality", "JPEG quality", {"type": "integer", "minimum": 1, "maximum": 100}),
    _param("annotation", "Not rendered; refused with application/dicom", {"type": "string"}),
]


@router.get(
    "/wado",
    summary="WADO-URI: one object as application/dicom or a rendered image",
    openapi_extra={"parameters": _PARAMETERS},
)
def wado(request: Request, archive: ArchiveDep, ctx: WadoUriContext) -> Response:
    q = request.query_params
    if q.get("requestType") != "WADO":
        raise HTTPException(400, detail="requestType=WADO is required")
    missing = [name for name in REQUIRED if not q.get(name)]
    if missing:
        raise HTTPException(400, detail=f"missing required parameter(s): {', '.join(missing)}")
    if q.get("anonymize", "").lower() == "yes":
        raise HTTPException(400, detail="anonymize=yes is not supported by this server")
    inst = resolve(archive, ctx, q["studyUID"], q["seriesUID"], q["objectUID"])[0]
    media_type = _content_type(q, inst)
    if media_type == mp.DICOM:
        return _dicom(request, archive, inst)
    if "transferSyntax" in q:
        raise HTTPException(400, detail="transferSyntax is only allowed with contentType=application/dicom")
    try:
        frame, params = _render_params(q, media_type)
    except ValueError as exc:
        raise HTTPException(400, detail=str(exc)) from None
    return Response(rendered_image(archive, inst, frame, params), media_type=media_type)


def _content_type(q: QueryParams, inst: StoredInstance) -> str:
    if "contentType" not in q:
        single_image = inst.frame_count == 1 or (inst.frame_count > 1 and "frameNumber" in q)
        return "image/jpeg" if single_image else mp.DICOM
    for r in mp.parse_accept(q["contentType"]):
        if r.media_type == mp.DICOM:
            return mp.DICOM
        for media_type in mp.RENDERED:
            if r.matches(media_type):
                return media_type
    raise mp.not_acceptable(f"contentType must be {mp.DICOM} or one of {', '.join(mp.RENDERED)}")


def _dicom(request: Request, archive: ArchiveDep, inst: StoredInstance) -> Response:
    q = request.query_params
    forbidden = [name for name in RENDERING if name in q]
    if forbidden:
        raise HTTPException(400, detail=f"{', '.join(forbidden)} cannot be used with contentType={mp.DICOM}")
    syntax = q.get("transferSyntax") or ExplicitVRLittleEndian
    check_uid("transferSyntax", syntax)
    delivery = retrieve.plan(inst, (syntax,))
    if delivery is None:
        raise mp.not_acceptable(f"instance {inst.sop_uid} cannot be sent in transfer syntax {syntax}")
    response = dicom_file(archive, delivery, request.headers.get("range"), uri_service=True)
    response.headers["Content-Disposition"] = f'attachment; filename="{inst.sop_uid}.dcm"'
    return response


def _render_params(q: QueryParams, media_type: str) -> tuple[int, render.RenderParams]:
    """frameNumber and the rendering parameters of PS3.18 9 (ValueError says what is wrong)."""
    center, width = q.get("windowCenter"), q.get("windowWidth")
    if (center is None) != (width is None):
        raise ValueError("windowCenter and windowWidth go together")
    rows, columns = _positive(q, "rows"), _positive(q, "columns")
    frame = _positive(q, "frameNumber") or 1
    params = render.RenderParams(
        media_type=media_type,
        quality=render.parse_quality(q["imageQuality"]) if "imageQuality" in q else render.DEFAULT_QUALITY,
        window=render.make_window(center, width) if center is not None and width is not None else None,
        viewport=(columns or MAX_SIDE, rows or MAX_SIDE) if rows or columns else None,
        region=render.parse_region(q["region"]) if "region" in q else None,
    )
    return frame, params


def _positive(q: QueryParams, name: str) -> int | None:
    if name not in q:
        return None
    try:
        value = int(q[name])
    except ValueError:
        raise ValueError(f"{name} must be a positive integer") from None
    if value < 1 or (name != "frameNumber" and value > 8192):
        raise ValueError(f"{name} must be a positive integer" + ("" if name == "frameNumber" else " up to 8192"))
    return value
