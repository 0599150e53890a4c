"""DIMSE command sets (PS3.7 E.1) encoded straight from a pynetdicom primitive.

Why: pynetdicom turns each primitive into a pydicom Dataset and encodes it twice (once to learn
the Command Group Length, once to send), ~1 ms per message. A C-MOVE or C-GET of 500 instances
sends 1,000 such messages (a C-STORE request and a pending response per instance) and a C-FIND a
response per match, so that was most of their CPU. The rules here are pynetdicom's, read from
its own tables: which elements a message type has and in what order (`_COMMAND_SET_KEYWORDS`),
its Command Field (`_MESSAGE_TYPES`), that a parameter left None is omitted, and when a data set
follows (`_DATASET_KEYWORDS`); the VRs are pydicom's dictionary. Command sets are implicit VR
little endian (PS3.7 6.3.1), elements in tag order, text in the default repertoire.

`encode` answers None for what it was not made for (a message type outside `TYPES`, a value it
does not know how to write, non-ASCII text): the caller then uses pynetdicom's own encoding.
tests/pacs/test_command_set.py holds both encodings byte-equal.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pynetdicom.dimse_messages import _COMMAND_SET_KEYWORDS, _DATASET_KEYWORDS, _MESSAGE_TYPES

from pacs.wire import identifier

#: the message types sent in bulk: sub-operations, their responses and query answers
TYPES = frozenset({"C-STORE-RQ", "C-STORE-RSP", "C-FIND-RSP", "C-GET-RSP", "C-MOVE-RSP", "C-ECHO-RSP", "N-ACTION-RSP"})
_FIELD = {name: field for field, (name, _) in _MESSAGE_TYPES.items()}
_ELEMENT = struct.Struct("<HHI")
NO_DATA_SET, DATA_SET = 0x0101, 0x0001


def _tags(values: list[Any]) -> bytes:
    """AT values of a primitive (OffendingElement, AttributeIdentifierList) are tags, not JSON text."""
    return b"".join(struct.pack("<HH", int(t) >> 16, int(t) & 0xFFFF) for t in values)


#: the VRs of command elements (PS3.7 E.1); values as `pacs.wire.identifier` writes them, tags here
_VRS = frozenset({"UI", "AE", "LO", "SH", "CS", "ST", "US", "UL", "AT"})


@cache
def _layout(message_type: str) -> tuple[tuple[str, int, str], ...]:
    """(keyword, tag, VR) of the message type's elements, in tag order, the group length left out."""
    out = []
    for keyword in _COMMAND_SET_KEYWORDS[message_type]:
        if keyword == "CommandGroupLength":
            continue
        tag = tag_for_keyword(keyword)
        assert tag is not None
        out.append((keyword, tag, dictionary_VR(tag)))
    return tuple(sorted(out, key=lambda e: e[1]))


def has_data_set(primitive: Any, message_type: str) -> bool:
    """As pynetdicom decides: the data set parameter is set, or a file is to be streamed."""
    keyword = _DATASET_KEYWORDS.get(message_type.replace("-", "_"))
    return (keyword is not None and getattr(primitive, keyword, None) is not None) or bool(
        getattr(primitive, "_dataset_path", None)
    )


def _plain(value: Any) -> Any:
    """A primitive's value as the JSON-like type `pacs.wire.identifier` takes (a UID is already a str)."""
    return int(value) if isinstance(value, int) else value


def encode(primitive: Any, message_type: str) -> bytes | None:
    """The encoded command set of `primitive` sent as `message_type`, or None (use pynetdicom's)."""
    if message_type not in TYPES:
        return None
    parts = _elements(primitive, message_type)
    if parts is None:
        return None
    body = b"".join(parts)
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<I", len(body)) + body


def _elements(primitive: Any, message_type: str) -> Iterable[bytes] | None:
    parts: list[bytes] = []
    for keyword, tag, vr in _layout(message_type):
        if keyword == "CommandField":
            value: Any = _FIELD[message_type]
        elif keyword == "CommandDataSetType":
            value = DATA_SET if has_data_set(primitive, message_type) else NO_DATA_SET
        elif hasattr(primitive, keyword):
            value = getattr(primitive, keyword)
            if value is None:  # pynetdicom deletes the element of an unset parameter
                continue
        else:  # a keyword the primitive does not have stays in the command set, empty
            value = None
        if vr not in _VRS:
            return None
        values = [] if value is None or value == "" else list(value) if isinstance(value, list | tuple) else [value]
        raw = _tags(values) if vr == "AT" else identifier.write_values(vr, [_plain(v) for v in values])
        if raw is None:
            return None
        parts.append(_ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(raw)) + raw)
    return parts


#: the elements a C-STORE-RSP may have (PS3.7 9.3.1.2) without any status detail: group length,
#: Affected SOP Class UID, Command Field, Message ID Being Responded To, Command Data Set Type,
#: Status, Affected SOP Instance UID
_PLAIN_STORE_RSP = frozenset({0x0000, 0x0002, 0x0100, 0x0120, 0x0800, 0x0900, 0x1000})
_C_STORE_RSP = _FIELD["C-STORE-RSP"]


def is_store_success(command: memoryview, message_id: int) -> bool:
    """True when `command` is a C-STORE-RSP to `message_id` with Status Success and nothing else.

    The one response a retrieval reads hundreds of times; recognising it takes microseconds
    where pynetdicom's decoding (a pydicom Dataset, a message, a primitive whose setters
    validate each UID) takes ~0.3 ms. Any other command set, a warning, a failure, an
    Error Comment, something malformed, answers False and goes to pynetdicom.
    """
    values = _read_elements(command, _PLAIN_STORE_RSP)
    if values is None:
        return False
    return (
        _us(values, 0x0100) == _C_STORE_RSP
        and _us(values, 0x0120) == message_id
        and _us(values, 0x0800) == NO_DATA_SET
        and _us(values, 0x0900) == 0x0000
    )


def _read_elements(command: memoryview, allowed: frozenset[int]) -> dict[int, memoryview] | None:
    """The values of a command set's elements by element number; None when it holds an element
    outside `allowed` (or outside group 0000), one twice, or is cut short."""
    values: dict[int, memoryview] = {}
    pos, end = 0, len(command)
    while pos + 8 <= end:
        group, element, length = _ELEMENT.unpack_from(command, pos)
        pos += 8
        if group != 0 or element not in allowed or element in values or pos + length > end:
            return None
        values[element] = command[pos : pos + length]
        pos += length
    return values if pos == end else None


def _us(values: dict[int, memoryview], element: int) -> int | None:
    raw = values.get(element)
    return int.from_bytes(raw, "little") if raw is not None and len(raw) == 2 else None


# ----- reading a C-STORE request ------------------------------------------------------------------

#: the elements a C-STORE-RQ has (PS3.7 9.3.1.1): group length, Affected SOP Class UID, Command
#: Field, Message ID, Priority, Command Data Set Type, Affected SOP Instance UID, Move Originator
#: AE title and Message ID
_STORE_RQ = frozenset({0x0000, 0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000, 0x1030, 0x1031})
_C_STORE_RQ = _FIELD["C-STORE-RQ"]
_UID = re.compile(rb"[0-9]+(?:\.[0-9]+)*")
_PDV = struct.Struct(">LBB")  # item length, presentation context ID, message control header


@dataclass(frozen=True, slots=True)
class StoreCommand:
    """What the receiving side needs of a C-STORE-RQ."""

    message_id: int
    sop_class: str
    sop_instance: str


def pdvs(body: memoryview) -> list[tuple[int, int, memoryview]] | None:
    """The PDV items of a P-DATA-TF's body: (presentation context ID, message control header,
    fragment); None when the items do not fill the body exactly (pynetdicom then judges it)."""
    items = []
    pos, end = 0, len(body)
    while pos < end:
        if pos + _PDV.size > end:
            return None
        length, context_id, control = _PDV.unpack_from(body, pos)
        if length < 2 or pos + 4 + length > end:
            return None
        items.append((context_id, control, body[pos + _PDV.size : pos + 4 + length]))
        pos += 4 + length
    return items or None


def read_store(command: memoryview) -> StoreCommand | None:
    """A whole command set as a plain C-STORE-RQ with a data set; None for anything else (another
    message, an element it may not have, a malformed value), which pynetdicom then decodes."""
    values = _read_elements(command, _STORE_RQ)
    if values is None:
        return None

    def us(element: int) -> int | None:
        return _us(values, element)

    def uid(element: int) -> str | None:
        raw = values.get(element)
        text = bytes(raw).rstrip(b"\x00 ") if raw is not None else b""
        return text.decode("ascii") if 0 < len(text) <= 64 and _UID.fullmatch(text) else None

    message_id, sop_class, sop_instance = us(0x0110), uid(0x0002), uid(0x1000)
    if us(0x0100) != _C_STORE_RQ or us(0x0800) in (None, NO_DATA_SET) or us(0x0700) is None:
        return None
    if message_id is None or sop_class is None or sop_instance is None:
        return None
    return StoreCommand(message_id, sop_class, sop_instance)
