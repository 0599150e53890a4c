"""What queries and metadata requests need, extracted once at ingest.

The instance's DICOM JSON (PS3.18 F.2) is kept in the index with bulk data replaced by a
BulkDataURI placeholder, and the pixel data's byte layout (where each frame lies in the
stored file) is kept beside it, so WADO-RS metadata and frame requests never parse a blob.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from storage.dicom.fastjson import dataset_encodings, to_json_dict_fast

#: VRs whose large values are bulk data (PS3.18 8.7.3.5 / F.2.7)
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW"})
BULK_THRESHOLD = 1024
#: Placeholder prefix; the gateway turns it into an absolute BulkDataURI when it answers.
BULK_PREFIX = "bulk:"
PIXEL_DATA = 0x7FE00010
UNDEFINED = 0xFFFFFFFF
ITEM = (0xFFFE, 0xE000)
SEQ_DELIMITER = (0xFFFE, 0xE0DD)


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """Where the frames are in the stored file.

    `native`: frame n (1-based) is `frame_length` bytes at `offset + (n-1) * frame_length`.
    `encapsulated`: `fragments` are (offset, length) of every fragment item after the basic
    offset table, and `frames[n-1]` is the (first fragment index, fragment count) of frame n.
    """

    kind: str
    offset: int = 0
    length: int = 0
    frame_length: int = 0
    fragments: list[tuple[int, int]] = field(default_factory=list)
    frames: list[tuple[int, int]] = field(default_factory=list)

    def to_json(self) -> str:
        data: dict[str, Any] = {"kind": self.kind, "offset": self.offset, "length": self.length}
        if self.kind == "native":
            data["frame_length"] = self.frame_length
        else:
            data["fragments"] = self.fragments
            data["frames"] = self.frames
        return json.dumps(data, separators=(",", ":"))


def element_vr(raw: RawDataElement | DataElement) -> str:
    vr = raw.VR
    if vr is None or vr in ("OB or OW", "US or OW", "US or SS", "US or SS or OW"):
        if raw.tag == PIXEL_DATA:
            return "OW" if vr is None else "OB"
        vr = dictionary_VR(raw.tag) if dictionary_has_tag(raw.tag) else "UN"
    return "OB" if vr == "OB or OW" else ("OW" if vr == "US or OW" else vr)


def is_bulk(raw: RawDataElement | DataElement) -> bool:
    if raw.tag == PIXEL_DATA:
        return True
    vr = raw.VR
    if vr not in BULK_VRS and vr is not None:
        return False
    if vr is None and (not dictionary_has_tag(raw.tag) or dictionary_VR(raw.tag) not in BULK_VRS):
        return False
    value = raw.value
    return value is None or (isinstance(value, bytes | bytearray) and len(value) > BULK_THRESHOLD)


def _nested_bulk_handler(elem: DataElement) -> str:
    return f"{BULK_PREFIX}{elem.tag:08X}"


def dicom_json_dict(ds: Dataset) -> dict[str, Any]:
    """Serialize `ds` without its bulk data; consumes (empties) the bulk elements of `ds`.

    Bulk elements are dropped before the rest is converted, so a deferred Pixel Data value is
    never read into memory just to be replaced by a reference. The conversion itself is
    `storage.dicom.fastjson`, equal to pydicom's `Dataset.to_json_dict` at a fraction of its cost.
    """
    bulk: dict[str, dict[str, Any]] = {}
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if raw is not None and is_bulk(raw):
            bulk[f"{tag:08X}"] = {"vr": element_vr(raw), "BulkDataURI": f"{BULK_PREFIX}{tag:08X}"}
            del ds[tag]
    out = to_json_dict_fast(ds, dataset_encodings(ds), bulk_threshold=BULK_THRESHOLD, bulk_handler=_nested_bulk_handler)
    for key, element in out.items():
        if element.get("vr") == "SQ" and element.get("Value"):
            _place_nested_bulk(element["Value"], key)
    out.update(bulk)
    return dict(sorted(out.items()))


def _place_nested_bulk(items: list[dict[str, Any]], path: str) -> None:
    """Give each bulk placeholder inside a sequence its item path (`00880200/1/7FE00010`).

    pydicom's bulk handler sees only the element, so a nested one first gets `bulk:TAG` like a
    top-level one; the path is what lets WADO-RS find it again (`.../bulk/00880200/1/7FE00010`).
    """
    for number, item in enumerate(items, start=1):
        for tag, element in item.items():
            step = f"{path}/{number}/{tag}"
            if "BulkDataURI" in element and element["BulkDataURI"].startswith(BULK_PREFIX):
                element["BulkDataURI"] = f"{BULK_PREFIX}{step}"
            elif element.get("vr") == "SQ" and element.get("Value"):
                _place_nested_bulk(element["Value"], step)


def pixel_layout(ds: Dataset, fp: BinaryIO, *, deflated: bool, frames: int, frame_length: int) -> PixelLayout | None:
    """Locate the frames of Pixel Data in the stored file, or None where offsets mean nothing.

    In a deflated file the offsets pydicom reports are in the inflated stream, so no byte
    range of the blob holds a frame; such frames are served by decoding the whole object.
    """
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if raw is None or deflated or not isinstance(raw, RawDataElement):
        return None
    if raw.length != UNDEFINED:
        return PixelLayout(kind="native", offset=raw.value_tell, length=raw.length, frame_length=frame_length)
    items, end = walk_items(fp, raw.value_tell, little_endian=raw.is_little_endian)
    if not items:
        return None
    fragments = items[1:]
    bot = b""
    if items[0][1]:
        fp.seek(items[0][0])
        bot = fp.read(items[0][1])
    return PixelLayout(
        kind="encapsulated",
        offset=raw.value_tell,
        length=end - raw.value_tell,
        fragments=fragments,
        frames=_frames_of(fragments, bot, n_frames=frames, little_endian=raw.is_little_endian),
    )


def walk_items(fp: BinaryIO, start: int, *, little_endian: bool) -> tuple[list[tuple[int, int]], int]:
    """(file offset, length) of each item of an undefined-length value, and where it ends.

    Reads only the 8-byte item headers; raises EOFError when the file stops before the
    sequence delimitation item (a truncated object).
    """
    fmt = "<HHL" if little_endian else ">HHL"
    fp.seek(start)
    pos = start
    out: list[tuple[int, int]] = []
    while True:
        header = fp.read(8)
        if len(header) < 8:
            raise EOFError(f"no sequence delimiter after offset {start}")
        group, elem, length = struct.unpack(fmt, header)
        if (group, elem) == SEQ_DELIMITER:
            return out, pos + 8
        if (group, elem) != ITEM or length == UNDEFINED:
            raise EOFError(f"unexpected tag ({group:04X},{elem:04X}) inside encapsulated data at {pos}")
        out.append((pos + 8, length))
        pos += 8 + length
        fp.seek(pos)


def _frames_of(
    fragments: list[tuple[int, int]], bot: bytes, *, n_frames: int, little_endian: bool
) -> list[tuple[int, int]]:
    """Group fragments into frames (PS3.5 A.4): one frame, one fragment per frame, or the BOT."""
    n_frags = len(fragments)
    if n_frames <= 1:
        return [(0, n_frags)] if n_frags else []
    if n_frags == n_frames:
        return [(i, 1) for i in range(n_frames)]
    if len(bot) == 4 * n_frames and fragments:
        first_item = fragments[0][0] - 8
        starts = struct.unpack(f"{'<' if little_endian else '>'}{n_frames}L", bot)
        index = {off - 8 - first_item: i for i, (off, _) in enumerate(fragments)}
        firsts = [index.get(s) for s in starts]
        if all(f is not None for f in firsts):
            bounds = [f for f in firsts if f is not None] + [n_frags]
            return [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(n_frames)]
    return []
