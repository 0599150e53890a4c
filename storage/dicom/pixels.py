"""Pixel data and binary values of stored objects: frames, decoding, byte order (PS3.5 8, A.4).

Pure functions over the bytes of a Part-10 object or of one frame, and over the DICOM JSON
kept at ingest: they know nothing of the index or the blob store, so the retrieve path
(`storage.retrieve.retrieval`) reads the bytes (a whole object or a ranged read of one frame)
and hands them here. Decoding uses pydicom's decoders (pylibjpeg, openjpeg, RLE) towards an
uncompressed little endian syntax; nothing is ever re-compressed.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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

from storage.errors import CannotTranscode

#: uncompressed syntaxes `transcode` can produce (PS3.18 8.7.3.5.2: Explicit VR LE is the default)
NATIVE_TARGETS = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


_SWAP_WIDTH = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


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


def frame_display(doc: dict[str, Any], number: int, transfer_syntax: str) -> tuple[Dataset, dict[str, Any]] | None:
    """The display attributes of frame `number` and the decoder options they give, from an
    instance's DICOM JSON; None where a native decode of that one frame could not be exact
    (bulk data among the attributes, a bit depth the native decoder does not take alone,
    subsampled YBR_FULL_422)."""
    attributes = _frame_attributes(doc, number)
    if attributes is None:
        return None
    attributes.file_meta = FileMetaDataset()
    attributes.file_meta.TransferSyntaxUID = UID(transfer_syntax)  # for OW LUT data's byte order
    options = as_pixel_options(attributes, number_of_frames=1, pixel_keyword="PixelData")
    if options.get("bits_allocated") not in (8, 16, 32) or options.get("photometric_interpretation") == "YBR_FULL_422":
        return None
    return attributes, options


def decode_native(frame: bytes, transfer_syntax: str, options: dict[str, Any]) -> NDArray[Any] | None:
    """One native frame as `pixel_array` gives it, or None if the decoder refuses its attributes."""
    try:
        pixels, _ = get_decoder(transfer_syntax).as_array(frame, index=0, **options)
    except (AttributeError, ValueError):  # attributes the decoder refuses: the whole object decides
        return None
    return pixels


def first_value(attrs: dict[str, Any], tag: str, default: object) -> Any:
    """The first value of `tag` in a DICOM JSON data set, or `default`."""
    values = attrs.get(tag, {}).get("Value")
    return values[0] if values and values[0] is not None else default


def native_frame_length(attrs: dict[str, Any], frame_length: int, pixels: int, frame_count: int) -> int | None:
    """The bytes of one stored native frame, or None when frames do not start on a byte boundary.

    `frame_length` is the layout's (from Rows, Columns, Samples and BitsAllocated); YBR_FULL_422
    stores two samples a pixel, not three (PS3.3 C.7.6.3.1.2); bit-packed frames of a multi-frame
    object start on a byte only when each holds a multiple of 8 pixels.
    """
    length, bits = frame_length, int(first_value(attrs, "00280100", 0))
    if first_value(attrs, "00280004", "") == "YBR_FULL_422":
        length = length // 3 * 2
    if not length or (bits == 1 and frame_count > 1 and pixels % 8):
        return None
    return length


def big_endian_word(attrs: dict[str, Any], transfer_syntax: str) -> int:
    """Bytes per word to swap in a native frame of a big endian object (1: nothing to swap)."""
    if UID(transfer_syntax).is_little_endian or attrs.get("7FE00010", {}).get("vr", "OW") != "OW":
        return 1
    bits = int(first_value(attrs, "00280100", 0))
    return bits // 8 if bits in (32, 64) else 2


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
