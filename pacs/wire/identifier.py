"""C-FIND answers encoded straight from the DICOM JSON the index keeps (PS3.18 F.2 -> PS3.5 7.1).

Why: through pydicom an answer is `Dataset.from_json` then `write_dataset`, ~0.6 ms per match,
most of a C-FIND's time (Orthanc answers in ~0.3 ms). An answer holds a handful of short
attributes, so the JSON values are written here as pydicom writes them: text joined by
backslashes and padded to even length (UI with NUL, the rest with a space), person names'
component groups joined by "=", IS and DS from JSON numbers as pydicom formats them, binary
numbers little endian, tags in ascending order, implicit or explicit VR little endian.

`encode` answers None for what it does not write (sequences, bulk or inline binary data, big
endian, a character set other than ASCII/UTF-8); the caller then goes through pydicom.
tests/pacs/test_identifier.py holds the bytes equal to pydicom's for the index's attributes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

_TEXT_PAD = {"UI": b"\0"}
#: explicit VR little endian: these have a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_TEXT = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_BINARY = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i", "FL": "<f", "FD": "<d", "UV": "<Q", "SV": "<q"}
_SPECIFIC_CHARACTER_SET = "00080005"


def encode(elements: Mapping[str, Any], *, implicit: bool) -> bytes | None:
    """The data set of `elements` (DICOM JSON: tag -> {"vr", "Value"}), or None (use pydicom).

    Text is UTF-8 when (0008,0005) says ISO_IR 192; under any other character set it must be
    ASCII, which every other DICOM repertoire writes as is.
    """
    charset = elements.get(_SPECIFIC_CHARACTER_SET, {}).get("Value") or []
    codec = "utf-8" if charset == ["ISO_IR 192"] else "ascii"
    out: list[bytes] = []
    for tag in sorted(elements, key=lambda t: int(t, 16)):
        number = int(tag, 16)
        if number & 0xFFFF == 0 and number >> 16 > 6:
            continue  # group lengths are retired (PS3.5 7.2): pydicom leaves them out too
        raw = _value(elements[tag], codec)
        if raw is None:
            return None
        vr = elements[tag].get("vr", "")
        head = struct.pack("<HH", number >> 16, number & 0xFFFF)
        if implicit:
            out.append(head + struct.pack("<I", len(raw)))
        elif vr in _LONG:
            out.append(head + vr.encode() + b"\0\0" + struct.pack("<I", len(raw)))
        else:
            if len(raw) > 0xFFFF:
                return None
            out.append(head + vr.encode() + struct.pack("<H", len(raw)))
        out.append(raw)
    return b"".join(out)


def _value(element: Mapping[str, Any], codec: str) -> bytes | None:
    vr = element.get("vr", "")
    values = element.get("Value")
    if "InlineBinary" in element or "BulkDataURI" in element:
        return None
    if not values:
        return b""
    return write_values(vr, values, codec)


def write_values(vr: str, values: list[Any], codec: str = "ascii") -> bytes | None:
    """The value field of an element of `vr` holding `values`, as pydicom writes it; None if this
    module does not write that VR or those values (also used for DIMSE command sets)."""
    writer = _WRITERS.get(vr)
    return writer(values, vr, codec) if writer is not None else None


def _padded(raw: bytes, vr: str) -> bytes:
    return raw + _TEXT_PAD.get(vr, b" ") if len(raw) % 2 else raw


def _text(values: list[Any], vr: str, codec: str) -> bytes | None:
    if any(not isinstance(v, str | None) for v in values):
        return None
    try:
        return _padded("\\".join(v or "" for v in values).encode(codec), vr)
    except UnicodeEncodeError:
        return None


def _person_names(values: list[Any], vr: str, codec: str) -> bytes | None:
    names = []
    for v in values:
        if v is None:
            names.append("")
        elif isinstance(v, dict):
            groups = [v.get(k) or "" for k in ("Alphabetic", "Ideographic", "Phonetic")]
            names.append("=".join(groups).rstrip("="))
        else:
            return None
    return _text(names, vr, codec)


def _number_text(kind: Callable[[Any], str]) -> Callable[[list[Any], str, str], bytes | None]:
    def write(values: list[Any], vr: str, _codec: str) -> bytes | None:
        if any(isinstance(v, bool) or not isinstance(v, int | float | None) for v in values):
            return None
        return _padded("\\".join("" if v is None else kind(v) for v in values).encode("ascii"), vr)

    return write


def _binary(values: list[Any], vr: str, _codec: str) -> bytes | None:
    if any(v is None or isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        return None
    fmt = _BINARY[vr]
    return b"".join(struct.pack(fmt, v if fmt in ("<f", "<d") else int(v)) for v in values)


def _tags(values: list[Any], _vr: str, _codec: str) -> bytes | None:
    try:
        numbers = [int(v, 16) for v in values]
    except (TypeError, ValueError):
        return None
    return b"".join(struct.pack("<HH", n >> 16, n & 0xFFFF) for n in numbers)


_WRITERS: dict[str, Callable[[list[Any], str, str], bytes | None]] = {
    **dict.fromkeys(_TEXT, _text),
    "PN": _person_names,
    "IS": _number_text(lambda v: str(int(v))),
    "DS": _number_text(lambda v: str(float(v))),
    **dict.fromkeys(_BINARY, _binary),
    "AT": _tags,
}
