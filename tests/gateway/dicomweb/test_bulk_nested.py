"""Bulk data inside a sequence (an icon image's Pixel Data): its BulkDataURI carries the item path.

Without the path, the metadata of an instance with an icon would point both its own and the
icon's Pixel Data at `.../bulk/7FE00010`, and a viewer asking for the icon would get the image.
"""

from __future__ import annotations

import pydicom
from pydicom.dataset import Dataset

from tests.kit import dicom_factory as f
from tests.kit.dicomweb import Gateway, instance_url, store

ICON = bytes(range(256)) * 16  # 64 x 64 x 8 bits, above the 1 KB bulk threshold


def _with_icon() -> bytes:
    ds = f.ct_dataset(study_uid=f.uid(), series_uid=f.uid(), rows=32, columns=32)
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated, icon.BitsStored, icon.HighBit = 64, 64, 8, 8, 7
    icon.SamplesPerPixel, icon.PhotometricInterpretation, icon.PixelRepresentation = 1, "MONOCHROME2", 0
    icon.PixelData = ICON
    icon["PixelData"].VR = "OB"
    ds.IconImageSequence = pydicom.Sequence([icon])
    return f.to_bytes(ds)


def test_nested_bulk_data_uri_names_the_item_and_resolves(gateway: Gateway) -> None:
    data = store(gateway, _with_icon())
    client = gateway.client()
    meta = client.retrieve_instance_metadata(*f.uids_of(data))
    base = instance_url(gateway, data)
    nested = meta["00880200"]["Value"][0]["7FE00010"]
    assert nested["BulkDataURI"] == f"{base}/bulk/00880200/1/7FE00010"
    assert meta["7FE00010"]["BulkDataURI"] == f"{base}/bulk/7FE00010"
    assert client.retrieve_bulkdata(nested["BulkDataURI"]) == [ICON]
    assert client.retrieve_bulkdata(meta["7FE00010"]["BulkDataURI"]) == [f.read(data).PixelData]
