"""Parse and validate one received object; everything ingest indexes comes from here.

Reading is lazy where it can be: values over a few KB (Pixel Data above all) are deferred,
so a 500 KB CT slice costs a header parse, not a copy of its pixels. pydicom is lenient with
damaged input (a truncated file often parses as a shorter dataset), so the checks here are
explicit: the last element must end where the file ends, UIDs must be UIDs (PS3.5 9.1), text
must decode in its declared character set (and hold no NUL byte), sequences nest at most
`MAX_DEPTH` deep, and native Pixel Data holds the bytes its Rows, Columns, samples, bits and
frames say (PS3.5 8.1.1).

The bytes are a peer's: anything pydicom raises while reading them (an unknown VR byte, a
length that overflows, a recursion through thousands of nested items) is a refusal with a
reason (`RejectedInput`), never a crash, and no message names a server path.
"""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

from storage.dicom.charset import TEXT_VRS, check_decodes, fold, python_encodings
from storage.dicom.columns import Columns
from storage.dicom.columns import integer as _int
from storage.dicom.columns import text as _text
from storage.dicom.dicomjson import (
    PIXEL_DATA,
    UNDEFINED,
    PixelLayout,
    dicom_json_dict,
    element_vr,
    pixel_layout,
    walk_items,
)
from storage.dicom.uids import check_uid
from storage.errors import BadCharset, MissingUid, NotDicom, PixelDataMismatch, RejectedInput, TooDeep, Truncated

DEFER_SIZE = 4096
#: sequences inside sequences a stored object may have: SR content trees, the deepest in practice,
#: stay well below it; a thousand levels is an attack on the parser's recursion
MAX_DEPTH = 32
#: bytes native Pixel Data may hold beyond what its attributes make (padding some devices write)
PIXEL_SLACK = 65536

STUDY_TAGS = frozenset(
    "00080005 00080020 00080030 00080050 00080051 00080090 00081030 00081032 00081060 "
    "00100010 00100020 00100021 00100024 00100030 00100032 00100040 00101000 00101001 00101002 "
    "00101010 00101020 00101030 00101040 00102160 00104000 0020000D 00200010 00321032 00321060".split()
)
#: what QIDO-RS and C-FIND answer about an instance beside its study and series: the PS3.18
#: defaults and what viewers and workstations commonly ask (image geometry, windowing, content
#: date, SR and presentation-state labels); never bulk data
INSTANCE_TAGS = frozenset(
    "00080005 00080008 00080012 00080013 00080016 00080018 00080022 00080023 00080032 00080033 "
    "00080201 00200012 00200013 00200020 00200032 00200037 00201041 00280002 00280004 00280008 "
    "00280010 00280011 00280030 00280100 00280101 00280102 00280103 00281050 00281051 00281052 "
    "00281053 0040A043 0040A491 0040A493 00420010 00700080 00700081".split()
)
SERIES_TAGS = frozenset(
    "00080005 00080021 00080031 00080060 00080070 00080080 00081010 0008103E 00081040 00081090 "
    "00180015 0020000E 00200011 00200052 00200060 00185100 00400244 00400245 00400275".split()
)


@dataclass(frozen=True, slots=True)
class Source:
    """The original Part-10 bytes, as a file (C-STORE temp file, import) or in memory (STOW)."""

    path: Path | None = None
    data: bytes | None = None
    #: the file is the caller's temporary copy (a received C-STORE data set): the blob store may
    #: take it as it is instead of copying it (`BlobStore.stage`); an imported file never is
    disposable: bool = False

    def open(self) -> BinaryIO:
        if self.path is not None:
            return open(self.path, "rb")
        return io.BytesIO(self.data or b"")

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path is not None else len(self.data or b"")

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"<{len(self.data or b'')} bytes>"


PREAMBLE = b"\x00" * 128 + b"DICM"


def with_preamble(source: Source) -> Source:
    """The same object as a well-formed Part-10 file (PS3.10 7.1).

    pydicom, and dicomweb-client with it, write an in-memory dataset as its File Meta
    Information without the 128-byte preamble and "DICM" prefix. Such an object is accepted
    and stored with the preamble added, so every stored object is a conformant file; nothing
    else about it changes.
    """
    with source.open() as fp:
        head = fp.read(132)
        if head[128:132] == b"DICM" or not head.startswith(b"\x02\x00"):
            return source
        fp.seek(0)
        return Source(data=PREAMBLE + fp.read())


@dataclass(frozen=True, slots=True)
class ParsedInstance:
    sop_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    #: PatientAddress (at most 256 characters) and the OtherPatientIDsSequence items, (ID, issuer),
    #: at most 16: what the patient index compares besides the name
    patient_address: str
    other_patient_ids: tuple[tuple[str, str], ...]
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician: str
    modality: str
    series_number: int | None
    series_description: str
    body_part: str
    series_date: str
    series_time: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    dicom_json: str
    study_attrs_json: str
    series_attrs_json: str
    instance_attrs_json: str
    layout: PixelLayout | None


def parse(source: Source) -> ParsedInstance:
    """Read and validate `source`; raise a `RejectedInput` subclass saying what is wrong.

    Raises
    ------
    RejectedInput
        The object cannot be stored: not DICOM, truncated, nested too deep, a bad UID, text or
        pixel data length. Whatever else reading it raises is a `NotDicom` naming the error.
    OSError
        The source itself could not be read (the server's problem, not the object's): an
        error of the system, with an errno. pydicom's own OSError, which has none, is about
        the bytes (an item header missing where a sequence is cut short): a `Truncated`.
    """
    size = source.size
    with source.open() as fp:
        try:
            ds = _read(fp)
            _check_complete(ds, fp, size)
            _check_depth(ds)
            return _validated(ds, fp)
        except (RejectedInput, MemoryError):
            raise
        except OSError as exc:
            if exc.errno is not None:
                raise
            raise Truncated(f"a sequence item is cut short: {_reason(exc)}") from None
        except RecursionError:
            raise TooDeep(f"sequences are nested deeper than {MAX_DEPTH} levels") from None
        except Exception as exc:  # noqa: BLE001 - a peer's bytes: whatever pydicom raises on them is a refusal
            raise NotDicom(f"the data set cannot be read: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """An exception as a refusal's reason: its type and the first line of its message, short."""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}"[:160]


def _validated(ds: Dataset, fp: BinaryIO) -> ParsedInstance:
    tsuid = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    if not tsuid:
        raise NotDicom("file meta information has no Transfer Syntax UID (0002,0010)")
    check_uid("TransferSyntaxUID", tsuid)
    uids = {k: _required_uid(ds, k) for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")}
    _check_text(ds)
    return _extract(ds, fp, uids, tsuid)


def _read(fp: BinaryIO) -> Dataset:
    try:
        return dcmread(fp, defer_size=DEFER_SIZE)
    except InvalidDicomError:
        raise NotDicom("not a DICOM Part-10 file: no 'DICM' prefix or File Meta Information") from None
    except (EOFError, zlib.error) as exc:
        raise Truncated(f"object ends before its data set does ({exc})") from None


def _check_depth(ds: Dataset) -> None:
    """Refuse sequences nested deeper than MAX_DEPTH, walking them without recursion.

    Only sequence elements are read here (pydicom parses a sequence's items when it is first
    read, which everything after this needs anyway); a nesting deep enough to exhaust pydicom's
    own recursion is caught by `parse` as the same refusal.
    """
    stack: list[tuple[Dataset, int]] = [(ds, 0)]
    while stack:
        node, depth = stack.pop()
        for tag in list(node.keys()):
            raw = node.get_item(tag, keep_deferred=True)
            if raw is None or element_vr(raw) != "SQ":
                continue
            if depth + 1 > MAX_DEPTH:
                raise TooDeep(f"sequences are nested deeper than {MAX_DEPTH} levels")
            stack.extend((item, depth + 1) for item in node[tag].value)


def _check_complete(ds: Dataset, fp: BinaryIO, size: int) -> None:
    """Refuse an object whose bytes stop before its last element does, or trail after it."""
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return  # zlib already refused a truncated deflate stream while reading
    keys = list(ds.keys())
    if not keys:
        raise Truncated("the object has file meta information but no data set")
    last = ds.get_item(keys[-1], keep_deferred=True)
    if not isinstance(last, RawDataElement):
        return
    value_len = len(last.value) if isinstance(last.value, bytes) else None
    if last.length == UNDEFINED and last.tag == PIXEL_DATA:
        try:
            _, end = walk_items(fp, last.value_tell, little_endian=last.is_little_endian)
        except EOFError as exc:
            raise Truncated(f"encapsulated Pixel Data is cut short: {exc}") from None
    elif last.length == UNDEFINED:
        end = last.value_tell + (value_len or 0) + 8  # + sequence delimitation item
    else:
        if value_len is not None and value_len < last.length:
            raise Truncated(f"element ({last.tag.group:04X},{last.tag.elem:04X}) is cut short")
        end = last.value_tell + last.length
    if end > size:
        raise Truncated(f"element ({last.tag.group:04X},{last.tag.elem:04X}) needs {end - size} more bytes")
    if end < size:
        raise Truncated(f"{size - end} bytes after the last complete element cannot be parsed")


def _required_uid(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    text = str(value).strip("\x00 ") if value is not None else ""
    if not text:
        raise MissingUid(f"{keyword} is missing or empty")
    check_uid(keyword, text)
    return text


#: VRs whose values are characters: a NUL byte inside one is no character of any repertoire
#: (PS3.5 6.2; trailing NULs are padding), and PostgreSQL's text columns refuse it
STRING_VRS = TEXT_VRS | frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UR"})


def _check_text(ds: Dataset) -> None:
    """Check (0008,0005) is known, every top-level text value decodes strictly in it, and no
    top-level string value (what the index columns hold) has a NUL byte inside it."""
    raw_cs = ds.get_item(0x00080005, keep_deferred=True)
    terms: list[str] = []
    if raw_cs is not None:
        value = raw_cs.value
        if isinstance(value, bytes):
            terms = [t.strip() for t in value.decode("ascii", "replace").split("\\")]
        elif isinstance(value, str):
            terms = [value]
        elif value is not None:
            terms = list(value)
    encodings = python_encodings(terms)
    for tag in ds.keys():
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes) and raw.value:
            vr = raw.VR or element_vr(raw)
            if vr in STRING_VRS and b"\x00" in raw.value.rstrip(b"\x00 "):
                raise BadCharset(f"({tag.group:04X},{tag.elem:04X}): a NUL byte inside the {vr} value (PS3.5 6.2)")
            if vr in TEXT_VRS:
                check_decodes(raw.value, encodings, f"({tag.group:04X},{tag.elem:04X})")


#: bounds on what a peer sends about its patient beyond the key attributes
MAX_ADDRESS = 256
MAX_OTHER_IDS = 16


def _other_patient_ids(ds: Dataset) -> tuple[tuple[str, str], ...]:
    """(PatientID, IssuerOfPatientID) of the first `MAX_OTHER_IDS` OtherPatientIDsSequence items."""
    items = ds.get("OtherPatientIDsSequence") or []
    found = []
    for item in list(items)[:MAX_OTHER_IDS]:
        patient_id = _text(item, "PatientID")[:64]
        if patient_id:
            found.append((patient_id, _text(item, "IssuerOfPatientID")[:64]))
    return tuple(found)


def _extract(ds: Dataset, fp: BinaryIO, uids: dict[str, str], tsuid: str) -> ParsedInstance:
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    frames = _int(ds, "NumberOfFrames") or (1 if rows else None)
    frame_length = _frame_length(ds, rows, columns)
    layout = pixel_layout(
        ds, fp, deflated=tsuid == DeflatedExplicitVRLittleEndian, frames=frames or 0, frame_length=frame_length
    )
    if layout is not None and layout.kind == "native":
        _check_native_length(ds, layout.length, rows, columns, frames)
    full = dicom_json_dict(ds)
    col = Columns(ds, full)  # the index columns from the JSON just made, not converted again
    try:
        name = col.text("PatientName")
    except (UnicodeError, LookupError) as exc:  # pragma: no cover - _check_text runs first
        raise BadCharset(str(exc)) from None
    return ParsedInstance(
        sop_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=tsuid,
        patient_id=col.text("PatientID"),
        issuer_of_patient_id=col.text("IssuerOfPatientID"),
        patient_name=name,
        birth_date=col.text("PatientBirthDate")[:8],
        sex=col.text("PatientSex")[:16],
        patient_address=col.text("PatientAddress")[:MAX_ADDRESS],
        other_patient_ids=_other_patient_ids(ds),
        study_date=col.text("StudyDate")[:8],
        study_time=col.text("StudyTime")[:16],
        accession_number=col.text("AccessionNumber")[:16],
        study_id=col.text("StudyID")[:16],
        study_description=col.text("StudyDescription"),
        referring_physician=fold(col.text("ReferringPhysicianName")),
        modality=col.text("Modality")[:16],
        series_number=col.integer("SeriesNumber"),
        series_description=col.text("SeriesDescription"),
        body_part=col.text("BodyPartExamined")[:16],
        series_date=col.text("SeriesDate")[:8],
        series_time=col.text("SeriesTime")[:16],
        instance_number=col.integer("InstanceNumber"),
        rows=rows,
        columns=columns,
        number_of_frames=frames,
        dicom_json=json.dumps(full, separators=(",", ":"), ensure_ascii=False),
        study_attrs_json=_subset(full, STUDY_TAGS),
        series_attrs_json=_subset(full, SERIES_TAGS),
        instance_attrs_json=_subset(full, INSTANCE_TAGS),
        layout=layout,
    )


def _subset(full: dict[str, Any], tags: frozenset[str]) -> str:
    return json.dumps({k: v for k, v in full.items() if k in tags}, separators=(",", ":"), ensure_ascii=False)


def _check_native_length(ds: Dataset, length: int, rows: int | None, columns: int | None, frames: int | None) -> None:
    """Refuse native Pixel Data that is not the size its image attributes say (PS3.5 8.1.1).

    Rows x Columns x Samples per Pixel x Bits Allocated x Number of Frames, in bytes rounded up;
    subsampled YBR_FULL_422 keeps two samples a pixel, not three. A value shorter than that
    cannot be displayed. Some devices pad the value (pydicom ships such an MR), so a longer one
    is taken up to `PIXEL_SLACK` bytes or a sixteenth more; beyond (2 GiB behind a 64x64 image)
    it is a way to fill the archive, not an image.
    """
    bits, spp = _int(ds, "BitsAllocated") or 0, _int(ds, "SamplesPerPixel") or 1
    if not rows or not columns or not bits:
        raise PixelDataMismatch("Pixel Data without Rows, Columns and Bits Allocated to read it by")
    if _text(ds, "PhotometricInterpretation") == "YBR_FULL_422" and spp == 3:
        samples = rows * columns * 2 * (frames or 1)
    else:
        samples = rows * columns * spp * (frames or 1)
    expected = (samples * bits + 7) // 8
    if not expected <= length <= expected + max(PIXEL_SLACK, expected // 16):
        raise PixelDataMismatch(
            f"Pixel Data holds {length} bytes where {rows}x{columns}, {spp} samples of {bits} bits, "
            f"{frames or 1} frame(s) make {expected}"
        )


def _frame_length(ds: Dataset, rows: int | None, columns: int | None) -> int:
    bits = _int(ds, "BitsAllocated") or 0
    spp = _int(ds, "SamplesPerPixel") or 1
    if not rows or not columns or not bits:
        return 0
    if bits == 1:
        return (rows * columns * spp + 7) // 8
    return rows * columns * spp * (bits // 8)
