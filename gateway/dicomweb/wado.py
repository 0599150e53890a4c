"""WADO-RS (PS3.18 10.4): instances, metadata, bulk data, frames, rendered images, thumbnails.

A thin adapter over `storage.retrieve.retrieval`: resolve what the caller may read, negotiate the
representation (`gateway.dicomweb.multipart`), then stream. Instances go out as multipart/related
straight from the blob store, one chunk at a time, transcoded per instance only when the
client's Accept rules out the stored transfer syntax. Metadata is the stored DICOM JSON joined
as strings, with the `bulk:` placeholders turned into absolute BulkDataURIs, so it never
opens a blob. Frames are ranged reads located by the pixel layout kept at ingest.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response, StreamingResponse
from pydicom.uid import UID, ExplicitVRLittleEndian

from gateway.deps import (
    BULK_PATH_RE,
    FRAME_LIST_RE,
    ArchiveDep,
    BulkPath,
    DicomwebContext,
    FrameList,
    InstanceUid,
    SeriesUid,
    SettingsDep,
    StudyUid,
    public_root,
)
from gateway.dicomweb import multipart as mp
from gateway.dicomweb import render
from storage.access.context import Context
from storage.archive import Archive
from storage.dicom import pixels
from storage.errors import CannotTranscode
from storage.logs import event
from storage.retrieve import retrieval as retrieve
from storage.retrieve.retrieval import Delivery, StoredInstance

log = logging.getLogger(__name__)
router = APIRouter(tags=["WADO-RS"])

STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{sop}"
DICOM_JSON = "application/dicom+json"
_PLACEHOLDER = '"BulkDataURI":"bulk:'
_JSON_TYPES = (DICOM_JSON, "application/json")


def _base(request: Request, public_url: str) -> str:
    """The public DICOMweb root (settings.public_url + the mount prefix, e.g. /dicomweb)."""
    path = request.url.path
    return public_root(request, public_url) + path[: path.index("/studies/")]


def resolve(
    archive: Archive, ctx: Context, study: str, series: str | None = None, sop: str | None = None, **kw: bool
) -> list[StoredInstance]:
    with archive.db.read() as session:
        return retrieve.instances(session, ctx, study, series, sop, **kw)


# ----- instances ----------------------------------------------------------------------------


@router.get(STUDY, summary="Retrieve a study (multipart/related; type=application/dicom)")
def retrieve_study(
    study: StudyUid, request: Request, archive: ArchiveDep, ctx: DicomwebContext, settings: SettingsDep
) -> Response:
    return _retrieve(request, archive, ctx, settings.public_url, study)


@router.get(SERIES, summary="Retrieve a series")
def retrieve_series(
    study: StudyUid,
    series: SeriesUid,
    request: Request,
    archive: ArchiveDep,
    ctx: DicomwebContext,
    settings: SettingsDep,
) -> Response:
    return _retrieve(request, archive, ctx, settings.public_url, study, series)


@router.get(INSTANCE, summary="Retrieve an instance (multipart, or application/dicom with Range support)")
def retrieve_instance(
    study: StudyUid,
    series: SeriesUid,
    sop: InstanceUid,
    request: Request,
    archive: ArchiveDep,
    ctx: DicomwebContext,
    settings: SettingsDep,
) -> Response:
    return _retrieve(request, archive, ctx, settings.public_url, study, series, sop)


def _retrieve(
    request: Request,
    archive: Archive,
    ctx: Context,
    public_url: str,
    study: str,
    series: str | None = None,
    sop: str | None = None,
) -> Response:
    choice = mp.negotiate_dicom(request.headers.get("accept"), single_part=sop is not None)
    deliveries = [_plan(inst, choice.syntaxes) for inst in resolve(archive, ctx, study, series, sop)]
    if not choice.multipart:
        return dicom_file(archive, deliveries[0], request.headers.get("range"))
    ready: dict[str, bytes] = {}
    if len(deliveries) == 1 and not deliveries[0].as_stored:  # transcode now: a failure is still a 406
        ready[deliveries[0].instance.sop_uid] = _transcoded(archive, deliveries[0])
    parts = _dicom_parts(archive, deliveries, _base(request, public_url), ready, fallback=choice.defaulted)
    boundary = mp.new_boundary()
    return StreamingResponse(mp.stream(parts, boundary), media_type=mp.content_type(mp.DICOM, boundary))


def _plan(inst: StoredInstance, syntaxes: Sequence[str]) -> Delivery:
    delivery = retrieve.plan(inst, syntaxes)
    if delivery is None:
        stored = UID(inst.transfer_syntax_uid).name
        raise mp.not_acceptable(
            f"instance {inst.sop_uid} is stored as {stored} and cannot be sent as {', '.join(syntaxes)}; "
            "ask with transfer-syntax=* to receive it as stored"
        )
    return delivery


def _transcoded(archive: Archive, d: Delivery) -> bytes:
    try:
        return pixels.transcode(retrieve.read_object(archive, d.instance), d.transfer_syntax)
    except CannotTranscode as exc:
        raise mp.not_acceptable(f"instance {d.instance.sop_uid}: {exc.detail}; ask with transfer-syntax=*") from None


def _dicom_parts(
    archive: Archive, deliveries: list[Delivery], base: str, ready: dict[str, bytes], *, fallback: bool
) -> Iterator[mp.Part]:
    """One part per instance, transcoded just before it is written.

    Yields
    ------
    mp.Part
        The next instance. When decoding fails mid-stream (the response is under way) and the
        client named no transfer syntax, the instance goes as stored with its own syntax in the
        part's Content-Type (PS3.18 8.7.3.5.2 allows this where only a lossy original exists);
        otherwise the failure aborts the response, so the client sees an incomplete body.
    """
    for d in retrieve.read_ahead(archive, deliveries):
        inst = d.instance
        location = f"{base}/studies/{inst.study_uid}/series/{inst.series_uid}/instances/{inst.sop_uid}"
        ts, body = d.transfer_syntax, ready.get(inst.sop_uid)
        if body is None and not d.as_stored:
            try:
                body = pixels.transcode(retrieve.read_object(archive, inst), ts)
            except CannotTranscode as exc:
                uid = inst.sop_uid
                event(log, "wado.transcode_failed", level=logging.WARNING, sop_instance_uid=uid, detail=exc.detail)
                if not fallback:
                    raise
                ts = inst.transfer_syntax_uid
        chunks = [body] if body is not None else retrieve.iter_object(archive, inst)
        yield mp.Part(f"{mp.DICOM}; transfer-syntax={ts}", chunks, location)


def dicom_file(archive: Archive, d: Delivery, range_header: str | None, *, uri_service: bool = False) -> Response:
    """One instance as a bare application/dicom body; byte ranges when it goes out as stored.

    WADO-URI answers carry no transfer-syntax parameter (PS3.18 8.7.3.5.2, forbidden there).
    """
    media_type = mp.DICOM if uri_service else f"{mp.DICOM}; transfer-syntax={d.transfer_syntax}"
    if not d.as_stored:
        return Response(_transcoded(archive, d), media_type=media_type)
    size = d.instance.size
    span = mp.parse_range(range_header, size)
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(size)}
    if span is None:
        return StreamingResponse(retrieve.iter_object(archive, d.instance), media_type=media_type, headers=headers)
    start, end = span
    headers.update({"Content-Range": f"bytes {start}-{end - 1}/{size}", "Content-Length": str(end - start)})
    body = retrieve.iter_object(archive, d.instance, start, end)
    return StreamingResponse(body, status_code=206, media_type=media_type, headers=headers)


# ----- metadata -----------------------------------------------------------------------------


@router.get(STUDY + "/metadata", summary="Study metadata (application/dicom+json)")
def study_metadata(
    study: StudyUid, request: Request, archive: ArchiveDep, ctx: DicomwebContext, settings: SettingsDep
) -> Response:
    return _metadata(request, archive, ctx, settings.public_url, study)


@router.get(SERIES + "/metadata", summary="Series metadata")
def series_metadata(
    study: StudyUid,
    series: SeriesUid,
    request: Request,
    archive: ArchiveDep,
    ctx: DicomwebContext,
    settings: SettingsDep,
) -> Response:
    return _metadata(request, archive, ctx, settings.public_url, study, series)


@router.get(INSTANCE + "/metadata", summary="Instance metadata")
def instance_metadata(
    study: StudyUid,
    series: SeriesUid,
    sop: InstanceUid,
    request: Request,
    archive: ArchiveDep,
    ctx: DicomwebContext,
    settings: SettingsDep,
) -> Response:
    return _metadata(request, archive, ctx, settings.public_url, study, series, sop)


def _metadata(
    request: Request,
    archive: Archive,
    ctx: Context,
    public_url: str,
    study: str,
    series: str | None = None,
    sop: str | None = None,
) -> Response:
    if not any(r.matches(t) for r in mp.parse_accept(request.headers.get("accept")) for t in _JSON_TYPES):
        raise mp.not_acceptable(f"metadata is served as {DICOM_JSON}")
    with archive.db.read() as session:
        rows = retrieve.metadata(session, ctx, study, series, sop)
    prefix = f'"BulkDataURI":"{_base(request, public_url)}/studies/{study}/series/'
    out = []
    for series_uid, sop_uid, doc in rows:
        out.append(
            doc.replace(_PLACEHOLDER, f"{prefix}{series_uid}/instances/{sop_uid}/bulk/") if "bulk:" in doc else doc
        )
    return Response(("[" + ",".join(out) + "]").encode(), media_type=DICOM_JSON)


# ----- bulk data and frames -----------------------------------------------------------------


@router.get(INSTANCE + "/bulk/{path:path}", summary="Bulk data of an element (multipart octet-stream)")
def bulk_data(
    study: StudyUid,
    series: SeriesUid,
    sop: InstanceUid,
    path: BulkPath,
    request: Request,
    archive: ArchiveDep,
    ctx: DicomwebContext,
) -> Response:
    if not BULK_PATH_RE.fullmatch(path):
        raise HTTPException(400, detail=f"bulk data path {path[:80]!r} must be a tag, or sequence/item/tag steps")
    try:
        tags = pixels.parse_bulk_path(path)
    except ValueError as exc:
        raise HTTPException(400, detail=str(exc)) from None
    choice = mp.negotiate_bulk(request.headers.get("accept"))
    inst = resolve(archive, ctx, study, series, sop, with_json=True)[0]
    layout = inst.layout
    if tags == [0x7FE00010] and layout is not None and layout.kind == "encapsulated":
        return _pixels(archive, inst, list(range(1, inst.frame_count + 1)), choice)
    if choice.select(ExplicitVRLittleEndian, encapsulated=False) is None:
        raise mp.not_acceptable(f"this bulk data is served as {mp.OCTET}")
    value = None
    if tags == [0x7FE00010] and layout is not None and layout.kind == "native":
        whole = retrieve.frames_as_stored(archive, inst, range(1, inst.frame_count + 1))
        value = b"".join(whole) if whole is not None else None
    if value is None:
        value = pixels.element_bytes(retrieve.read_object(archive, inst), tags)
    if value is None:
        raise HTTPException(404, detail=f"instance {sop} has no element {path}")
    return _parts([value], f"{mp.OCTET}; transfer-syntax={ExplicitVRLittleEndian}", mp.OCTET, choice.multipart)


@router.get(INSTANCE + "/frames/{frames}", summary="Frames (octet-stream, or compressed as stored)")
def retrieve_frames(
    study: StudyUid,
    series: SeriesUid,
    sop: InstanceUid,
    frames: FrameList,
    request: Request,
    archive: ArchiveDep,
    ctx: DicomwebContext,
) -> Response:
    numbers = _frame_numbers(frames)
    inst = retrieve.instance(archive, ctx, study, series, sop)
    _check_frames(inst, numbers)
    return _pixels(archive, inst, numbers, mp.negotiate_bulk(request.headers.get("accept")))


#: frames one request may name (a 3,000-frame cine fits); each at most once
MAX_FRAMES = 10_000


def _frame_numbers(text: str) -> list[int]:
    """The frame list of PS3.18 10.4.1.1.3: positive integers separated by commas, each at most
    once, at most `MAX_FRAMES` of them; asking for one frame many times would make one request
    answer the object many times over."""
    items = text.split(",", MAX_FRAMES)
    if len(items) > MAX_FRAMES:
        raise HTTPException(400, detail=f"at most {MAX_FRAMES} frames in one request")
    if not FRAME_LIST_RE.fullmatch(text):
        raise HTTPException(400, detail=f"frame list {text[:80]!r} must be positive integers separated by commas")
    numbers = [int(p) for p in items]
    if min(numbers) < 1:
        raise HTTPException(400, detail="frame numbers start at 1")
    seen: set[int] = set()
    for n in numbers:
        if n in seen:
            raise HTTPException(400, detail=f"frame {n} is asked for more than once")
        seen.add(n)
    return numbers


def _check_frames(inst: StoredInstance, numbers: Sequence[int]) -> None:
    if not inst.frame_count:
        raise HTTPException(400, detail=f"instance {inst.sop_uid} has no pixel data, hence no frames")
    if max(numbers) > inst.frame_count:
        raise HTTPException(400, detail=f"frame {max(numbers)} does not exist; the instance has {inst.frame_count}")


def _pixels(archive: Archive, inst: StoredInstance, numbers: list[int], choice: mp.BulkChoice) -> Response:
    ts = inst.transfer_syntax_uid
    encapsulated = UID(ts).is_encapsulated
    selected = choice.select(ts, encapsulated=encapsulated)
    if selected is None:
        offer = mp.COMPRESSED_MEDIA_TYPES.get(ts, "") if encapsulated else ""
        raise mp.not_acceptable(f"frames of this instance are served as {mp.OCTET}" + (f" or {offer}" if offer else ""))
    media_type, decode = selected
    frames: Iterable[bytes] | None = None if decode else retrieve.frames_as_stored(archive, inst, numbers)
    if frames is None:
        data = retrieve.read_object(archive, inst)
        try:
            if encapsulated and not decode:
                frames = pixels.frames_encapsulated(data, numbers, inst.frame_count)
            else:
                frames = pixels.frames_decoded(data, numbers)
        except CannotTranscode as exc:
            raise mp.not_acceptable(f"{exc.detail}; ask for {mp.COMPRESSED_MEDIA_TYPES.get(ts, '*/*')}") from None
    out_ts = ts if encapsulated and not decode else ExplicitVRLittleEndian
    return _parts(frames, f"{media_type}; transfer-syntax={out_ts}", media_type, choice.multipart)


def _parts(bodies: Iterable[bytes], part_type: str, inner: str, multipart: bool) -> Response:
    """One body as it is, or the bodies as multipart/related, streamed: each is read (a ranged
    read of one frame) only when the answer reaches it, so a long frame list is never held whole."""
    parts = iter(bodies)
    first = next(parts)  # read now: a failure is still an error answer, not a cut stream
    second = next(parts, None)
    if not multipart and second is None:
        return Response(first, media_type=part_type)
    parts = itertools.chain([first], [] if second is None else [second], parts)
    boundary = mp.new_boundary()
    stream = mp.stream((mp.Part(part_type, [b]) for b in parts), boundary)
    return StreamingResponse(stream, media_type=mp.content_type(inner, boundary))


# ----- rendered and thumbnails --------------------------------------------------------------


def _rendered(
    request: Request,
    archive: Archive,
    ctx: Context,
    study: str,
    series: str | None = None,
    sop: str | None = None,
    frames: str | None = None,
    *,
    thumbnail: bool = False,
) -> Response:
    """PS3.18 10.4.1.1.3 / 10.4.1.1.4: one rendered image (study and series: a representative one)."""
    query = request.query_params
    media_type = mp.negotiate_rendered(request.headers.get("accept"), query.get("accept"))
    try:
        viewport, source = render.parse_viewport(query["viewport"]) if "viewport" in query else (None, None)
        params = render.RenderParams(
            media_type=media_type,
            quality=render.parse_quality(query["quality"]) if "quality" in query else render.DEFAULT_QUALITY,
            window=render.parse_window(query["window"]) if "window" in query else None,
            viewport=viewport or (render.THUMBNAIL if thumbnail else None),
            source=source,
        )
    except ValueError as exc:
        raise HTTPException(400, detail=str(exc)) from None
    numbers = _frame_numbers(frames) if frames is not None else [1]
    if len(numbers) > 1:
        raise HTTPException(400, detail="a rendered frame request names one frame")
    if series is not None and sop is not None:
        found = [retrieve.instance(archive, ctx, study, series, sop)]
    else:
        found = resolve(archive, ctx, study, series)
    images = [i for i in found if i.frame_count]
    if not images:
        raise mp.not_acceptable("nothing here has pixel data to render as an image")
    if sop is None:  # a representative image: the middle one of the first series with images
        images = [i for i in images if i.series_uid == images[0].series_uid]
    inst = images[len(images) // 2]
    if inst.dicom_json is None:  # the representative image: its attributes let it render from its frame
        inst = retrieve.instance(archive, ctx, inst.study_uid, inst.series_uid, inst.sop_uid)
    return Response(rendered_image(archive, inst, numbers[0], params), media_type=media_type)


def rendered_image(archive: Archive, inst: StoredInstance, frame: int, params: render.RenderParams) -> bytes:
    """Render one frame of `inst`, mapping what can go wrong to 400 (bad request) or 406.

    A native frame of an instance resolved with its DICOM JSON is rendered from its own bytes
    and the index's attributes (`retrieve.native_frame`); anything else from the whole object.
    """
    if not inst.frame_count:
        raise mp.not_acceptable(f"instance {inst.sop_uid} has no pixel data to render as an image")
    if frame > inst.frame_count:
        raise HTTPException(400, detail=f"frame {frame} does not exist; the instance has {inst.frame_count}")
    try:
        decoded = retrieve.native_frame(archive, inst, frame)
        if decoded is not None:
            return render.render_frame(decoded.pixels, decoded.attributes, params)
        return render.render(retrieve.read_dataset(archive, inst), frame=frame, params=params)
    except ValueError as exc:
        raise HTTPException(400, detail=str(exc)) from None
    except (NotImplementedError, RuntimeError) as exc:
        raise mp.not_acceptable(f"cannot decode the pixel data: {str(exc).splitlines()[0]}") from None


def _add_rendered_routes(suffix: str, *, thumbnail: bool) -> None:
    @router.get(STUDY + suffix, summary=f"Study {suffix[1:]}")
    def study_image(study: StudyUid, request: Request, archive: ArchiveDep, ctx: DicomwebContext) -> Response:
        return _rendered(request, archive, ctx, study, thumbnail=thumbnail)

    @router.get(SERIES + suffix, summary=f"Series {suffix[1:]}")
    def series_image(
        study: StudyUid, series: SeriesUid, request: Request, archive: ArchiveDep, ctx: DicomwebContext
    ) -> Response:
        return _rendered(request, archive, ctx, study, series, thumbnail=thumbnail)

    @router.get(INSTANCE + suffix, summary=f"Instance {suffix[1:]}")
    def instance_image(
        study: StudyUid,
        series: SeriesUid,
        sop: InstanceUid,
        request: Request,
        archive: ArchiveDep,
        ctx: DicomwebContext,
    ) -> Response:
        return _rendered(request, archive, ctx, study, series, sop, thumbnail=thumbnail)

    @router.get(INSTANCE + "/frames/{frames}" + suffix, summary=f"Frame {suffix[1:]}")
    def frame_image(
        study: StudyUid,
        series: SeriesUid,
        sop: InstanceUid,
        frames: FrameList,
        request: Request,
        archive: ArchiveDep,
        ctx: DicomwebContext,
    ) -> Response:
        return _rendered(request, archive, ctx, study, series, sop, frames, thumbnail=thumbnail)


_add_rendered_routes("/rendered", thumbnail=False)
_add_rendered_routes("/thumbnail", thumbnail=True)
