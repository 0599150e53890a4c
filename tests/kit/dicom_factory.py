"""Synthetic DICOM objects for tests: valid CT slices, charsets, and every kind of bad input.

Generated with pydicom, never downloaded (STYLE.md rule 21).
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

_counter = itertools.count(1)
UID_ROOT = "1.2.826.0.1.3680043.10.1234."


def uid() -> str:
    return generate_uid(prefix=UID_ROOT)


def ct_dataset(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "PAT-1",
    patient_name: str = "Popescu^Ion",
    charset: str | list[str] | None = None,
    issuer: str | None = None,
    rows: int = 16,
    columns: int = 16,
    frames: int = 1,
    modality: str = "CT",
    instance_number: int | None = None,
) -> Dataset:
    """A small but complete CT image (Explicit VR Little Endian unless saved otherwise)."""
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid or uid()
    ds.StudyInstanceUID = study_uid or uid()
    ds.SeriesInstanceUID = series_uid or uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "M"
    ds.StudyDate = "20261120"
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{next(_counter)}"
    ds.StudyID = "1"
    ds.StudyDescription = "CT torace"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number if instance_number is not None else next(_counter)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = "1.25"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    pixels = (np.arange(rows * columns * frames, dtype=np.uint16) % 4096).reshape(frames, rows, columns)
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def to_bytes(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """Encode `ds` as a Part-10 file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=transfer_syntax == ImplicitVRLittleEndian, little_endian=True)
    return buf.getvalue()


def write(path: Path, ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_bytes(ds, transfer_syntax))
    return path


def study_files(
    folder: Path,
    *,
    n: int,
    patient_id: str = "PAT-1",
    patient_name: str = "Popescu^Ion",
    rows: int = 64,
    columns: int = 64,
) -> list[Path]:
    """`n` instances of one study (two series) written under `folder`."""
    study, series = uid(), [uid(), uid()]
    return [
        write(
            folder / f"IM{i:05d}.dcm",
            ct_dataset(
                study_uid=study,
                series_uid=series[i % 2],
                patient_id=patient_id,
                patient_name=patient_name,
                rows=rows,
                columns=columns,
                instance_number=i + 1,
            ),
        )
        for i in range(n)
    ]


def bundled_pydicom_files(folder: str = "test_files") -> list[Path]:
    """pydicom's test data shipped in the wheel (never its download-on-demand extras)."""
    import pydicom.data

    root = Path(pydicom.data.__file__).parent / folder
    return sorted(p for p in root.rglob("*") if p.is_file())


# ----- bad input -------------------------------------------------------------------------

NOT_DICOM = b"%PDF-1.7\n" + b"\x00" * 300


def without(keyword: str) -> bytes:
    ds = ct_dataset()
    sop = ds.SOPInstanceUID
    data = to_bytes(ds)
    ds2 = ct_dataset(sop_uid=sop)
    delattr(ds2, keyword)
    ds2.file_meta = ds.file_meta
    buf = io.BytesIO()
    ds2.save_as(buf, enforce_file_format=True)
    del data
    return buf.getvalue()


def with_uid(keyword: str, value: str) -> bytes:
    ds = ct_dataset()
    setattr(ds, keyword, value)
    if keyword == "SOPInstanceUID":
        meta_uid = value
    else:
        meta_uid = ds.SOPInstanceUID
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = meta_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def garbage_dataset() -> bytes:
    """Valid File Meta Information followed by bytes that are no data set at all."""
    data = to_bytes(ct_dataset())
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")  # preamble, DICM, group length element
    return data[:meta_end] + bytes(range(256)) * 8


def truncated(cut: int = 100) -> bytes:
    """A valid object with its last `cut` bytes (inside Pixel Data) missing."""
    return to_bytes(ct_dataset())[:-cut]


def cut_in_sequence() -> bytes:
    """A CT slice that ends inside its undefined-length Procedure Code Sequence, after an item's
    header (pydicom raises OSError there, "No tag to read", where a cut element raises EOFError)."""
    ds = ct_dataset()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "ZDA2", "99MUNI", "CT torace nativ"
    ds.ProcedureCodeSequence = [code]
    ds["ProcedureCodeSequence"].is_undefined_length = True
    data = to_bytes(ds)
    at = data.index(b"\x08\x00\x32\x10SQ", 132)  # (0008,1032) SQ: a 12-byte header, then the item's 8
    return data[: at + 12 + 8]


def with_charset(charset: str, name_bytes: bytes) -> bytes:
    """An object whose PatientName holds raw `name_bytes` under (0008,0005) = `charset`."""
    ds = ct_dataset(charset=charset, patient_name="PLACEHOLDER^NAME")
    data = to_bytes(ds)
    placeholder = b"PLACEHOLDER^NAME"
    if len(name_bytes) % 2:
        name_bytes += b" "
    # rewrite the PN element in place: tag (0010,0010) VR PN, 2-byte length
    header = b"\x10\x00\x10\x00PN" + len(placeholder).to_bytes(2, "little")
    new_header = b"\x10\x00\x10\x00PN" + len(name_bytes).to_bytes(2, "little")
    assert header + placeholder in data
    return data.replace(header + placeholder, new_header + name_bytes)


def undecodable(study_uid: str, series_uid: str) -> Dataset:
    """A CT slice stored as MPEG-2: no decoder here, so it can only go to a peer that takes MPEG-2."""
    ds = ct_dataset(study_uid=study_uid, series_uid=series_uid, rows=16, columns=16)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    return ds


BUNDLED = {p.name: p for p in bundled_pydicom_files()}


def bundled(name: str, *, study: str, series: str, patient_id: str = "PAT-1") -> bytes:
    """A bundled pydicom file under new UIDs (several of them share one SOP Instance UID), of
    `patient_id` (`ct_dataset`'s by default: a study holds one patient's instances only)."""
    ds = pydicom.dcmread(BUNDLED[name])
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, uid()
    ds.PatientID = patient_id
    if "IssuerOfPatientID" in ds:
        del ds.IssuerOfPatientID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def read(data: bytes) -> Dataset:
    """Part-10 bytes as a data set."""
    return pydicom.dcmread(io.BytesIO(data))


def uids_of(data: bytes) -> tuple[str, str, str]:
    """(Study, Series, SOP Instance UID) of Part-10 bytes."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def nested(depth: int) -> bytes:
    """A valid CT slice carrying a Content Sequence nested `depth` levels deep (undefined
    lengths, explicit VR little endian), written by hand: pydicom cannot encode 1,000 levels."""
    data = to_bytes(ct_dataset())
    sequence, item = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff", b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    item_end, sequence_end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00", b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    nest = (sequence + item) * depth + (item_end + sequence_end) * depth
    pixel_data = data.index(b"\xe0\x7f\x10\x00OW")  # (0040,A730) sorts before (7FE0,0010)
    return data[:pixel_data] + nest + data[pixel_data:]


def flipped_vr(keyword: str, vr: bytes = b"ZZ") -> bytes:
    """A valid CT slice whose `keyword` element has its VR bytes replaced by an unknown `vr`."""
    ds = ct_dataset()
    elem = ds[keyword]
    tag = elem.tag.group.to_bytes(2, "little") + elem.tag.element.to_bytes(2, "little")
    data = to_bytes(ds)
    at = data.index(tag + elem.VR.encode(), 132)
    return data[: at + 4] + vr + data[at + 6 :]


def pixel_data_of_length(length: int, *, rows: int = 64, columns: int = 64) -> bytes:
    """A 16-bit CT slice of `rows` x `columns` whose native Pixel Data is `length` bytes."""
    ds = ct_dataset(rows=rows, columns=columns)
    ds.PixelData = bytes(length + length % 2)
    return to_bytes(ds)
