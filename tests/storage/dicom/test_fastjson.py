"""storage.dicom.fastjson must give exactly pydicom's DICOM JSON, dropped elements included.

Every comparison reads the same bytes twice, so pydicom's side effects (it converts raw
elements in place) on one dataset cannot help or hide anything on the other.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
from pydicom import config, dcmread
from pydicom.charset import convert_encodings, encode_string
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from storage.dicom.fastjson import FAST_VRS, dataset_encodings, to_json_dict_fast

THRESHOLD = 1024


def bulk_handler(elem: DataElement) -> str:
    return f"bulk:{elem.tag:08X}"


def fast_json(ds: Dataset) -> dict[str, Any]:
    return to_json_dict_fast(ds, dataset_encodings(ds), bulk_threshold=THRESHOLD, bulk_handler=bulk_handler)


def pydicom_json(ds: Dataset) -> dict[str, Any]:
    return ds.to_json_dict(
        bulk_data_threshold=THRESHOLD, bulk_data_element_handler=bulk_handler, suppress_invalid_tags=True
    )


def same(a: Any, b: Any) -> bool:
    """== made strict where JSON output differs, and lenient where only Python does."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True  # FL/FD may hold NaN, and NaN != NaN
    if isinstance(a, str) and isinstance(b, str):
        return a == b  # pydicom's UID is a str subclass
    return type(a) is type(b) and bool(a == b)  # 1 == 1.0, but they are not the same JSON


def assert_parity(read: Callable[[], Dataset]) -> dict[str, Any]:
    """Fast JSON of one reading equals pydicom's JSON of another, element for element."""
    fast, slow = fast_json(read()), pydicom_json(read())
    assert fast.keys() == slow.keys(), (
        f"only fast: {fast.keys() - slow.keys()}, only pydicom: {slow.keys() - fast.keys()}"
    )
    diff = {key: (fast[key], slow[key]) for key in fast if not same(fast[key], slow[key])}
    assert not diff, diff
    return fast


# --- every file pydicom ships ----------------------------------------------------------


def bundled_files() -> Iterator[str]:
    charset_dir = Path(pydicom.data.__file__).parent / "charset_files"
    files = set(pydicom.data.get_testdata_files()) | {str(p) for p in charset_dir.glob("*.dcm")}
    yield from sorted(files)


def readable(path: str) -> bool:
    try:
        dcmread(path, defer_size=4096)
    except Exception:
        return False
    return True


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("path", [f for f in bundled_files() if readable(f)], ids=lambda p: Path(p).name)
def test_parity_with_pydicom_on_its_test_files(path: str) -> None:
    assert_parity(lambda: dcmread(path, defer_size=4096))


# --- datasets built here ---------------------------------------------------------------

ROMANIAN = "Ştefănescu^Ioana"


def saved(ds: Dataset, transfer_syntax: UID = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def reader(data: bytes) -> Callable[[], Dataset]:
    return lambda: dcmread(BytesIO(data), defer_size=4096)


def ct(charset: str | list[str] | None, name: str) -> Dataset:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.PatientName = name
    ds.PatientID = "RO-1850101123456"
    ds.PatientBirthDate = "19850101"
    ds.PatientSex = "F"
    ds.InstitutionName = "Spitalul Clinic Judeţean Cluj" if charset else "Spitalul Clinic"
    ds.StudyDescription = "CT torace "  # trailing space is padding
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Modality = "CT"
    ds.StudyTime = "101010.123456"
    ds.ImagePositionPatient = ["-125.5", "-125.5", "12.75"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = ["0.48828125", "0.48828125"]
    ds.SliceThickness = "1.25"
    ds.WindowCenter = ["40", "400"]
    ds.WindowWidth = ["400", "2000"]
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.InstanceNumber = "12"
    ds.ReferencedFrameNumber = ["1", "2", "3"]
    ds.Rows = ds.Columns = 512
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 1
    ds.SmallestImagePixelValue = -1024  # "US or SS": left to pydicom
    ds.ReferencePixelX0 = -4  # SL
    ds.TubeAngle = 0.1  # FD
    ds.add_new(0x00189309, "FD", [1.5, -2.25])
    ds.add_new(0x00209165, "AT", [0x00100010, 0x7FE00010])  # Dimension Index Pointer
    ds.add_new(0x00189327, "FD", float("nan"))
    ds.add_new(0x00209153, "FD", [])  # empty
    ds.AcquisitionComments = "linia 1\\linia 2 "  # LT keeps its backslash
    ds.ImageComments = "  fără contrast  " if charset else "  no contrast  "
    ds.add_new(0x00189318, "FL", [0.1, 3.5])
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.PerformingPhysicianName = [name, "Popescu^Ion"]
    ds.OtherPatientNames = "Yamada^Tarou=山田^太郎=やまだ^たろう" if charset == "ISO_IR 192" else "Doe^John==Doe"
    ds.RetrieveURL = "https://pacs.example.ro/wado?x=1 "
    ds.RetrieveAETitle = [" ARCHIVE ", "PACS2"]
    ds.PatientAge = "040Y"
    ds.ReferencedSOPInstanceUID = "1.2.3.4"
    ds.ReferencedImageSequence = [Dataset()]
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    ds.PixelData = b"\x00\x01" * 2048
    return ds


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        ("ISO_IR 101", ROMANIAN),
        ("ISO_IR 192", "Ștefănescu^Ioana"),  # comma-below, only in Unicode
        ("ISO_IR 100", "Müller^Jürgen"),
        (None, "Popescu^Ion"),
    ],
)
@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_parity_on_built_ct(charset: str | None, name: str, transfer_syntax: UID) -> None:
    data = saved(ct(charset, name), transfer_syntax)
    out = assert_parity(reader(data))
    assert out["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": name}]}
    assert out["00280030"] == {"vr": "DS", "Value": [0.48828125, 0.48828125]}
    assert "Value" not in out["00080050"]


def test_fast_path_leaves_raw_elements_alone() -> None:
    """The speed comes from not converting: raw elements of fast VRs must still be raw after."""
    ds = reader(saved(ct("ISO_IR 101", ROMANIAN)))()
    raw_before = {tag for tag in ds.keys() if isinstance(ds.get_item(tag, keep_deferred=True), RawDataElement)}
    fast_json(ds)
    after = {tag: ds.get_item(tag, keep_deferred=True) for tag in raw_before}
    converted = {
        f"{tag:08X} {elem.VR}"
        for tag, elem in after.items()
        if elem.VR in FAST_VRS and not isinstance(elem, RawDataElement)
    }
    # pydicom reads Pixel Representation itself when it converts a sequence (for "US or SS")
    assert converted == {"00280103 US"}
    assert len(raw_before) > 40


def test_non_default_pydicom_config_goes_to_pydicom() -> None:
    data = saved(ct("ISO_IR 100", "Müller^Jürgen"))
    config.datetime_conversion = True
    config.DS_decimal(True)
    try:
        assert_parity(reader(data))
    finally:
        config.datetime_conversion = False
        config.DS_decimal(False)


# --- raw values pydicom itself would never write ---------------------------------------

LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def raw_file(elements: list[tuple[int, str, bytes]], *, charset: bytes | None = None, implicit: bool = False) -> bytes:
    """A Part 10 file with these exact value bytes (each value must have an even length)."""
    if charset is not None:
        elements = [(0x00080005, "CS", charset), *elements]
    elements += [(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7\x00"), (0x00080018, "UI", b"1.2.3.4\x00")]
    body = bytearray()
    for tag, vr, value in sorted(elements):
        assert len(value) % 2 == 0, (hex(tag), value)
        body += struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        if implicit:
            body += struct.pack("<L", len(value))
        elif vr in LONG_VRS:
            body += vr.encode() + b"\0\0" + struct.pack("<L", len(value))
        else:
            body += vr.encode() + struct.pack("<H", len(value))
        body += value
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.4")
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta)
    return bytes(fp.getvalue()) + bytes(body)


EDGE_CASES: dict[str, tuple[int, str, bytes]] = {
    "IS float": (0x00200013, "IS", b"1.5 "),
    "IS padded": (0x00200013, "IS", b" 12 "),
    "IS 12 chars": (0x00200013, "IS", b"  0000000012"),
    "IS 13 chars": (0x00200013, "IS", b"  00000000012 "),
    "IS out of range": (0x00200013, "IS", b"4294967296"),
    "IS empty among several": (0x00081160, "IS", b"1\\\\20 "),
    "IS only spaces": (0x00200013, "IS", b"    "),
    "IS NUL padded": (0x00200013, "IS", b"7\x00"),
    "DS exponent": (0x00180050, "DS", b"1.5E-3"),
    "DS nan": (0x00180050, "DS", b"nan "),
    "DS underscore": (0x00180050, "DS", b"1_0 "),
    "DS 17 chars": (0x00180050, "DS", b"0.12345678901234567"[:17] + b" "),
    "DS spaces inside": (0x00200032, "DS", b" 1 \\ 2.\\.5  "),
    "DS empty among several": (0x00200032, "DS", b"1\\\\20 "),
    "DS trailing separator": (0x00280030, "DS", b"1\\"),
    "DS only spaces": (0x00180050, "DS", b"  "),
    "CS inner padding kept": (0x00080008, "CS", b"ORIGINAL \\PRIMARY "),
    "CS lowercase not validated": (0x00080060, "CS", b"ct"),
    "CS empty values": (0x00080008, "CS", b"\\\\"),
    "AE stripped": (0x00080054, "AE", b" ARCH \\ B   "),
    "DA range": (0x00080020, "DA", b"20200101-20201231 "),
    "TM": (0x00080030, "TM", b"1010"),
    "UI leading zero": (0x00081155, "UI", b"1.02.34\x00"),
    "UI too long": (0x00081155, "UI", b"1." + b"2" * 64),
    "UI empty among several": (0x00080062, "UI", b"1.2\\\\1.34\x00"),
    "UI space": (0x00081155, "UI", b"1.2 .3"),
    "UR padded": (0x00081190, "UR", b"http://a/b?c=d  "),
    "LO 65 chars": (0x00081030, "LO", b"x" * 65 + b" "),
    "LO 63 chars and padding": (0x00081030, "LO", b"x" * 63 + b" "),
    "LO 64 chars and padding": (0x00081030, "LO", b"x" * 64 + b"  "),
    "LO multi": (0x00100020, "LO", b"A \\ B\x00"),
    "SH 17 with padding": (0x00080050, "SH", b"A" * 16 + b"  "),
    "ST backslash": (0x00204000, "ST", b"a\\b   "),
    "ST too long": (0x00204000, "ST", b"y" * 1026),
    "UT": (0x00400280, "UT", b"long text\\  "),
    "UC": (0x00189937, "UC", b"a\\b "),
    "PN four groups": (0x00100010, "PN", b"A=B=C=D "),
    "PN trailing group separator": (0x00100010, "PN", b"A=B=C="),
    "PN empty among several": (0x00081070, "PN", b"A^B\\"),
    "PN ideographic only": (0x00100010, "PN", b"=Ideo^Gr"),
    "PN alphabetic and phonetic": (0x00100010, "PN", b"A^B==P"),
    "PN group too long": (0x00100010, "PN", b"N" * 65 + b" "),
    "PN only padding": (0x00100010, "PN", b"  "),
    "PN empty groups": (0x00100010, "PN", b"==  "),
    "US odd bytes": (0x00280010, "US", b"\x01\x02\x03\x04\x05\x06"[:3] + b"\x00\x00\x00"),
    "US several": (0x00280011, "US", b"\x00\x02\x00\x02"),
    "SS negative": (0x00189219, "SS", b"\xff\xff"),
    "UL wrong length": (0x00081197, "UL", b"\x01\x02"),
    "FL": (0x00189306, "FL", struct.pack("<2f", 0.1, float("inf"))),
    "FD": (0x00189327, "FD", struct.pack("<d", 1e300)),
    "AT": (0x00209165, "AT", struct.pack("<4H", 0x0010, 0x0010, 0x7FE0, 0x0010)),
    "AT six bytes": (0x00209165, "AT", struct.pack("<3H", 0x0010, 0x0010, 0x7FE0)),
    "LUT descriptor SS": (0x00283002, "SS", struct.pack("<3h", 256, -2048, 12)),
    "private LO": (0x00091010, "LO", b"vendor"),
    "private creator": (0x00090010, "LO", b"ACME 1.0"),
    "UN of known tag": (0x00100020, "UN", b"ID42"),
    "empty US": (0x00280010, "US", b""),
    "empty PN": (0x00100010, "PN", b""),
    "empty DS": (0x00180050, "DS", b""),
    "empty AT": (0x00209165, "AT", b""),
    "SV": (0x00720082, "SV", struct.pack("<q", -5)),
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("case", EDGE_CASES, ids=list(EDGE_CASES))
def test_parity_on_edge_values(case: str, implicit: bool) -> None:
    assert_parity(reader(raw_file([EDGE_CASES[case]], implicit=implicit)))


TEXT_ELEMENTS = [
    (0x00100010, "PN", "Ştefănescu^Ioana=^Ştefan"),
    (0x00081070, "PN", "Ştefănescu^Ioana\\Ţuţea^Petre"),
    (0x00080080, "LO", "Spitalul Judeţean\\Secţia ATI"),
    (0x00081040, "LO", "Radiologie şi imagistică"),
    (0x00081010, "SH", "CT-Ţ1"),
    (0x00204000, "LT", "Pacientă cu\r\nantecedente\\ "),
    (0x00400280, "ST", "Observaţii"),
]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("charset", [b"ISO_IR 101", b"ISO_IR 192", b"\\ISO 2022 IR 101"])
def test_parity_on_romanian_text(charset: bytes) -> None:
    """The ISO 2022 variant needs escape sequences, so its text goes through decode_bytes."""
    encodings = convert_encodings(charset.decode().split("\\"))
    elements = []
    for tag, vr, text in TEXT_ELEMENTS:
        value = encode_string(text, encodings)
        elements.append((tag, vr, value + b" " * (len(value) % 2)))
    padded = charset + b" " * (len(charset) % 2)
    out = assert_parity(reader(raw_file(elements, charset=padded)))
    assert out["00080080"]["Value"] == ["Spitalul Judeţean", "Secţia ATI"]
    assert out["00081070"]["Value"] == [{"Alphabetic": "Ştefănescu^Ioana"}, {"Alphabetic": "Ţuţea^Petre"}]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("charset", "value"),
    [
        (b"ISO_IR 192", b"Ioana\xff "),  # not UTF-8: pydicom drops the element
        (b"ISO_IR 101", b"\x1b-BIoana\xaa"),  # escape sequence, code extension not declared
        (b"\\ISO 2022 IR 87", b"\x1b$B;3ED\x1b(B^\x1b$BB@O:"),  # Japanese with escapes
        (b"ISO_IR 999", b"Ioana "),  # unknown character set
        (b"ISO_IR 13", b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3"),  # JIS X 0201 katakana
    ],
)
@pytest.mark.parametrize("vr", ["PN", "LO"])
def test_parity_on_awkward_charsets(charset: bytes, value: bytes, vr: str) -> None:
    value += b" " * (len(value) % 2)
    padded = charset + b" " * (len(charset) % 2)
    assert_parity(reader(raw_file([(0x00100010 if vr == "PN" else 0x00100020, vr, value)], charset=padded)))
