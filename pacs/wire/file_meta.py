"""The head of a received data set's Part-10 file: preamble, "DICM" and the File Meta Information.

Why: pynetdicom writes a received data set's file meta with pydicom (`create_file_meta`, then
`write_file_meta_info`), which builds a Dataset of seven elements and encodes it through
pydicom's generic writer: 6 % of the SCP's CPU per CT instance on the direct C-STORE path
(benchmarks/README.md, [10/10]). The group is always the same seven elements in Explicit VR
Little Endian (PS3.10 7.1), with values the association already holds as checked ASCII UIDs
(`command_set.read_store`), so it is packed here directly. The bytes are pydicom's, element for
element (tests/pacs/wire/test_file_meta.py compares both on UIDs of odd and even length).
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from storage.dicom.parse import PREAMBLE


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    """One element of a VR with a 2-byte length (PS3.5 7.1.2)."""
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _uid(element: int, uid: str) -> bytes:
    data = uid.encode("ascii")
    return _short(element, b"UI", data + b"\x00" * (len(data) & 1))  # padded to even with NUL


def _text(element: int, vr: bytes, text: str) -> bytes:
    data = text.encode("ascii")
    return _short(element, vr, data + b" " * (len(data) & 1))  # padded to even with a space


#: (0002,0001) File Meta Information Version, OB: a 4-byte length after two reserved bytes
_VERSION = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
_IMPLEMENTATION = _uid(0x0012, PYNETDICOM_IMPLEMENTATION_UID) + _text(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION)


def part10_head(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, prefix and file meta of a received instance, as pynetdicom's path writes them
    (its implementation UID and version name, no Source AE Title)."""
    group = (
        _VERSION
        + _uid(0x0002, sop_class)
        + _uid(0x0003, sop_instance)
        + _uid(0x0010, transfer_syntax)
        + _IMPLEMENTATION
    )
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group))
    return PREAMBLE + length + group
