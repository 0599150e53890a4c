"""Broken objects made from good ones: what a faulty modality, a cut connection or a hostile peer sends.

`corpus()` builds 100 distinct valid Part-10 files: CT slices of `dicom_factory` (sizes,
character sets, transfer syntaxes, a few multi-frame) and pydicom's bundled test files under
new UIDs. `mutants()` applies one named mutation to each, chosen by `random.Random(SEED)`, so
every run sends the same bytes. A mutation is a small function of (file, rng) that returns the
mutated bytes and a note of what it did; it changes the data set where it can, so that a C-STORE
(which carries no File Meta Information) sends the same damage as STOW-RS. Every file keeps a
SOP Instance UID of its own unless the mutation is about that UID, so the successes of one channel
are as many instances. Each mutation says which statuses a refusal of it must have (PS3.4 B.2.3),
or none where storing it is right too: a flipped byte or a cut may leave a readable object.

The UIDs are made from the seed, not generated, so that lengths, offsets and outcomes are the
same on every run.
"""

from __future__ import annotations

import functools
import io
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)

from tests.kit import dicom_factory as f

SEED = 20261123
COUNT = 100
UID_BASE = f"{f.UID_ROOT}{SEED % 100000}."
UNDEFINED = 0xFFFFFFFF
HUGE = 0xFFFFFFF0
#: explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
KNOWN_VRS = LONG_VRS | frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
#: what the index reads from a data set (storage.dicom.parse): the elements worth damaging
INDEXED = (
    0x00080020,  # StudyDate
    0x00080030,  # StudyTime
    0x00080050,  # AccessionNumber
    0x00080060,  # Modality
    0x00081030,  # StudyDescription
    0x00100010,  # PatientName
    0x00100020,  # PatientID
    0x00100030,  # PatientBirthDate
    0x00100040,  # PatientSex
    0x00200010,  # StudyID
    0x00200011,  # SeriesNumber
    0x00200013,  # InstanceNumber
    0x00280010,  # Rows
    0x00280011,  # Columns
)
#: the string VRs among them (Rows and Columns are US)
TEXT_VRS = frozenset({"CS", "DA", "IS", "LO", "PN", "SH", "TM"})
SOP_INSTANCE, STUDY, SERIES = 0x00080018, 0x0020000D, 0x0020000E
CHARSET, PATIENT_NAME, ROWS, PIXEL_DATA = 0x00080005, 0x00100010, 0x00280010, 0x7FE00010
CONTENT_SEQUENCE = 0x0040A730
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

# ----- reading a Part-10 file's elements ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Element:
    """Where one top-level element sits in the file: its header, its length field, its value."""

    tag: int
    vr: bytes | None  # None in implicit VR
    start: int
    length_at: int
    length_size: int
    value_at: int
    length: int
    end: int


@dataclass(frozen=True)
class Part10:
    """A valid Part-10 file and what a mutation needs to know of it."""

    label: str
    data: bytes
    meta_end: int
    transfer_syntax: str
    sop_class_uid: str

    @property
    def implicit(self) -> bool:
        return self.transfer_syntax == ImplicitVRLittleEndian

    @property
    def little(self) -> bool:
        return self.transfer_syntax != ExplicitVRBigEndian

    @property
    def walkable(self) -> bool:
        """Whether the data set's bytes are its elements (not a deflate stream)."""
        return self.transfer_syntax != DeflatedExplicitVRLittleEndian

    @property
    def native(self) -> bool:
        return self.transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)

    @functools.cached_property
    def elements(self) -> dict[int, Element]:
        if not self.walkable:
            return {}
        found, _ = _walk(self.data, self.meta_end, len(self.data), self.implicit, self.little)
        return {e.tag: e for e in found}


def _walk(data: bytes, pos: int, end: int, implicit: bool, little: bool) -> tuple[list[Element], int]:
    """The elements from `pos` up to `end` or an item delimiter (returned past it), without values."""
    out = []
    order = "<" if little else ">"
    while pos + 8 <= end:
        group, elem = struct.unpack_from(f"{order}HH", data, pos)
        tag = group << 16 | elem
        vr: bytes | None = None
        if implicit or group == 0xFFFE:
            (length,), length_at, size, header = struct.unpack_from(f"{order}L", data, pos + 4), pos + 4, 4, 8
        else:
            vr = data[pos + 4 : pos + 6]
            if vr in LONG_VRS:
                (length,), length_at, size, header = struct.unpack_from(f"{order}L", data, pos + 8), pos + 8, 4, 12
            else:
                (length,), length_at, size, header = struct.unpack_from(f"{order}H", data, pos + 6), pos + 6, 2, 8
        value_at = pos + header
        if tag == ITEM_END:
            return out, value_at
        if length == UNDEFINED:
            stop = _skip_undefined(data, value_at, end, implicit, little, encapsulated=tag == PIXEL_DATA)
        else:
            stop = value_at + length
        out.append(Element(tag, vr, pos, length_at, size, value_at, length, stop))
        pos = stop
    return out, pos


def _skip_undefined(data: bytes, pos: int, end: int, implicit: bool, little: bool, *, encapsulated: bool) -> int:
    """Past the Sequence Delimitation Item of an undefined-length value (items of any length)."""
    order = "<" if little else ">"
    while pos + 8 <= end:
        group, elem, length = struct.unpack_from(f"{order}HHL", data, pos)
        tag, pos = group << 16 | elem, pos + 8
        if tag == SEQUENCE_END:
            return pos
        if length != UNDEFINED:
            pos += length
        elif not encapsulated:
            _, pos = _walk(data, pos, end, implicit, little)
    return end


def _vr(e: Element) -> str:
    """An element's VR: as written in explicit VR, from the data dictionary in implicit VR."""
    if e.vr is not None:
        return e.vr.decode("ascii", "replace")
    try:
        return str(dictionary_VR(e.tag))
    except KeyError:
        return "UN"


def _encode_length(p: Part10, element: Element, length: int) -> bytes:
    order = "<" if p.little else ">"
    return struct.pack(f"{order}{'L' if element.length_size == 4 else 'H'}", length)


def _header(p: Part10, tag: int, vr: bytes, length: int) -> bytes:
    """An element header in `p`'s encoding (a 4-byte length for long VRs and in implicit VR)."""
    order = "<" if p.little else ">"
    head = struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF)
    if p.implicit:
        return head + struct.pack(f"{order}L", length)
    if vr in LONG_VRS:
        return head + vr + b"\x00\x00" + struct.pack(f"{order}L", length)
    return head + vr + struct.pack(f"{order}H", length)


def _with_value(p: Part10, tag: int, vr: bytes, value: bytes) -> bytes:
    """`p` with the top-level element `tag` set to `value` (replaced, or inserted in tag order)."""
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    element = _header(p, tag, vr, len(value)) + value
    old = p.elements.get(tag)
    if old is not None:
        return p.data[: old.start] + element + p.data[old.end :]
    at = next((e.start for e in p.elements.values() if e.tag > tag), len(p.data))
    return p.data[:at] + element + p.data[at:]


def _text(p: Part10, tag: int) -> bytes:
    e = p.elements.get(tag)
    return p.data[e.value_at : e.end].rstrip(b" \x00") if e is not None else b""


# ----- the mutations --------------------------------------------------------------------------

Mutate = Callable[[Part10, random.Random], tuple[bytes, str]]
Applies = Callable[[Part10], bool]


def truncate(p: Part10, rng: random.Random) -> tuple[bytes, str]:
    """Cut the file at a random offset inside its data set (a connection lost mid-transfer)."""
    cut = rng.randrange(p.meta_end + 1, len(p.data))
    return p.data[:cut], f"cut at {cut} of {len(p.data)}"


def _sequences(p: Part10) -> list[Element]:
    if not p.walkable:
        return []
    return [e for e in p.elements.values() if _vr(e) == "SQ" and e.length]


def truncate_in_sequence(p: Part10, rng: random.Random) -> tuple[bytes, str]:
    """Cut the file inside one of its sequences: items begun and never finished."""
    e = rng.choice(_sequences(p))
    cut = rng.randrange(e.value_at, min(e.end, len(p.data)))
    return p.data[:cut], f"cut at {cut}, inside ({e.tag >> 16:04X},{e.tag & 0xFFFF:04X}) of {e.value_at}-{e.end}"


def flip_header_byte(p: Part10, rng: random.Random) -> tuple[bytes, str]:
    """XOR one byte of the first 512 after the preamble: the DICM prefix, file meta, first elements."""
    at = rng.randrange(128, min(128 + 512, len(p.data)))
    mask = rng.randrange(1, 256)
    data = bytearray(p.data)
    data[at] ^= mask
    where = "file meta" if at < p.meta_end else "data set"
    return bytes(data), f"byte {at} ({where}) ^ 0x{mask:02X}"


def nul_in_text(p: Part10, rng: random.Random) -> tuple[bytes, str]:
    """Set a byte inside a text value the index reads to NUL (a flip no text VR allows, PS3.5 6.2)."""
    e = rng.choice(_indexed_text(p))
    at = e.value_at + rng.randrange(len(_value(p, e)) - 1)  # a character follows it: not padding
    data = p.data[:at] + b"\x00" + p.data[at + 1 :]
    return data, f"({e.tag >> 16:04X},{e.tag & 0xFFFF:04X}) byte {at - e.value_at} of {e.length} -> NUL"


def _indexed_text(p: Part10) -> list[Element]:
    return [e for e in _indexed(p) if _vr(e) in TEXT_VRS and len(_value(p, e)) >= 2]


def _value(p: Part10, e: Element) -> bytes:
    """An element's value without its padding."""
    return p.data[e.value_at : e.end].rstrip(b" \x00")


def _indexed(p: Part10) -> list[Element]:
    return [p.elements[t] for t in INDEXED if t in p.elements]


def unknown_vr(p: Part10, rng: random.Random) -> tuple[bytes, str]:
    """Turn the VR of an element the index reads into one PS3.5 does not define."""
    e = rng.choice([e for e in _indexed(p) if e.vr is not None])
    assert e.vr is not None
    which = rng.randrange(2)
    while True:
        vr = bytearray(e.vr)
        vr[which] = rng.choice(b"QXZ019?!\x00\xff")
        if bytes(vr) not in KNOWN_VRS:
            break
    data = p.data[: e.start + 4] + bytes(vr) + p.data[e.start + 6 :]
    return data, f"({e.tag >> 16:04X},{e.tag & 0xFFFF:04X}) VR {e.vr.decode()} -> {bytes(vr)!r}"


def wrong_length(p: Part10, rng: random.Random) -> tuple[bytes, str]:
    """Give an element the index reads a length that is not its value's."""
    e = rng.choice(_indexed(p))
    ceiling = 0xFFFF if e.length_size == 2 else 0x100000
    choices = [e.length + d for d in (-4, -2, -1, 1, 2, 3, 6, 40) if 0 <= e.length + d <= ceiling]
    length = rng.choice([*choices, rng.randrange(0, ceiling)])
    data = p.data[: e.length_at] + _encode_length(p, e, length) + p.data[e.length_at + e.length_size :]
    return data, f"({e.tag >> 16:04X},{e.tag & 0xFFFF:04X}) length {e.length} -> {length}"


def _long(p: Part10) -> list[Element]:
    return [e for e in p.elements.values() if e.length_size == 4]


def huge_length(p: Part10, rng: random.Random) -> tuple[bytes, str]:
    """Give an element with a 4-byte length field the length 0xFFFFFFF0 (4 GiB the file lacks)."""
    e = rng.choice(_long(p))
    data = p.data[: e.length_at] + _encode_length(p, e, HUGE) + p.data[e.length_at + e.length_size :]
    return data, f"({e.tag >> 16:04X},{e.tag & 0xFFFF:04X}) length {e.length} -> 0x{HUGE:08X}"


def _nested(p: Part10, depth: int) -> bytes:
    """A Content Sequence of one undefined-length item holding the next one, `depth` sequences deep."""
    order = "<" if p.little else ">"

    def delimiter(tag: int, length: int = 0) -> bytes:
        return struct.pack(f"{order}HHL", tag >> 16, tag & 0xFFFF, length)

    opening = _header(p, CONTENT_SEQUENCE, b"SQ", UNDEFINED) + delimiter(ITEM, UNDEFINED)
    closing = delimiter(ITEM_END) + delimiter(SEQUENCE_END)
    return opening * depth + closing * depth


def _nesting(depth: tuple[int, int]) -> Mutate:
    def nest(p: Part10, rng: random.Random) -> tuple[bytes, str]:
        levels = rng.randint(*depth)
        at = next((e.start for e in p.elements.values() if e.tag > CONTENT_SEQUENCE), len(p.data))
        return p.data[:at] + _nested(p, levels) + p.data[at:], f"{levels} nested sequences"

    return nest


nest_deep = _nesting((36, 48))
nest_very_deep = _nesting((900, 1100))


def _uid_mutation(value: Callable[[random.Random], str]) -> Mutate:
    def bad_uid(p: Part10, rng: random.Random) -> tuple[bytes, str]:
        tag = rng.choice([SOP_INSTANCE, STUDY, SERIES])
        uid = value(rng)
        name = {SOP_INSTANCE: "SOPInstanceUID", STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID"}[tag]
        return _with_value(p, tag, b"UI", uid.encode()), f"{name} = {uid!r}"

    return bad_uid


uid_too_long = _uid_mutation(lambda rng: UID_BASE + "".join(rng.choice("123456789") for _ in range(50)))
uid_letters = _uid_mutation(lambda rng: UID_BASE + rng.choice(["A1", "1a", "x", "12.3e4", "1-2"]) + ".7")
uid_empty = _uid_mutation(lambda rng: "")
uid_leading_zero = _uid_mutation(lambda rng: UID_BASE + "0" + str(rng.randrange(1, 9999)) + ".1")


def charset_unknown(p: Part10, rng: random.Random) -> tuple[bytes, str]:
    """Declare a Specific Character Set no one defines (PS3.3 C.12.1.1.2)."""
    term = rng.choice(["ISO_IR 999", "UTF-8", "LATIN1", "ISO 2022 IR 999", "ISO_IR 100\\WINDOWS-1250"])
    return _with_value(p, CHARSET, b"CS", term.encode()), f"(0008,0005) = {term!r}"


#: Ştefănescu^Ioana in ISO 8859-2: 0xAA alone is no UTF-8 sequence
LATIN2_NAME = b"\xaatef\xe3nescu^Ioana"


def charset_bad_bytes(p: Part10, rng: random.Random) -> tuple[bytes, str]:
    """Patient's Name bytes that do not decode in the declared character set.

    pydicom (and the archive with it) reads an undeclared or ISO_IR 6 set as Latin-1, where
    every byte decodes; such a file declares UTF-8 for its name, as a device misconfigured to
    ISO_IR 192 would. A multi-byte ISO 2022 set gets an escape to a set it did not declare.
    """
    declared = _text(p, CHARSET).decode("ascii", "replace")
    if "2022" in declared:
        name = b"Yamada^Tarou=\x1b$)C\xb1\xe8\xb4\xd9"  # an escape to KS X 1001, not declared
        return _with_value(p, PATIENT_NAME, b"PN", name), f"{declared!r} with an ESC to KS X 1001"
    if declared != "ISO_IR 192":
        p = replace(p, data=_with_value(p, CHARSET, b"CS", b"ISO_IR 192"))
    name = rng.choice([LATIN2_NAME, b"Popescu^Ion\xff", b"Na\xc3\x28ve^Ion"])
    return _with_value(p, PATIENT_NAME, b"PN", name), f"ISO_IR 192 (was {declared or 'none'!r}) with {name!r}"


def pixel_length(p: Part10, rng: random.Random) -> tuple[bytes, str]:
    """Native Pixel Data whose length is not Rows x Columns x Samples x Bits x Frames."""
    pixels, rows = p.elements[PIXEL_DATA], p.elements[ROWS]
    how = rng.choice(["rows", "short", "long"])
    order = "<" if p.little else ">"
    if how == "rows":
        (old,) = struct.unpack_from(f"{order}H", p.data, rows.value_at)
        new = struct.pack(f"{order}H", min(old * 2 + 1, 0xFFFF))
        return p.data[: rows.value_at] + new + p.data[rows.value_at + 2 :], f"Rows {old} -> {old * 2 + 1}"
    if how == "short":
        cut = 2 * rng.randint(1, max(1, pixels.length // 8))
        length = pixels.length - cut
        extra = b""
    else:
        extra = bytes(65536 + pixels.length // 16 + 2 * rng.randint(1, 64))
        length = pixels.length + len(extra)
    data = p.data[: pixels.length_at] + _encode_length(p, pixels, length) + p.data[pixels.value_at :]
    data = data[: pixels.value_at + min(length, pixels.length)] + extra + data[pixels.end :]
    return data, f"Pixel Data {pixels.length} -> {length} bytes"


@dataclass(frozen=True, slots=True)
class Mutation:
    """A named mutation, how many of the 100 files get it, which files it applies to, and the
    statuses a refusal of it must have (None: stored or refused, both are right)."""

    name: str
    apply: Mutate
    count: int
    applies: Applies
    refused: frozenset[int] | None


#: Error: cannot understand (PS3.4 B.2.3): not DICOM, cut short
CANNOT_UNDERSTAND = frozenset({0xC000})
#: Error: data set does not match SOP class: bad UID, character set, nesting, pixel length
DOES_NOT_MATCH = frozenset({0xA900})


def _any(p: Part10) -> bool:
    return True


def _has_sequence(p: Part10) -> bool:
    return bool(_sequences(p))


def _has_indexed_text(p: Part10) -> bool:
    return p.walkable and bool(_indexed_text(p))


def _has_indexed_explicit(p: Part10) -> bool:
    return p.walkable and not p.implicit and bool(_indexed(p))


def _has_indexed(p: Part10) -> bool:
    return p.walkable and bool(_indexed(p))


def _has_long(p: Part10) -> bool:
    return p.walkable and bool(_long(p))


def _no_content_sequence(p: Part10) -> bool:
    return p.walkable and CONTENT_SEQUENCE not in p.elements


def _walkable(p: Part10) -> bool:
    return p.walkable


def _has_name(p: Part10) -> bool:
    return p.walkable and PATIENT_NAME in p.elements


def _native_pixels(p: Part10) -> bool:
    e = p.elements.get(PIXEL_DATA)
    return p.native and e is not None and e.length != UNDEFINED and ROWS in p.elements


MUTATIONS = [
    Mutation("truncate", truncate, 12, _any, None),
    Mutation("truncate_in_sequence", truncate_in_sequence, 6, _has_sequence, CANNOT_UNDERSTAND),
    Mutation("flip_header_byte", flip_header_byte, 10, _any, None),
    Mutation("nul_in_text", nul_in_text, 4, _has_indexed_text, DOES_NOT_MATCH),
    Mutation("unknown_vr", unknown_vr, 8, _has_indexed_explicit, None),
    Mutation("wrong_length", wrong_length, 10, _has_indexed, None),
    Mutation("huge_length", huge_length, 6, _has_long, CANNOT_UNDERSTAND),
    Mutation("nest_deep", nest_deep, 4, _no_content_sequence, DOES_NOT_MATCH),
    Mutation("nest_very_deep", nest_very_deep, 4, _no_content_sequence, DOES_NOT_MATCH),
    Mutation("uid_too_long", uid_too_long, 4, _walkable, DOES_NOT_MATCH),
    Mutation("uid_letters", uid_letters, 4, _walkable, DOES_NOT_MATCH),
    Mutation("uid_empty", uid_empty, 4, _walkable, DOES_NOT_MATCH),
    Mutation("uid_leading_zero", uid_leading_zero, 4, _walkable, DOES_NOT_MATCH),
    Mutation("charset_unknown", charset_unknown, 6, _walkable, DOES_NOT_MATCH),
    Mutation("charset_bad_bytes", charset_bad_bytes, 6, _has_name, DOES_NOT_MATCH),
    Mutation("pixel_length", pixel_length, 8, _native_pixels, DOES_NOT_MATCH),
]
assert sum(m.count for m in MUTATIONS) == COUNT


# ----- the valid files and their mutants ------------------------------------------------------


def _uid(n: int) -> str:
    return f"{UID_BASE}{n}"


#: (charset, name) pairs of the CT slices: none, Latin-1, Latin-2, UTF-8, and Japanese in ISO 2022
NAMES = [
    (None, "Popescu^Ion"),
    ("ISO_IR 100", "Müller^Jürgen"),
    ("ISO_IR 101", "Ştefănescu^Ioana"),
    ("ISO_IR 192", "Țurcanu^Mihai"),
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎"),
]
#: pydicom's bundled files that are valid for ingest, in every transfer syntax it ships
BUNDLED = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_padded.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "liver_1frame.dcm",
    "reportsi.dcm",
    "test-SR.dcm",
    "MR_small_implicit.dcm",
    "rtplan.dcm",
    "rtdose_1frame.dcm",
    "rtdose.dcm",
    "MR_small_bigendian.dcm",
    "ExplVR_BigEnd.dcm",
    "liver_expb_1frame.dcm",
    "rtdose_expb_1frame.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
    "image_dfl.dcm",
    "JPEG-lossy.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_small_odd_jpeg.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_rle_2frame.dcm",
    "rtdose_rle_1frame.dcm",
    "chrGerm.dcm",
    "chrRuss.dcm",
    "chrX1.dcm",
    "chrJapMulti.dcm",
    "chrH31.dcm",
]


def _part10(label: str, data: bytes) -> Part10:
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    group_length = int(meta.FileMetaInformationGroupLength)
    return Part10(
        label,
        data,
        132 + 12 + group_length,
        str(meta.TransferSyntaxUID),
        str(meta.MediaStorageSOPClassUID),
    )


def _ct(n: int, rng: random.Random) -> Part10:
    charset, name = NAMES[n % len(NAMES)]
    frames = rng.choice([2, 3, 4]) if n % 9 == 4 else 1
    size = rng.choice([8, 16, 24, 32, 64, 128]) if frames == 1 else 16
    ds = f.ct_dataset(
        study_uid=_uid(3 * n),
        series_uid=_uid(3 * n + 1),
        sop_uid=_uid(3 * n + 2),
        patient_id=f"MUT-{n:03d}",
        patient_name=name,
        charset=charset,
        rows=size,
        columns=rng.choice([size, size * 2]),
        frames=frames,
        modality=rng.choice(["CT", "CT", "MR", "OT"]),
        instance_number=n + 1,
    )
    if ds.Modality == "MR":
        ds.SOPClassUID = MRImageStorage
    if n % 3 == 0:  # a coded procedure, as RIS-driven modalities send; every other one of undefined length
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "ZDA2", "99MUNI", "CT torace nativ"
        ds.ProcedureCodeSequence = [code]
        ds["ProcedureCodeSequence"].is_undefined_length = n % 2 == 0
    ds.AccessionNumber = f"MUT{n:05d}"
    syntax = ImplicitVRLittleEndian if n % 4 == 3 else ExplicitVRLittleEndian
    return _part10(f"ct-{n:03d}", f.to_bytes(ds, syntax))


def _bundled(name: str, n: int) -> Part10:
    ds = pydicom.dcmread(f.BUNDLED.get(name) or _charset_files()[name])
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = _uid(3 * n), _uid(3 * n + 1), _uid(3 * n + 2)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf)
    return _part10(name, buf.getvalue())


@functools.cache
def _charset_files() -> dict[str, object]:
    return {p.name: p for p in f.bundled_pydicom_files("charset_files")}


@functools.cache
def corpus() -> tuple[Part10, ...]:
    """The 100 valid files the mutants are made from, the same on every call and every run."""
    rng = random.Random(SEED)
    bundled = [_bundled(name, n) for n, name in enumerate(BUNDLED)]
    start = len(bundled)
    return (*bundled, *(_ct(n, rng) for n in range(start, COUNT)))


@dataclass(frozen=True, slots=True)
class Mutant:
    """One mutated file: what STOW-RS sends (`data`), and what a C-STORE sends (`dimse_file`)."""

    index: int
    mutation: str
    base: str
    note: str
    data: bytes
    meta: bytes  # the valid file's preamble and File Meta Information
    sop_class_uid: str  # of the valid file's meta: the C-STORE request's Affected SOP Class
    transfer_syntax: str
    refused: frozenset[int] | None

    @property
    def id(self) -> str:
        return f"{self.mutation}-{self.index:03d}"

    @property
    def dimse_file(self) -> bytes:
        """A Part-10 file for pynetdicom to stream: the valid file meta, then the mutated data set.

        A C-STORE carries the data set alone (PS3.7 9.3.1.1): damage to the file meta does not
        travel over DIMSE, the SCP writes a meta of its own from the request.
        """
        return self.meta + self.data[len(self.meta) :]


@functools.cache
def mutants(seed: int = SEED) -> tuple[Mutant, ...]:
    """The corpus, each file mutated once, numbered in a shuffled order (the ids interleave).

    The mutations that apply to the fewest files choose theirs first, so that every one finds
    a file it applies to.
    """
    rng = random.Random(seed)
    files = list(corpus())
    rng.shuffle(files)
    slots = [m for m in MUTATIONS for _ in range(m.count)]
    applicable = {m.name: sum(m.applies(p) for p in files) for m in MUTATIONS}
    chosen: dict[int, Part10] = {}
    for i in sorted(range(len(slots)), key=lambda i: applicable[slots[i].name]):
        taken = {p.label for p in chosen.values()}
        chosen[i] = next(p for p in files if p.label not in taken and slots[i].applies(p))
    numbers = list(range(len(slots)))
    rng.shuffle(numbers)
    out = []
    for index, i in sorted(zip(numbers, range(len(slots)), strict=True)):
        m, p = slots[i], chosen[i]
        data, note = m.apply(p, rng)
        out.append(
            Mutant(
                index, m.name, p.label, note, data, p.data[: p.meta_end], p.sop_class_uid, p.transfer_syntax, m.refused
            )
        )
    return tuple(out)
