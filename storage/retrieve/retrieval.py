"""The retrieve path: the stored instances a principal may read, and their bytes.

WADO-RS (PS3.18 10.4), WADO-URI (PS3.18 9) and, later, C-MOVE / C-GET (PS3.4 C.4.2, C.4.3)
resolve what to send here: `instances` applies `storage.access.principal.visible_to` to the study and
answers from the index alone, so a study that exists but is not visible is as absent as one
that does not exist. The bytes come from the blob store as stored: whole objects as chunk
streams, frames as byte ranges located by the pixel layout kept at ingest (after A5's
`FrameHandler` and A2's frame offsets), so a frame of a large multi-frame object costs one
ranged read. Where the caller wants another encoding than the one stored, `transcode`
decompresses with pydicom's decoders (pylibjpeg, openjpeg, RLE) to an uncompressed little
endian transfer syntax; nothing is ever re-compressed.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVarTuple

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options, pack_bits, pixel_array
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import ColumnElement, Select, bindparam, select
from sqlalchemy.orm import Session

from storage.access.principal import Principal, visible_to
from storage.archive import Archive
from storage.dicom.dicomjson import PixelLayout
from storage.dicom.parse import UID_RE
from storage.errors import CannotTranscode, InvalidUid, NotFound
from storage.index.models import Instance, Series, Study

#: uncompressed syntaxes `transcode` can produce (PS3.18 8.7.3.5.2: Explicit VR LE is the default)
NATIVE_TARGETS = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
CHUNK = 1 << 20
Ts = TypeVarTuple("Ts")
_SWAP_WIDTH = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


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


def check_uid(keyword: str, value: str) -> None:
    """Refuse a UID that PS3.5 9.1 does not allow before it reaches a query."""
    if len(value) > 64 or not UID_RE.match(value):
        raise InvalidUid(f"{keyword} {value[:80]!r} is not a valid UID (PS3.5 9.1)")


def _scoped(q: Select[*Ts], principal: Principal, study: str, series: str | None, sop: str | None) -> Select[*Ts]:
    """Join instance -> series -> study, filter by what `principal` may see, order for output."""
    q = (
        q.join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Instance.study_id)
        .where(Study.study_uid == study, visible_to(principal))
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
    principal: Principal,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    *,
    with_json: bool = False,
) -> list[StoredInstance]:
    """The instances of a study, series or instance that `principal` may read (PS3.18 10.4.1).

    Ordered by series number then instance number. `with_json` also loads each instance's
    DICOM JSON (for frames and rendering, which need the pixel attributes).

    Raises
    ------
    InvalidUid
        A UID of the request is not a UID.
    NotFound
        Nothing matches, or the study is not visible to `principal`.
    """
    _check_uids(study_uid, series_uid, sop_uid)
    cols = (*STORED_INSTANCE_COLUMNS, Instance.dicom_json) if with_json else STORED_INSTANCE_COLUMNS
    rows = session.execute(_scoped(select(*cols), principal, study_uid, series_uid, sop_uid)).all()
    if not rows:
        raise NotFound(_missing(study_uid, series_uid, sop_uid))
    return [StoredInstance(**row._asdict()) for row in rows]


def metadata(
    session: Session, principal: Principal, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[tuple[str, str, str]]:
    """(series UID, SOP instance UID, stored DICOM JSON) of each instance, from the index only.

    The JSON is returned as stored (a string), so an answer for a whole study is a join of
    strings, never a parse (PS3.18 10.4.1.1.2, DESIGN "Ingest rules").
    """
    _check_uids(study_uid, series_uid, sop_uid)
    columns = select(Series.series_uid, Instance.sop_uid, Instance.dicom_json)
    q = _scoped(columns, principal, study_uid, series_uid, sop_uid)
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


def can_transcode(stored: str, target: str) -> bool:
    """Whether `transcode` can turn an object stored in `stored` into `target` (no encoder is used)."""
    if target == stored:
        return True
    uid = UID(stored)
    if target not in NATIVE_TARGETS or not uid.is_transfer_syntax:
        return False
    if not uid.is_encapsulated:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def plan(inst: StoredInstance, syntaxes: Sequence[str]) -> Delivery | None:
    """The first of `syntaxes` (preference order, `*` = as stored) this instance can be sent in."""
    for ts in syntaxes:
        if ts in ("*", inst.transfer_syntax_uid):
            return Delivery(inst, inst.transfer_syntax_uid)
        if can_transcode(inst.transfer_syntax_uid, ts):
            return Delivery(inst, ts)
    return None


def transcode(data: bytes, target: str) -> bytes:
    """Re-encode a Part-10 object in an uncompressed little endian syntax (PS3.5 A.2, A.4).

    Encapsulated pixel data is decoded (colour as RGB, as pydicom's `decompress` does); big
    endian OW/OL/OF/OD values are byte-swapped. The SOP Instance UID is kept: decoding changes
    the encoding, not the instance (a lossy original stays marked by Lossy Image Compression).

    Raises
    ------
    CannotTranscode
        No decoder for the stored syntax, or the decoder failed on this object.
    """
    if target not in NATIVE_TARGETS:
        raise CannotTranscode(f"transcoding to {target} is not supported (only to {', '.join(sorted(NATIVE_TARGETS))})")
    ds = dcmread(io.BytesIO(data))
    src = ds.file_meta.TransferSyntaxUID
    try:
        if src.is_encapsulated and "PixelData" in ds:
            ds.decompress(as_rgb=True, generate_instance_uid=False)
        elif not src.is_little_endian:
            _swap_to_little_endian(ds)
        ds.file_meta.TransferSyntaxUID = UID(target)
        out = io.BytesIO()
        dcmwrite(out, ds, implicit_vr=target == ImplicitVRLittleEndian, little_endian=True, force_encoding=True)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError, KeyError) as exc:
        raise CannotTranscode(f"cannot decode {src.name}: {str(exc).splitlines()[0]}") from None
    return out.getvalue()


def _swap_to_little_endian(ds: Dataset) -> None:
    """Byte-swap the binary values pydicom keeps as raw big endian bytes (PS3.5 7.3)."""
    for elem in ds.iterall():
        if isinstance(elem.value, bytes) and elem.VR in _SWAP_WIDTH:
            elem.value = swap_bytes(elem.value, _swap_width(elem, ds))


def _swap_width(elem: DataElement, ds: Dataset) -> int:
    """Bytes per word of a big endian binary value: the VR's, or BitsAllocated for 32/64-bit OW pixels."""
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if elem.tag == 0x7FE00010 and elem.VR == "OW" and bits in (32, 64):
        return bits // 8
    return _SWAP_WIDTH.get(str(elem.VR), 1)


def swap_bytes(data: bytes, width: int) -> bytes:
    n = len(data) // width * width
    if width <= 1 or not n:
        return data
    return np.frombuffer(data[:n], dtype=f">u{width}").astype(f"<u{width}").tobytes() + data[n:]


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


def instance(archive: Archive, principal: Principal, study_uid: str, series_uid: str, sop_uid: str) -> StoredInstance:
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
        No such instance in that series and study, or the study is not visible to `principal`.
    """
    _check_uids(study_uid, series_uid, sop_uid)
    query = _one_instance_query(visible_to(principal))
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
    gives the same expression object for every principal until [4/7] (`true()`), and a
    statement built on the very same expression object is the same statement.
    """
    last = _last_query[0] if _last_query else None
    if last is not None and last[0] is visible:
        return last[1]
    query = _ONE_INSTANCE.where(visible)
    _last_query[:] = [(visible, query)]
    return query


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """One frame's pixels and the attributes that say how to display them.

    `attributes` describes the frame as a single-frame image: its Image Pixel, Modality LUT
    and VOI LUT attributes and, for enhanced objects, the functional groups with only this
    frame's Per-Frame item, so it renders as frame 1 of `attributes`.
    """

    pixels: NDArray[Any]
    attributes: Dataset


#: the top-level attributes rendering reads: group 0028 (Image Pixel, Modality LUT, VOI LUT, palettes;
#: PS3.3 C.7.6.3, C.11.1, C.11.2, C.7.9), Pixel Presentation (C.8.16.2.1.1.1) and functional groups (C.7.6.16)
_DISPLAY_GROUP = "0028"
_PIXEL_PRESENTATION, _SHARED_GROUPS, _PER_FRAME_GROUPS = "00089205", "52009229", "52009230"
_NUMBER_OF_FRAMES = "00280008"


def native_frame(archive: Archive, inst: StoredInstance, number: int) -> DecodedFrame | None:
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
    attributes = _frame_attributes(doc, number)
    if attributes is None:
        return None
    attributes.file_meta = FileMetaDataset()
    attributes.file_meta.TransferSyntaxUID = UID(inst.transfer_syntax_uid)  # for OW LUT data's byte order
    options = as_pixel_options(attributes, number_of_frames=1, pixel_keyword="PixelData")
    if options.get("bits_allocated") not in (8, 16, 32) or options.get("photometric_interpretation") == "YBR_FULL_422":
        return None
    frames = _native_frames(archive, inst, layout, [number], doc)
    if frames is None:
        return None
    try:
        pixels, _ = get_decoder(inst.transfer_syntax_uid).as_array(frames[0], index=0, **options)
    except (AttributeError, ValueError):  # attributes the decoder refuses: the whole object decides
        return None
    return DecodedFrame(pixels, attributes)


def _frame_attributes(doc: dict[str, Any], number: int) -> Dataset | None:
    """The display attributes of frame `number` from an instance's DICOM JSON (see `DecodedFrame`)."""
    subset = {k: v for k, v in doc.items() if k.startswith(_DISPLAY_GROUP) and k != _NUMBER_OF_FRAMES}
    for tag in (_PIXEL_PRESENTATION, _SHARED_GROUPS):
        if tag in doc:
            subset[tag] = doc[tag]
    per_frame = doc.get(_PER_FRAME_GROUPS, {}).get("Value") or []
    if len(per_frame) >= number:
        subset[_PER_FRAME_GROUPS] = {"vr": "SQ", "Value": [per_frame[number - 1]]}
    if _has_bulk_data(subset):
        return None
    try:
        return _dataset_from_json(subset)
    except (TypeError, ValueError):  # a value pydicom will not take back from JSON: the whole object decides
        return None


#: VRs whose DICOM JSON "Value" list holds the values themselves (PS3.18 F.2.3): numbers and plain text
_PLAIN_VRS = frozenset(
    {
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "FD",
        "FL",
        "IS",
        "LO",
        "LT",
        "SH",
        "SL",
        "SS",
        "ST",
        "SV",
        "TM",
        "UI",
        "UL",
        "US",
        "UT",
        "UV",
    }
)


def _dataset_from_json(elements: dict[str, Any]) -> Dataset:
    """`Dataset.from_json(elements)`, with plain values handed to `DataElement` directly.

    pydicom's JSON reader spends ~25 us an element on conversions these values do not need
    (a CT's dozen display attributes: 0.3 ms of a 5 ms rendered request); sequences, binary
    and person-name values, and empty or partly empty ones still go through it.
    """
    ds = Dataset()
    rest: dict[str, Any] = {}
    for tag, element in elements.items():
        values = element.get("Value")
        if element.get("vr") in _PLAIN_VRS and values and None not in values:
            ds.add(DataElement(int(tag, 16), element["vr"], values[0] if len(values) == 1 else values))
        else:
            rest[tag] = element
    if rest:
        ds.update(Dataset.from_json(rest))
    return ds


def _has_bulk_data(elements: dict[str, Any]) -> bool:
    for element in elements.values():
        if "BulkDataURI" in element:
            return True
        if element.get("vr") == "SQ" and any(_has_bulk_data(item) for item in element.get("Value") or []):
            return True
    return False


def frames_as_stored(archive: Archive, inst: StoredInstance, numbers: Sequence[int]) -> list[bytes] | None:
    """Frames by ranged reads, in the stored encoding; None where the layout cannot say.

    Native frames come back little endian (big endian 16/32-bit words are swapped), encapsulated
    frames as their fragments' bytes concatenated without item headers (PS3.18 8.7.3.3.2).
    None for deflated objects, unknown fragment-to-frame mappings, or bit-packed frames that
    do not start on a byte boundary: the caller then decodes the whole object. `inst` must be
    resolved `with_json=True` (the native path needs BitsAllocated and the Pixel Data VR).
    """
    layout = inst.layout
    if layout is None or inst.dicom_json is None:
        return None
    if layout.kind == "native":
        return _native_frames(archive, inst, layout, numbers)
    if len(layout.frames) < max(numbers, default=0):
        return None
    out = []
    for n in numbers:
        first, count = layout.frames[n - 1]
        frags = layout.fragments[first : first + count]
        start, end = frags[0][0], frags[-1][0] + frags[-1][1]
        span = archive.blobs.read_range(inst.object_key, start, end - start)
        out.append(b"".join(span[off - start : off - start + length] for off, length in frags))
    return out


def _native_frames(
    archive: Archive,
    inst: StoredInstance,
    layout: PixelLayout,
    numbers: Sequence[int],
    attrs: dict[str, Any] | None = None,
) -> list[bytes] | None:
    """`attrs` is the instance's DICOM JSON when the caller has parsed it already."""
    attrs = inst.attributes() if attrs is None else attrs
    length, bits = layout.frame_length, int(_first(attrs, "00280100", 0))
    if _first(attrs, "00280004", "") == "YBR_FULL_422":  # two samples a pixel, not three (PS3.3 C.7.6.3.1.2)
        length = length // 3 * 2
    pixels = (inst.rows or 0) * (inst.columns or 0) * int(_first(attrs, "00280002", 1))
    if not length or (bits == 1 and inst.frame_count > 1 and pixels % 8):
        return None
    big = not UID(inst.transfer_syntax_uid).is_little_endian
    vr = attrs.get("7FE00010", {}).get("vr", "OW")
    width = (bits // 8 if bits in (32, 64) else 2) if big and vr == "OW" else 1
    if width > 1 and length % width:
        return None
    frames = [archive.blobs.read_range(inst.object_key, layout.offset + (n - 1) * length, length) for n in numbers]
    return [swap_bytes(f, width) for f in frames] if width > 1 else frames


def _first(attrs: dict[str, Any], tag: str, default: object) -> Any:
    values = attrs.get(tag, {}).get("Value")
    return values[0] if values and values[0] is not None else default


def frames_encapsulated(data: bytes, numbers: Sequence[int], frame_count: int) -> list[bytes]:
    """Compressed frames found by pydicom's fragment parsing (when the index has no mapping)."""
    ds = dcmread(io.BytesIO(data))
    wanted = set(numbers)
    frames = generate_frames(ds.PixelData, number_of_frames=frame_count)
    found = {i + 1: f for i, f in enumerate(frames) if i + 1 in wanted}
    return [found[n] for n in numbers]


def frames_decoded(data: bytes, numbers: Sequence[int]) -> list[bytes]:
    """Frames decoded to uncompressed little endian bytes (colour as interleaved RGB).

    Raises
    ------
    CannotTranscode
        No decoder can read this object's pixel data.
    """
    try:
        ds = dcmread(io.BytesIO(data))
        bits = int(ds.get("BitsAllocated", 8) or 8)
        out = []
        for n in numbers:
            arr = pixel_array(ds, index=n - 1)
            out.append(pack_bits(arr) if bits == 1 else arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    except (NotImplementedError, RuntimeError, ValueError, AttributeError) as exc:
        raise CannotTranscode(f"cannot decode the pixel data: {str(exc).splitlines()[0]}") from None
    return out


def parse_bulk_path(path: str) -> list[int]:
    """`7FE00010` or `00540016/1/00181072` (sequence, 1-based item, tag...) -> [tag, item, tag]."""
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts or len(parts) % 2 == 0:
        raise ValueError(f"bulk data path {path!r} must be a tag, or sequence/item/tag steps")
    out: list[int] = []
    for i, p in enumerate(parts):
        if i % 2 == 0:
            if len(p) != 8:
                raise ValueError(f"{p!r} is not a tag of 8 hex digits")
            out.append(int(p, 16))
        else:
            out.append(int(p))
            if out[-1] < 1:
                raise ValueError("sequence items are numbered from 1")
    return out


def element_bytes(data: bytes, path: Sequence[int]) -> bytes | None:
    """The value of the element at `path` as little endian bytes, or None if absent.

    Binary values are returned as stored (big endian objects swapped to little endian, PS3.18
    8.7.3.3.1); numeric multi-values (US, SS, FL...) are packed little endian.
    """
    ds = dcmread(io.BytesIO(data))
    big = not ds.file_meta.TransferSyntaxUID.is_little_endian
    node: Dataset = ds
    for i in range(0, len(path) - 1, 2):
        seq_tag, item = Tag(path[i]), path[i + 1]
        if seq_tag not in node or node[seq_tag].VR != "SQ" or len(node[seq_tag].value) < item:
            return None
        node = node[seq_tag].value[item - 1]
    tag = Tag(path[-1])
    if tag not in node:
        return None
    elem = node[tag]
    value = elem.value
    if value is None:
        return b""
    if isinstance(value, bytes):
        return swap_bytes(value, _swap_width(elem, node)) if big else value
    if isinstance(value, str):
        return value.encode()
    fmt = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}.get(str(elem.VR))
    values = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    if fmt is None:
        return "\\".join(str(v) for v in values).encode()
    return struct.pack(f"<{len(values)}{fmt}", *values)
