"""The retrieve path: the stored instances a ctx may read, and their bytes.

WADO-RS (PS3.18 10.4), WADO-URI (PS3.18 9) and, later, C-MOVE / C-GET (PS3.4 C.4.2, C.4.3)
resolve what to send here: `instances` applies `storage.access.policy.visible_to` to the study and
answers from the index alone, so a study that exists but is not visible is as absent as one
that does not exist. The bytes come from the blob store as stored: whole objects as chunk
streams, frames as byte ranges located by the pixel layout kept at ingest (after A5's
`FrameHandler` and A2's frame offsets), so a frame of a large multi-frame object costs one
ranged read. Decoding, when the caller wants another encoding than the one stored, is
`storage.dicom.pixels` (to an uncompressed little endian syntax; nothing is ever re-compressed).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVarTuple

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy import ColumnElement, Select, bindparam, select
from sqlalchemy.orm import Session

from storage.access.context import Context
from storage.access.policy import visible_to
from storage.archive import Archive
from storage.dicom import pixels
from storage.dicom.dicomjson import PixelLayout
from storage.dicom.uids import check_uid
from storage.errors import NotFound
from storage.index.models import Instance, Series, Study

CHUNK = 1 << 20
Ts = TypeVarTuple("Ts")


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """An instance the caller may read: where its bytes are and how they are encoded."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    size: int
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    pixel_layout: str | None
    dicom_json: str | None = None

    @property
    def layout(self) -> PixelLayout | None:
        if not self.pixel_layout:
            return None
        raw = json.loads(self.pixel_layout)
        return PixelLayout(
            kind=raw["kind"],
            offset=raw.get("offset", 0),
            length=raw.get("length", 0),
            frame_length=raw.get("frame_length", 0),
            fragments=[(int(a), int(b)) for a, b in raw.get("fragments", [])],
            frames=[(int(a), int(b)) for a, b in raw.get("frames", [])],
        )

    @property
    def frame_count(self) -> int:
        return self.number_of_frames or (1 if self.rows else 0)

    def attributes(self) -> dict[str, Any]:
        """The instance's DICOM JSON (only loaded when asked for, see `instances`)."""
        if self.dicom_json is None:
            raise ValueError("instance was resolved without its DICOM JSON")
        data: dict[str, Any] = json.loads(self.dicom_json)
        return data


@dataclass(frozen=True, slots=True)
class Delivery:
    """How one instance goes out: as stored, or transcoded to `transfer_syntax`."""

    instance: StoredInstance
    transfer_syntax: str

    @property
    def as_stored(self) -> bool:
        return self.transfer_syntax == self.instance.transfer_syntax_uid


def _scoped(q: Select[*Ts], ctx: Context, study: str, series: str | None, sop: str | None) -> Select[*Ts]:
    """Join instance -> series -> study, filter by what `ctx` may see, order for output."""
    q = (
        q.join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Instance.study_id)
        .where(Study.study_uid == study, visible_to(ctx))
    )
    if series is not None:
        q = q.where(Series.series_uid == series)
    if sop is not None:
        q = q.where(Instance.sop_uid == sop)
    return q.order_by(
        Series.series_number.asc().nulls_last(),
        Series.id,
        Instance.instance_number.asc().nulls_last(),
        Instance.id,
    )


def _check_uids(study: str, series: str | None, sop: str | None) -> None:
    for keyword, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series), ("SOPInstanceUID", sop)):
        if uid is not None:
            check_uid(keyword, uid)


#: the columns a StoredInstance is built from (also what C-MOVE/C-GET select, storage.retrieve.selection)
STORED_INSTANCE_COLUMNS = (
    Study.study_uid,
    Series.series_uid,
    Instance.sop_uid,
    Instance.sop_class_uid,
    Instance.transfer_syntax_uid,
    Instance.object_key,
    Instance.size,
    Instance.rows,
    Instance.columns,
    Instance.number_of_frames,
    Instance.pixel_layout,
)


def instances(
    session: Session,
    ctx: Context,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    *,
    with_json: bool = False,
) -> list[StoredInstance]:
    """The instances of a study, series or instance that `ctx` may read (PS3.18 10.4.1).

    Ordered by series number then instance number. `with_json` also loads each instance's
    DICOM JSON (for frames and rendering, which need the pixel attributes).

    Raises
    ------
    InvalidUid
        A UID of the request is not a UID.
    NotFound
        Nothing matches, or the study is not visible to `ctx`.
    """
    _check_uids(study_uid, series_uid, sop_uid)
    cols = (*STORED_INSTANCE_COLUMNS, Instance.dicom_json) if with_json else STORED_INSTANCE_COLUMNS
    rows = session.execute(_scoped(select(*cols), ctx, study_uid, series_uid, sop_uid)).all()
    if not rows:
        raise NotFound(_missing(study_uid, series_uid, sop_uid))
    return [StoredInstance(**row._asdict()) for row in rows]


def metadata(
    session: Session, ctx: Context, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[tuple[str, str, str]]:
    """(series UID, SOP instance UID, stored DICOM JSON) of each instance, from the index only.

    The JSON is returned as stored (a string), so an answer for a whole study is a join of
    strings, never a parse (PS3.18 10.4.1.1.2, DESIGN "Ingest rules").
    """
    _check_uids(study_uid, series_uid, sop_uid)
    columns = select(Series.series_uid, Instance.sop_uid, Instance.dicom_json)
    q = _scoped(columns, ctx, study_uid, series_uid, sop_uid)
    rows = [(str(a), str(b), str(c)) for a, b, c in session.execute(q).all()]
    if not rows:
        raise NotFound(_missing(study_uid, series_uid, sop_uid))
    return rows


def _missing(study: str, series: str | None, sop: str | None) -> str:
    if sop is not None:
        return f"no instance {sop} in series {series} of study {study}"
    if series is not None:
        return f"no series {series} in study {study}"
    return f"no study {study}"


# ----- whole objects ------------------------------------------------------------------------


def iter_object(archive: Archive, inst: StoredInstance, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The stored bytes `[start, end)` as a stream of chunks of at most 1 MiB.

    Yields
    ------
    bytes
        The next chunk; the whole object is never held in memory.
    """
    stop = inst.size if end is None else min(end, inst.size)
    if start == 0 and stop == inst.size:
        yield from archive.blobs.iter_chunks(inst.object_key, CHUNK)
        return
    pos = start
    while pos < stop:
        n = min(CHUNK, stop - pos)
        yield archive.blobs.read_range(inst.object_key, pos, n)
        pos += n


#: how many instances ahead of the one being sent are read into the page cache
READ_AHEAD = 16


def read_ahead(archive: Archive, deliveries: Sequence[Delivery], window: int = READ_AHEAD) -> Iterator[Delivery]:
    """`deliveries` in order, each yielded once the next `window` are being read ahead.

    A study retrieved from a cold cache otherwise waits for the disk at every instance:
    one file read, then its sending, then the next read. With the next files already
    requested (`BlobStore.prefetch`), their reads overlap the sending.
    """
    for d in deliveries[:window]:
        archive.blobs.prefetch(d.instance.object_key)
    for i, d in enumerate(deliveries):
        if i + window < len(deliveries):
            archive.blobs.prefetch(deliveries[i + window].instance.object_key)
        yield d


def read_object(archive: Archive, inst: StoredInstance) -> bytes:
    return b"".join(archive.blobs.iter_chunks(inst.object_key, CHUNK))


def read_dataset(archive: Archive, inst: StoredInstance) -> Dataset:
    return dcmread(io.BytesIO(read_object(archive, inst)))


def plan(inst: StoredInstance, syntaxes: Sequence[str]) -> Delivery | None:
    """The first of `syntaxes` (preference order, `*` = as stored) this instance can be sent in."""
    for ts in syntaxes:
        if ts in ("*", inst.transfer_syntax_uid):
            return Delivery(inst, inst.transfer_syntax_uid)
        if pixels.can_transcode(inst.transfer_syntax_uid, ts):
            return Delivery(inst, ts)
    return None


# ----- frames and bulk data -----------------------------------------------------------------


_I, _SE, _ST = Instance.__table__.c, Series.__table__.c, Study.__table__.c
#: `instances(..., with_json=True)` for one named instance, built once as a Core statement
_ONE_INSTANCE = (
    select(
        _ST.study_uid,
        _SE.series_uid,
        _I.sop_uid,
        _I.sop_class_uid,
        _I.transfer_syntax_uid,
        _I.object_key,
        _I.size,
        _I.rows,
        _I.columns,
        _I.number_of_frames,
        _I.pixel_layout,
        _I.dicom_json,
    )
    .select_from(
        Instance.__table__.join(Series.__table__, _SE.id == _I.series_id).join(Study.__table__, _ST.id == _I.study_id)
    )
    .where(_I.sop_uid == bindparam("sop"), _SE.series_uid == bindparam("series"), _ST.study_uid == bindparam("study"))
)


def instance(archive: Archive, ctx: Context, study_uid: str, series_uid: str, sop_uid: str) -> StoredInstance:
    """One named instance with its DICOM JSON, as `instances(..., with_json=True)` gives it.

    For frame and rendered requests (PS3.18 10.4.1.1.3-4), which name one instance and are
    a few milliseconds in all: building, compiling and result-adapting the ORM query of
    `instances` cost ~0.7 ms of them, this prebuilt Core statement ~0.2 ms. The same
    `visible_to` filter applies, so an invisible instance is as absent as a missing one.

    Raises
    ------
    InvalidUid
        A UID of the request is not a UID.
    NotFound
        No such instance in that series and study, or the study is not visible to `ctx`.
    """
    _check_uids(study_uid, series_uid, sop_uid)
    query = _one_instance_query(visible_to(ctx))
    with archive.db.engine.connect() as conn:
        row = conn.execute(query, {"sop": sop_uid, "series": series_uid, "study": study_uid}).first()
    if row is None:
        raise NotFound(_missing(study_uid, series_uid, sop_uid))
    return StoredInstance(**row._asdict())


_last_query: list[tuple[ColumnElement[bool], Select[Any]]] = []


def _one_instance_query(visible: ColumnElement[bool]) -> Select[Any]:
    """`_ONE_INSTANCE` filtered by `visible`, the statement of the last call when `visible` is that call's object.

    SQLAlchemy finds a compiled statement by working out the structure of the statement
    object it is given (~0.1 ms); the same object carries that work over. `visible_to`
    gives the same expression object for every ctx until [4/7] (`true()`), and a
    statement built on the very same expression object is the same statement.
    """
    last = _last_query[0] if _last_query else None
    if last is not None and last[0] is visible:
        return last[1]
    query = _ONE_INSTANCE.where(visible)
    _last_query[:] = [(visible, query)]
    return query


def native_frame(archive: Archive, inst: StoredInstance, number: int) -> pixels.DecodedFrame | None:
    """Frame `number` (1-based) of a native little endian object, without reading the object.

    A rendered frame needs that frame's pixels and a dozen attributes; reading and parsing
    the whole object for them was half of a rendered request. Here the frame is one ranged
    read (as `frames_as_stored` does it), decoded by pydicom's own native decoder with the options
    `pixel_array` takes from a dataset, so the array equals `pixel_array(ds, index=number - 1)`;
    the attributes come from the DICOM JSON kept at ingest.

    None where that cannot be exact and the caller must decode the whole object: encapsulated,
    deflated or big endian objects, float pixel data (no layout), bit-packed or subsampled
    (YBR_FULL_422) frames, and attributes held as bulk data (a palette or LUT larger than
    1 KB). `inst` must be resolved with its DICOM JSON.
    """
    layout = inst.layout
    if (
        inst.dicom_json is None
        or layout is None
        or layout.kind != "native"
        or not UID(inst.transfer_syntax_uid).is_little_endian
        or not 1 <= number <= inst.frame_count
    ):
        return None
    doc = json.loads(inst.dicom_json)
    display = pixels.frame_display(doc, number, inst.transfer_syntax_uid)
    if display is None:
        return None
    read = _native_frame_reader(archive, inst, layout, doc)
    if read is None:
        return None
    decoded = pixels.decode_native(read(number), inst.transfer_syntax_uid, display[1])
    return None if decoded is None else pixels.DecodedFrame(decoded, display[0])


def frames_as_stored(archive: Archive, inst: StoredInstance, numbers: Sequence[int]) -> Iterator[bytes] | None:
    """Frames by ranged reads, in the stored encoding, read one at a time as the caller iterates;
    None where the layout cannot say.

    Native frames come back little endian (big endian 16/32-bit words are swapped), encapsulated
    frames as their fragments' bytes concatenated without item headers (PS3.18 8.7.3.3.2).
    None for deflated objects, unknown fragment-to-frame mappings, or bit-packed frames that
    do not start on a byte boundary: the caller then decodes the whole object. `inst` must be
    resolved `with_json=True` (the native path needs BitsAllocated and the Pixel Data VR).
    Only one frame is in memory at a time, however many are asked for.
    """
    layout = inst.layout
    if layout is None or inst.dicom_json is None:
        return None
    if layout.kind == "native":
        read = _native_frame_reader(archive, inst, layout)
        return None if read is None else map(read, numbers)
    if len(layout.frames) < max(numbers, default=0):
        return None
    return (_encapsulated_frame(archive, inst, layout, n) for n in numbers)


def _encapsulated_frame(archive: Archive, inst: StoredInstance, layout: PixelLayout, number: int) -> bytes:
    first, count = layout.frames[number - 1]
    frags = layout.fragments[first : first + count]
    start, end = frags[0][0], frags[-1][0] + frags[-1][1]
    span = archive.blobs.read_range(inst.object_key, start, end - start)
    return b"".join(span[off - start : off - start + length] for off, length in frags)


def _native_frame_reader(
    archive: Archive, inst: StoredInstance, layout: PixelLayout, attrs: dict[str, Any] | None = None
) -> Callable[[int], bytes] | None:
    """A function reading native frame n (1-based), or None where frames are not byte ranges.

    `attrs` is the instance's DICOM JSON when the caller has parsed it already.
    """
    attrs = inst.attributes() if attrs is None else attrs
    samples = (inst.rows or 0) * (inst.columns or 0) * int(pixels.first_value(attrs, "00280002", 1))
    length = pixels.native_frame_length(attrs, layout.frame_length, samples, inst.frame_count)
    width = pixels.big_endian_word(attrs, inst.transfer_syntax_uid)
    if length is None or length % width:
        return None

    def read(number: int) -> bytes:
        frame = archive.blobs.read_range(inst.object_key, layout.offset + (number - 1) * length, length)
        return pixels.swap_bytes(frame, width) if width > 1 else frame

    return read
