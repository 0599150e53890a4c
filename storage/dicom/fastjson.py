"""DICOM JSON (PS3.18 F.2) for freshly read datasets, without pydicom's per-value objects.

`Dataset.to_json_dict` first turns every raw element into a typed DataElement (DSfloat, IS,
UID, PersonName, MultiValue...) and validates it, only to flatten it back into plain JSON
values; that round trip was the largest CPU item of C-STORE ingest. Here the raw bytes of
the common VRs are decoded straight into what pydicom would emit, mirroring pydicom 3.0's
reading code step by step (values.py converters, valuerep validators, jsonrep number
conversion) so the result is equal to pydicom's, dropped elements included: with
`suppress_invalid_tags=True` pydicom reads under `config.strict_reading()`, so a value that
fails validation (an IS of "1.5", an LO over 64 characters...) raises and the element is
left out of the JSON. Anything this module cannot match with certainty (sequences, binary
VRs, ambiguous or unknown VRs, deferred values, odd corner cases, a non-default pydicom
configuration) goes to pydicom for that element only.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Callable, Sequence
from typing import Any

from pydicom import config, valuerep
from pydicom.charset import ESC, custom_encoders, decode_bytes, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.hooks import hooks, raw_element_value, raw_element_vr
from pydicom.tag import _LUT_DESCRIPTOR_TAGS
from pydicom.valuerep import TEXT_VR_DELIMS

from storage.logs import event

logger = logging.getLogger(__name__)

#: struct format of each binary number VR (PS3.5 Table 6.2-1)
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}
#: VRs pydicom validates on read with a maximum length in characters (valuerep.MAX_VALUE_LEN)
_MAX_CHARS = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240}
#: pydicom's validation regexes (valuerep.VR_REGEXES), anchored by fullmatch; on text decoded
#: as ISO 8859-1 `\d` can only match ASCII digits, so [0-9] is the same set.
_IS_RE = re.compile(r" *[+\-]?[0-9]+ *")
_DS_RE = re.compile(r" *[+\-]?([0-9]+|[0-9]+\.[0-9]*|\.[0-9]+)([eE][+\-]?[0-9]+)? *")
_UI_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
#: LUT descriptors, whose first value pydicom reads as US whatever the VR says
_LUT_DESCRIPTORS = frozenset(_LUT_DESCRIPTOR_TAGS)


class _Unsure(Exception):
    """The fast path cannot promise pydicom's result for this element."""


def dataset_encodings(ds: Dataset) -> list[str]:
    """The Python codecs pydicom decodes `ds`'s raw text with (as `Dataset.__getitem__` does)."""
    encodings = ds.original_character_set or default_encoding
    return [encodings] if isinstance(encodings, str) else list(encodings)


def to_json_dict_fast(
    ds: Dataset,
    encodings: list[str],
    *,
    bulk_threshold: int,
    bulk_handler: Callable[[DataElement], str],
) -> dict[str, Any]:
    """Return what `ds.to_json_dict(bulk_threshold, bulk_handler, suppress_invalid_tags=True)` does.

    `encodings` are the codecs of (0008,0005), see `dataset_encodings`. Elements that are
    still raw and have a VR this module handles are decoded here without touching `ds`; all
    others are converted by pydicom (which replaces them in `ds` by DataElements).
    """
    fast = _pydicom_reads_by_default()
    charsets = list(encodings) or [default_encoding]
    out: dict[str, Any] = {}
    with config.strict_reading():  # what Dataset.to_json_dict(suppress_invalid_tags=True) does
        for tag in list(ds.keys()):
            key = f"{tag:08X}"
            raw = ds.get_item(tag, keep_deferred=True)
            vr = _fast_vr(raw) if fast else None
            if vr is not None and isinstance(raw, RawDataElement):
                try:
                    out[key] = _encode(raw, vr, charsets)
                    continue
                except Exception:  # _Unsure, or a value pydicom may reject: let pydicom decide
                    pass
            try:
                out[key] = ds[tag].to_json_dict(bulk_handler, bulk_threshold)
            except Exception as exc:
                # pydicom's message quotes the value, which may be a name: the tag and the error type only
                event(logger, "dicomjson.element_dropped", level=logging.WARNING, tag=key, error=type(exc).__name__)
    return out


def _pydicom_reads_by_default() -> bool:
    """The fast path mirrors pydicom's default reading; any customisation means pydicom decides."""
    return (
        config.data_element_callback is None
        and hooks.raw_element_vr is raw_element_vr
        and hooks.raw_element_value is raw_element_value
        and not config.datetime_conversion
        and not config.use_DS_numpy
        and not config.use_IS_numpy
        and valuerep.DSclass is valuerep.DSfloat
    )


def _fast_vr(raw: RawDataElement | DataElement | None) -> str | None:
    """The VR to decode `raw` with here, or None when it must go to pydicom."""
    if not isinstance(raw, RawDataElement) or raw.tag in _LUT_DESCRIPTORS:
        return None  # converted already, or a LUT descriptor pydicom adjusts after reading
    if raw.value is None and raw.length != 0:
        return None  # deferred: pydicom reads it from the file
    vr = raw.VR
    if vr is None:  # implicit VR: only the public dictionary, private lookups need the creator
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            return None
    return vr if vr in FAST_VRS else None


def _encode(raw: RawDataElement, vr: str, encodings: list[str]) -> dict[str, Any]:
    """The JSON object of one raw element; an empty value has no "Value" (PS3.18 F.2.5)."""
    data = raw.value
    if raw.length == 0 or not data:
        return {"vr": vr}
    values: list[Any]
    if vr in _NUMBER_FORMATS:
        values = _numbers(data, vr, raw.is_little_endian)
    elif vr == "AT":
        values = _tags(data, raw.is_little_endian)
    elif vr == "PN":
        values = _person_names(data, encodings)
    elif vr in _TEXT_VRS:
        values = _text_values(_decode(data, encodings), vr)
    else:  # the VRs pydicom always decodes as ISO 8859-1 (PS3.5 6.1.2: default repertoire)
        values = _LATIN1_DECODERS[vr](data.decode(default_encoding))
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _vm(items: list[Any]) -> list[Any]:
    """pydicom keeps a lone empty string as the value, which has VM 0 and so no "Value"."""
    return [] if items == [""] else items


def _decode(data: bytes, encodings: Sequence[str]) -> str:
    """Decode text as pydicom.charset.decode_bytes does (strict: we run under strict_reading)."""
    if ESC in data:
        return decode_bytes(data, encodings, TEXT_VR_DELIMS)
    return data.decode(encodings[0])


def _numbers(data: bytes, vr: str, little_endian: bool) -> list[Any]:
    """US SS UL SL FL FD: struct values; a length that is not a multiple raises in pydicom."""
    fmt = _NUMBER_FORMATS[vr]
    count, rest = divmod(len(data), struct.calcsize(f"<{fmt}"))  # standard, not native, sizes
    if rest:
        raise _Unsure(f"{len(data)} bytes for {vr}")
    return list(struct.unpack(f"{'<' if little_endian else '>'}{count}{fmt}", data))


def _tags(data: bytes, little_endian: bool) -> list[Any]:
    """AT: "ggggeeee" strings; pydicom warns and truncates a length not a multiple of 4."""
    if len(data) % 4:
        raise _Unsure(f"{len(data)} bytes for AT")
    words = struct.unpack(f"{'<' if little_endian else '>'}{len(data) // 2}H", data)
    return [f"{words[i]:04X}{words[i + 1]:04X}" for i in range(0, len(words), 2)]


def _text_values(text: str, vr: str) -> list[Any]:
    """SH LO UC split on backslashes, ST LT UT do not; each value's length is checked (as
    pydicom's validation does) *before* its trailing padding is removed."""
    values = text.split("\\") if vr in _MULTI_TEXT_VRS else [text]
    limit = _MAX_CHARS.get(vr)
    if limit is not None and any(len(value) > limit for value in values):
        raise _Unsure(f"{vr} value longer than {limit}")
    return _vm([value.rstrip("\0 ") for value in values])


def _strings(text: str) -> list[Any]:
    """AS CS DA DT TM: trailing spaces/NULs come off the whole value only, then it is split,
    so "ORIGINAL \\PRIMARY" keeps "ORIGINAL "."""
    return _vm(text.rstrip(" \x00").split("\\"))


def _application_entities(text: str) -> list[Any]:
    """AE: leading and trailing whitespace is insignificant in every value."""
    return _vm([value.strip() for value in text.split("\\")])


def _uri(text: str) -> list[Any]:
    """UR: single-valued, trailing whitespace off."""
    return _vm([text.rstrip()])


def _uids(text: str) -> list[Any]:
    """UI: pydicom's UID() validates every non-empty value (syntax, at most 64 characters)."""
    values = text.rstrip("\0 ").split("\\")
    for value in values:
        if value and (len(value) > 64 or not _UI_RE.fullmatch(value)):
            raise _Unsure(f"invalid UID {value!r}")
    return _vm(values)


def _integer_strings(text: str) -> list[Any]:
    """IS: JSON numbers; pydicom validates each value unstripped (at most 12 characters)."""
    values = text.rstrip(" \x00").split("\\")
    if values == [""]:
        return []
    numbers = []
    for value in values:
        if len(value) > 12 or not _IS_RE.fullmatch(value):
            raise _Unsure(f"invalid IS {value!r}")  # also an empty one among several: int("")
        number = int(value)
        if not -(2**31) <= number < 2**31:
            raise _Unsure(f"IS out of range {value!r}")
        numbers.append(number)
    return numbers


def _decimal_strings(text: str) -> list[Any]:
    """DS: JSON numbers; pydicom validates each value stripped (at most 16 characters)."""
    values = text.strip().rstrip(" \x00").split("\\")
    if values == [""]:
        return []
    numbers = []
    for value in values:
        stripped = value.strip()
        if len(stripped) > 16 or not _DS_RE.fullmatch(stripped):
            raise _Unsure(f"invalid DS {value!r}")  # also "" among several, nan, inf, 1_0
        numbers.append(float(stripped))
    return numbers


def _person_names(data: bytes, encodings: list[str]) -> list[Any]:
    """PN: one {"Alphabetic", "Ideographic", "Phonetic"} object per name, trailing groups omitted.

    pydicom re-encodes each name after decoding it; that round trip is only certainly
    lossless and silent without escape sequences and with a codec pydicom does not replace
    by its own Japanese encoders, so other values go to pydicom.
    """
    if ESC in data or encodings[0] in custom_encoders:
        raise _Unsure("PN needing pydicom's ISO 2022 handling")
    names = data.rstrip(b"\x00 ").decode(encodings[0]).split("\\")
    out = []
    for name in names:
        groups = name.split("=")
        if len(groups) > 3 or any(len(group) > 64 for group in groups):
            raise _Unsure(f"invalid PN {name!r}")
        while groups and not groups[-1]:
            groups.pop()
        if not groups:
            if len(names) > 1:
                raise _Unsure("empty name among several")  # pydicom: IndexError, dropped
            return []
        out.append(dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False)))
    return out


_MULTI_TEXT_VRS = frozenset({"SH", "LO", "UC"})
_TEXT_VRS = _MULTI_TEXT_VRS | {"ST", "LT", "UT"}
_LATIN1_DECODERS: dict[str, Callable[[str], list[Any]]] = {
    **dict.fromkeys(("AS", "CS", "DA", "DT", "TM"), _strings),
    "AE": _application_entities,
    "DS": _decimal_strings,
    "IS": _integer_strings,
    "UI": _uids,
    "UR": _uri,
}
#: the VRs decoded here; every other VR is left to pydicom
FAST_VRS = frozenset({*_NUMBER_FORMATS, "AT", "PN", *_TEXT_VRS, *_LATIN1_DECODERS})
