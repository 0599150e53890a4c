"""`pacs.wire.file_meta` packs the head of a received file as pynetdicom's path writes it with pydicom."""

from __future__ import annotations

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.dsutils import create_file_meta

from pacs.wire.file_meta import part10_head

CT = "1.2.840.10008.5.1.4.1.1.2"
UIDS_64 = "1.2.826.0.1.3680043.8.498." + "1" * 38


def pydicom_head(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    meta = create_file_meta(
        sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_instance), transfer_syntax=UID(transfer_syntax)
    )
    write_file_meta_info(out, meta)
    return out.getvalue()


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "transfer_syntax"),
    [
        (CT, "1.2.3.4", ExplicitVRLittleEndian),  # even instance UID, odd class UID
        (CT, "1.2.3.45", ExplicitVRLittleEndian),  # odd instance UID
        ("1.2.840.10008.5.1.4.1.1.4", "1", ExplicitVRBigEndian),  # one character
        (CT, UIDS_64, JPEG2000Lossless),  # the longest a UID may be
    ],
)
def test_same_bytes_as_pydicom(sop_class: str, sop_instance: str, transfer_syntax: str) -> None:
    assert len(UIDS_64) == 64
    ours = part10_head(sop_class, sop_instance, transfer_syntax)
    assert ours == pydicom_head(sop_class, sop_instance, transfer_syntax)
