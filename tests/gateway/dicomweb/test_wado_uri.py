"""WADO-URI (`/wado`) against the live gateway: both content types, parameters and errors."""

from __future__ import annotations

import io

import httpx
import numpy as np
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian

from tests.kit import dicom_factory as f
from tests.kit.dicomweb import Gateway, assert_problem, store


def wado(
    gw: Gateway, data: bytes | None = None, *, headers: dict[str, str] | None = None, **params: str
) -> httpx.Response:
    query: dict[str, str] = {"requestType": "WADO"}
    if data is not None:
        study, series, sop = f.uids_of(data)
        query |= {"studyUID": study, "seriesUID": series, "objectUID": sop}
    query |= params
    return httpx.get(f"{gw.url}/wado", params=query, headers=gw.headers() | (headers or {}), timeout=30)


def test_application_dicom_as_stored_transcoded_and_ranged(gateway: Gateway) -> None:
    st, se = f.uid(), f.uid()
    native = store(gateway, f.to_bytes(f.ct_dataset(study_uid=st, series_uid=se, rows=32, columns=32)))
    j2k = store(gateway, f.bundled("JPEG2000.dcm", study=st, series=se))

    r = wado(gateway, native, contentType="application/dicom")
    assert r.status_code == 200 and r.content == native
    assert r.headers["content-type"] == "application/dicom"  # no transfer-syntax parameter in URI answers
    assert r.headers["content-disposition"] == f'attachment; filename="{f.uids_of(native)[2]}.dcm"'
    r = wado(gateway, native, headers={"Range": "bytes=128-131"}, contentType="application/dicom")
    assert r.status_code == 206 and r.content == b"DICM"

    r = wado(gateway, j2k, contentType="application/dicom")  # default: Explicit VR Little Endian
    assert f.read(r.content).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(f.read(r.content).pixel_array, f.read(j2k).pixel_array)
    r = wado(gateway, j2k, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.4.91")
    assert r.content == j2k
    assert_problem(wado(gateway, native, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.4.50"), 406)
    assert_problem(wado(gateway, native, contentType="application/dicom", transferSyntax="not-a-uid"), 400)
    assert_problem(wado(gateway, native, contentType="application/dicom", rows="64"), 400)


def test_rendered_jpeg_png_and_parameters(gateway: Gateway) -> None:
    st, se = f.uid(), f.uid()
    ct = store(gateway, f.bundled("CT_small.dcm", study=st, series=se))
    dose = store(gateway, f.bundled("rtdose.dcm", study=st, series=se))

    r = wado(gateway, ct)  # single-frame image: image/jpeg by default
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    im = Image.open(io.BytesIO(r.content))
    assert (im.format, im.size) == ("JPEG", (128, 128)) and np.asarray(im).std() > 10

    png = wado(gateway, ct, contentType="image/png", rows="64")
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)
    cropped = wado(gateway, ct, contentType="image/png", region="0,0,0.5,0.25")
    assert Image.open(io.BytesIO(cropped.content)).size == (64, 32)
    narrow = wado(gateway, ct, contentType="image/png", windowCenter="40", windowWidth="80")
    wide = wado(gateway, ct, contentType="image/png", windowCenter="1000", windowWidth="4000")
    assert narrow.content != wide.content
    assert len(wado(gateway, ct, imageQuality="5").content) < len(r.content)

    assert wado(gateway, dose).headers["content-type"] == "application/dicom"  # multi-frame: the object
    frame = wado(gateway, dose, frameNumber="3")
    ds = f.read(dose)
    assert frame.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(frame.content)).size == (ds.Columns, ds.Rows)
    assert_problem(wado(gateway, dose, frameNumber="99"), 400)


def test_missing_and_invalid_parameters(gateway: Gateway) -> None:
    st, se = f.uid(), f.uid()
    ct = store(gateway, f.to_bytes(f.ct_dataset(study_uid=st, series_uid=se)))
    study, series, sop = f.uids_of(ct)
    assert_problem(wado(gateway, ct, requestType="WADO-RS"), 400)
    assert_problem(wado(gateway, None, studyUID=study, seriesUID=series), 400)
    assert_problem(wado(gateway, None, studyUID=study, seriesUID=series, objectUID="1.2.x"), 400)
    assert_problem(wado(gateway, None, studyUID=study, seriesUID=series, objectUID=f.uid()), 404)
    assert_problem(wado(gateway, ct, windowCenter="40"), 400)
    assert_problem(wado(gateway, ct, rows="0"), 400)
    assert_problem(wado(gateway, ct, region="0.5,0,0.2,1"), 400)
    assert_problem(wado(gateway, ct, transferSyntax=ExplicitVRLittleEndian), 400)
    assert_problem(wado(gateway, ct, anonymize="yes"), 400)
    assert_problem(wado(gateway, ct, contentType="text/html"), 406)
    assert wado(gateway, ct, contentType="image/gif").headers["content-type"] == "image/gif"
