"""WADO-RS against the live gateway with dicomweb-client (and httpx for raw headers).

Data goes in through the real ingest pipeline (and, for some, the real SCP); everything comes
back through HTTP and is compared with what was stored: whole instances (as stored and
transcoded), metadata, bulk data, frames byte for byte, rendered images.
"""

from __future__ import annotations

import copy
import io
import time
from pathlib import Path

import httpx
import jwt
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from requests import HTTPError

from gateway.dicomweb import render
from storage.access.context import Context
from storage.retrieve import retrieval as retrieve
from tests.kit import dicom_factory as f
from tests.kit.dicomweb import Gateway, assert_problem, get, instance_url, parts, store


def pixels_equal(a: Dataset, b: Dataset) -> bool:
    return bool(np.array_equal(a.pixel_array, b.pixel_array))


# ----- instances ----------------------------------------------------------------------------


def test_study_series_instance_retrieval_streams_what_was_stored(gateway: Gateway) -> None:
    st, se1, se2 = f.uid(), f.uid(), f.uid()
    cts = [
        store(gateway, f.to_bytes(f.ct_dataset(study_uid=st, series_uid=(se1, se2)[i % 2], instance_number=i + 1)))
        for i in range(4)
    ]
    rle = store(gateway, f.bundled("MR_small_RLE.dcm", study=st, series=se2))
    client = gateway.client()

    got = {str(d.SOPInstanceUID): d for d in client.retrieve_study(st, media_types=(("application/dicom", "*"),))}
    assert len(got) == 5
    for data in [*cts, rle]:
        original = f.read(data)
        back = got[str(original.SOPInstanceUID)]
        assert back == original
        assert back.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID

    series = client.retrieve_series(st, se2)  # default: Explicit VR Little Endian
    assert len(series) == 3
    assert {d.file_meta.TransferSyntaxUID for d in series} == {ExplicitVRLittleEndian}
    transcoded = next(d for d in series if d.SOPInstanceUID == f.read(rle).SOPInstanceUID)
    assert pixels_equal(transcoded, f.read(rle))

    one = client.retrieve_instance(*f.uids_of(cts[0]))
    assert one == f.read(cts[0])

    with httpx.stream("GET", f"{gateway.dicomweb}/studies/{st}", headers=gateway.headers(), timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith('multipart/related; type="application/dicom"; boundary=')
        assert "content-length" not in r.headers and r.headers["transfer-encoding"] == "chunked"
        body = b"".join(r.iter_bytes())
    r2 = httpx.Response(200, headers={"content-type": r.headers["content-type"]}, content=body)
    locations = [h["content-location"] for h, _ in parts(r2)]
    assert locations[0] == instance_url(gateway, cts[0])  # PACS_PUBLIC_URL, with the port the server listens on
    assert all(h["content-type"].startswith("application/dicom; transfer-syntax=") for h, _ in parts(r2))


TRANSCODED = [
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_rle_2frame.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "MR_small_implicit.dcm",
]


def test_compressed_and_legacy_syntaxes_transcode_to_explicit_little_endian(gateway: Gateway) -> None:
    st, se = f.uid(), f.uid()
    stored = {name: store(gateway, f.bundled(name, study=st, series=se)) for name in TRANSCODED}
    client = gateway.client()
    for name, data in stored.items():
        original = f.read(data)
        back = client.retrieve_instance(*f.uids_of(data), media_types=("application/dicom",))  # no transfer-syntax
        assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, name
        assert back.SOPInstanceUID == original.SOPInstanceUID, name
        assert pixels_equal(back, original), name
        as_stored = client.retrieve_instance(*f.uids_of(data))  # dicomweb-client asks for transfer-syntax=*
        assert as_stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, name
        assert as_stored == original, name
    # Implicit VR Little Endian on request (dicomweb-client does not offer it: raw Accept)
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={ImplicitVRLittleEndian}'
    r = get(gateway, instance_url(gateway, stored["JPEG2000.dcm"]), accept)
    [(headers, body)] = parts(r)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={ImplicitVRLittleEndian}"
    implicit = f.read(body)
    assert implicit.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert pixels_equal(implicit, f.read(stored["JPEG2000.dcm"]))


def test_unsatisfiable_accept_is_406(gateway: Gateway) -> None:
    st, se = f.uid(), f.uid()
    lossy12 = store(gateway, f.bundled("JPEG-lossy.dcm", study=st, series=se))  # no installed codec decodes it
    native = store(gateway, f.to_bytes(f.ct_dataset(study_uid=st, series_uid=se)))
    r = get(gateway, instance_url(gateway, lossy12))  # default: Explicit VR LE, needs decoding
    assert_problem(r, 406)
    assert "transfer-syntax=*" in r.json()["detail"]
    assert get(
        gateway, instance_url(gateway, lossy12), 'multipart/related; type="application/dicom"; transfer-syntax=*'
    ).is_success
    # once a study is streaming, a decoder failure cannot become a 406: without a transfer-syntax
    # the instance goes as stored (and says so), with an explicit one the stream is cut short
    r = get(gateway, f"/studies/{st}")
    assert {h["content-type"].split("=")[1] for h, _ in parts(r)} == {ExplicitVRLittleEndian, "1.2.840.10008.1.2.4.51"}
    explicit = f'multipart/related; type="application/dicom"; transfer-syntax={ExplicitVRLittleEndian}'
    with pytest.raises(httpx.RemoteProtocolError):
        get(gateway, f"/studies/{st}", explicit)
    jpeg = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    assert_problem(get(gateway, instance_url(gateway, native), jpeg), 406)  # nothing is re-compressed
    assert_problem(get(gateway, f"/studies/{st}", "application/dicom"), 406)  # a study is multipart only
    assert_problem(get(gateway, f"/studies/{st}", "text/html"), 406)
    assert_problem(get(gateway, f"/studies/{st}/metadata", "application/dicom+xml"), 406)
    assert_problem(get(gateway, instance_url(gateway, native, "/rendered"), "image/jp2"), 406)
    assert_problem(
        get(gateway, instance_url(gateway, native, "/frames/1"), 'multipart/related; type="image/jpeg"'), 406
    )
    with pytest.raises(HTTPError) as exc:
        gateway.client().retrieve_instance_frames(*f.uids_of(native), [1], media_types=("image/jpeg",))
    assert exc.value.response.status_code == 406


def test_bad_and_unknown_resources(gateway: Gateway) -> None:
    st, se = f.uid(), f.uid()
    data = store(gateway, f.to_bytes(f.ct_dataset(study_uid=st, series_uid=se, frames=2)))
    _, _, sop = f.uids_of(data)
    assert_problem(get(gateway, "/studies/1.2.abc"), 400)
    assert_problem(get(gateway, f"/studies/{st}/series/01.2/metadata"), 400)
    assert_problem(get(gateway, f"/studies/{f.uid()}"), 404)
    assert_problem(get(gateway, f"/studies/{f.uid()}/metadata"), 404)
    assert_problem(get(gateway, f"/studies/{st}/series/{f.uid()}"), 404)
    assert_problem(get(gateway, f"/studies/{st}/series/{se}/instances/{f.uid()}/frames/1"), 404)
    for frames in ("0", "x", "1,,2", "3"):
        assert_problem(get(gateway, instance_url(gateway, data, f"/frames/{frames}")), 400)
    assert_problem(get(gateway, instance_url(gateway, data, "/frames/1,2/rendered")), 400)
    assert_problem(get(gateway, instance_url(gateway, data, "/rendered?window=1,0")), 400)
    assert_problem(get(gateway, instance_url(gateway, data, "/rendered?quality=0")), 400)
    assert_problem(get(gateway, instance_url(gateway, data, "/rendered?viewport=10")), 400)
    assert_problem(get(gateway, instance_url(gateway, data, "/bulk/7FE0")), 400)
    assert_problem(get(gateway, instance_url(gateway, data, "/bulk/00091010")), 404)
    assert get(gateway, f"/studies/{st}/series/{se}/instances/{sop}").status_code == 200


# ----- metadata and bulk data ---------------------------------------------------------------


def expected_json(data: bytes, base: str) -> dict[str, object]:
    """pydicom's DICOM JSON of the original, bulk elements (and all Pixel Data) as BulkDataURIs."""
    ds = f.read(data)

    def uri(elem: pydicom.DataElement) -> str:
        return f"{base}/bulk/{elem.tag:08X}"

    out = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=uri)
    if "PixelData" in ds:
        out["7FE00010"] = {"vr": ds["PixelData"].VR, "BulkDataURI": uri(ds["PixelData"])}
    return out


def test_metadata_is_the_stored_json_with_absolute_bulk_data_uris(gateway: Gateway) -> None:
    st, se = f.uid(), f.uid()
    ct = f.ct_dataset(study_uid=st, series_uid=se, rows=32, columns=32)
    ct.add_new(0x60003000, "OW", bytes(range(256)) * 8)  # Overlay Data, 2 KB: bulk data besides Pixel Data
    stored = [
        store(gateway, f.to_bytes(ct)),
        store(gateway, f.bundled("CT_small.dcm", study=st, series=se)),
        store(gateway, f.bundled("MR_small_RLE.dcm", study=st, series=f.uid())),
    ]
    client = gateway.client()
    public = gateway.dicomweb  # PACS_PUBLIC_URL, with the port the server listens on
    metadata = {m["00080018"]["Value"][0]: m for m in client.retrieve_study_metadata(st)}
    assert len(metadata) == 3
    for data in stored:
        _, _, sop = f.uids_of(data)
        base = instance_url(gateway, data).replace(gateway.dicomweb, public)
        assert metadata[sop] == expected_json(data, base)
        assert client.retrieve_instance_metadata(*f.uids_of(data)) == expected_json(data, base)
    assert len(client.retrieve_series_metadata(st, se)) == 2

    # BulkDataURIs resolve through the same gateway
    native, overlay = f.read(stored[0]), metadata[f.uids_of(stored[0])[2]]
    local = overlay["7FE00010"]["BulkDataURI"].replace(public, gateway.dicomweb)
    assert client.retrieve_bulkdata(local) == [native.PixelData]
    local = overlay["60003000"]["BulkDataURI"].replace(public, gateway.dicomweb)
    assert client.retrieve_bulkdata(local, media_types=("application/octet-stream",)) == [native[0x60003000].value]
    rle = f.read(stored[2])
    rle_uri = metadata[f.uids_of(stored[2])[2]]["7FE00010"]["BulkDataURI"].replace(public, gateway.dicomweb)
    assert client.retrieve_bulkdata(rle_uri) == list(generate_frames(rle.PixelData, number_of_frames=1))
    decoded = client.retrieve_bulkdata(rle_uri, media_types=("application/octet-stream",))
    assert decoded == [rle.pixel_array.astype("<u2").tobytes()]


# ----- frames -------------------------------------------------------------------------------


def test_frames_are_byte_equal_to_the_stored_pixel_data(gateway: Gateway) -> None:
    st, se = f.uid(), f.uid()
    multi = store(gateway, f.to_bytes(f.ct_dataset(study_uid=st, series_uid=se, frames=3)))
    rle2 = store(gateway, f.bundled("SC_rgb_rle_2frame.dcm", study=st, series=se))
    j2k = store(gateway, f.bundled("JPEG2000.dcm", study=st, series=se))
    big = store(gateway, f.bundled("MR_small_bigendian.dcm", study=st, series=se))
    deflated = store(gateway, f.bundled("image_dfl.dcm", study=st, series=se))
    implicit = store(gateway, f.bundled("rtdose.dcm", study=st, series=se))
    client = gateway.client()

    ds = f.read(multi)
    length = len(ds.PixelData) // 3
    expect = [ds.PixelData[0:length], ds.PixelData[2 * length : 3 * length]]
    assert (
        client.retrieve_instance_frames(*f.uids_of(multi), [1, 3], media_types=("application/octet-stream",)) == expect
    )
    assert client.retrieve_instance_frames(*f.uids_of(multi), [3, 1]) == expect[::-1]  # */*: as stored

    ds = f.read(rle2)
    frames = list(generate_frames(ds.PixelData, number_of_frames=2))
    assert client.retrieve_instance_frames(*f.uids_of(rle2), [2], media_types=("image/dicom-rle",)) == [frames[1]]
    assert client.retrieve_instance_frames(*f.uids_of(rle2), [1, 2]) == frames
    octets = client.retrieve_instance_frames(*f.uids_of(rle2), [2], media_types=("application/octet-stream",))
    assert octets == [pydicom.pixels.pixel_array(ds, index=1).tobytes()]
    r = get(gateway, instance_url(gateway, rle2, "/frames/1"), 'multipart/related; type="image/x-dicom-rle"')
    assert parts(r)[0][0]["content-type"] == "image/x-dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"

    ds = f.read(j2k)
    [j2k_frame] = client.retrieve_instance_frames(*f.uids_of(j2k), [1], media_types=("image/jp2",))
    assert j2k_frame == next(generate_frames(ds.PixelData, number_of_frames=1))
    assert j2k_frame[:2] == b"\xff\x4f"  # a J2K codestream (SOC marker)

    for data in (big, deflated, implicit):
        ds = f.read(data)
        arr = ds.pixel_array[0] if ds.get("NumberOfFrames", 1) > 1 else ds.pixel_array
        got = client.retrieve_instance_frames(*f.uids_of(data), [1], media_types=("application/octet-stream",))
        assert got == [arr.astype(arr.dtype.newbyteorder("<")).tobytes()]

    r = get(gateway, instance_url(gateway, multi, "/frames/2"), "application/octet-stream")  # single part on request
    assert r.headers["content-type"] == f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
    assert r.content == f.read(multi).PixelData[length : 2 * length]


def test_native_ybr_full_422_frames_are_two_samples_a_pixel(gateway: Gateway) -> None:
    """YBR_FULL_422 keeps 2 bytes a pixel, not 3 (PS3.3 C.7.6.3.1.2): frame 2 starts at 2*rows*columns."""
    ds = pydicom.dcmread(f.BUNDLED["SC_ybr_full_422_uncompressed.dcm"])
    first = ds.PixelData
    second = bytes(255 - b for b in first)
    ds.NumberOfFrames, ds.PixelData = 2, first + second
    data = store(gateway, _copy(ds, f.uid(), f.uid()))
    got = gateway.client().retrieve_instance_frames(*f.uids_of(data), [2, 1], media_types=("application/octet-stream",))
    assert got == [second, first]


# ----- rendered -----------------------------------------------------------------------------


def image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_rendered_images_thumbnails_and_window(gateway: Gateway) -> None:
    st, se = f.uid(), f.uid()
    ct = store(gateway, f.bundled("CT_small.dcm", study=st, series=se))
    color = store(gateway, f.bundled("SC_rgb_jpeg_dcmtk.dcm", study=st, series=f.uid()))
    dose = store(gateway, f.bundled("rtdose.dcm", study=st, series=f.uid()))
    client = gateway.client()

    jpeg = client.retrieve_instance_rendered(*f.uids_of(ct))
    im = image(jpeg)
    assert (im.format, im.size, im.mode) == ("JPEG", (128, 128), "L")
    assert np.asarray(im).std() > 10
    png = image(
        client.retrieve_instance_rendered(*f.uids_of(ct), media_types=("image/png",), params={"viewport": "64,32"})
    )
    assert (png.format, png.size) == ("PNG", (32, 32))

    narrow = np.asarray(image(client.retrieve_instance_rendered(*f.uids_of(ct), params={"window": "40,80,linear"})))
    wide = np.asarray(image(client.retrieve_instance_rendered(*f.uids_of(ct), params={"window": "1000,4000,linear"})))
    sigmoid = np.asarray(image(client.retrieve_instance_rendered(*f.uids_of(ct), params={"window": "40,80,sigmoid"})))
    assert not np.array_equal(narrow, wide) and not np.array_equal(narrow, sigmoid)
    assert narrow.std() > wide.std()
    small = client.retrieve_instance_rendered(*f.uids_of(ct), params={"quality": "5"})
    assert len(small) < len(jpeg)

    rgb = image(client.retrieve_instance_rendered(*f.uids_of(color)))
    assert rgb.mode == "RGB" and np.asarray(rgb).std() > 10

    frame = image(client.retrieve_instance_frames_rendered(*f.uids_of(dose), [2], media_types=("image/png",)))
    ds = f.read(dose)
    assert frame.size == (ds.Columns, ds.Rows)
    assert image(client.retrieve_series_rendered(st, se)).size == (128, 128)

    for path in (
        f"/studies/{st}/thumbnail",
        f"/studies/{st}/series/{se}/thumbnail",
        instance_url(gateway, color, "/thumbnail"),
    ):
        r = get(gateway, path)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert max(image(r.content).size) == 128
    r = get(gateway, instance_url(gateway, ct, "/rendered?accept=image/png"))
    assert r.headers["content-type"] == "image/png"


def test_monochrome1_is_inverted(gateway: Gateway) -> None:
    st, se = f.uid(), f.uid()
    mono2 = f.ct_dataset(study_uid=st, series_uid=se, rows=32, columns=32)
    mono1 = f.ct_dataset(study_uid=st, series_uid=se, rows=32, columns=32)
    mono1.PhotometricInterpretation = "MONOCHROME1"
    a, b = store(gateway, f.to_bytes(mono2)), store(gateway, f.to_bytes(mono1))
    client = gateway.client()
    pa = np.asarray(image(client.retrieve_instance_rendered(*f.uids_of(a), media_types=("image/png",)))).astype(int)
    pb = np.asarray(image(client.retrieve_instance_rendered(*f.uids_of(b), media_types=("image/png",)))).astype(int)
    assert pa.std() > 10
    assert np.array_equal(pa + pb, np.full_like(pa, 255))


# ----- rendering from a frame's own bytes ---------------------------------------------------

RNG = np.random.default_rng(7)
SYSTEM = Context.console()


def _pixels(ds: Dataset, low: int, high: int, dtype: str, frames: int = 1) -> None:
    """Random pixels in [low, high) for `ds`'s geometry (a different picture per frame)."""
    shape = (frames, ds.Rows, ds.Columns) if frames > 1 else (ds.Rows, ds.Columns)
    ds.PixelData = RNG.integers(low, high, size=shape).astype(dtype).tobytes()


def _render_cases() -> dict[str, Dataset]:
    """Native images that between them take every step of the pipeline (PS3.4 N.2).

    300x300 or more, so the grayscale ones go through the lookup table, as a CT slice does.
    """
    cases: dict[str, Dataset] = {}
    ds = f.ct_dataset(rows=300, columns=310, frames=2)  # MONOCHROME2, 12 of 16 bits, rescaled
    _pixels(ds, 0, 4096, "<u2", frames=2)
    cases["monochrome2 multi-frame"] = ds

    ds = f.ct_dataset(rows=300, columns=300)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter, ds.WindowWidth = "1200", "1600"
    _pixels(ds, 0, 4096, "<u2")
    cases["monochrome1 windowed"] = ds

    ds = f.ct_dataset(rows=320, columns=300)  # signed, slope and intercept, no window: min/max
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
    ds.RescaleSlope, ds.RescaleIntercept = "2.5", "-100"
    _pixels(ds, -3000, 3000, "<i2")
    cases["signed rescaled"] = ds

    ds = f.ct_dataset(rows=300, columns=300, frames=3)  # enhanced: functional groups per frame
    del ds.RescaleSlope, ds.RescaleIntercept
    shared, transform = Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = "0.5", "10", "US"
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for n in range(3):
        item, voi = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = str(300 + 400 * n), str(500 + 300 * n)
        item.FrameVOILUTSequence = Sequence([voi])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    _pixels(ds, 0, 4096, "<u2", frames=3)
    cases["functional groups"] = ds

    ds = f.ct_dataset(rows=300, columns=300)  # a Modality LUT that sends the absent odd values far away
    del ds.RescaleSlope, ds.RescaleIntercept
    lut = Dataset()
    lut.LUTDescriptor, lut.ModalityLUTType = [512, 0, 16], "OD"
    lut.add_new(0x00283006, "US", [i if i % 2 == 0 else 60000 for i in range(512)])
    ds.ModalityLUTSequence = Sequence([lut])
    _pixels(ds, 0, 256, "<u2")
    ds.PixelData = (np.frombuffer(ds.PixelData, "<u2") * 2).astype("<u2").tobytes()  # even values only
    cases["modality LUT"] = ds

    for name, planar in (("RGB", 0), ("RGB planar", 1)):
        ds = f.ct_dataset(rows=200, columns=300)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", planar
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.PixelData = RNG.integers(0, 256, size=200 * 300 * 3).astype("u1").tobytes()
        cases[name] = ds

    cases["palette colour"] = pydicom.dcmread(f.BUNDLED["examples_palette.dcm"])
    return cases


def _copy(ds: Dataset, study: str, series: str, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """`ds` as a new instance of `study`/`series` in `transfer_syntax` (RLE: compressed here)."""
    out = copy.deepcopy(ds)
    out.StudyInstanceUID, out.SeriesInstanceUID, out.SOPInstanceUID = study, series, f.uid()
    out.PatientID = "PAT-1"  # one patient per study, whichever file it came from
    if transfer_syntax == RLELossless:
        out.compress(RLELossless, generate_instance_uid=False)
    return f.to_bytes(out, transfer_syntax)


def _decodes_from_frame(gw: Gateway, data: bytes, frame: int) -> bool:
    st, se, sop = f.uids_of(data)
    return retrieve.native_frame(gw.archive, retrieve.instance(gw.archive, SYSTEM, st, se, sop), frame) is not None


def test_rendering_from_the_frame_bytes_equals_rendering_the_whole_object(gateway: Gateway) -> None:
    """A native frame renders from its ranged read and the index's attributes (`native_frame`);
    a deflated or RLE copy of the same instance can only render from the whole object. Both must
    give the same pixels, and those of rendering the original dataset in-process."""
    st, se = f.uid(), f.uid()
    queries = ("", "?window=40,400", "?window=900,1200,sigmoid", "?window=500,1,linear-exact", "?viewport=77,64")
    for name, ds in _render_cases().items():
        native = store(gateway, _copy(ds, st, se))
        copies = [store(gateway, _copy(ds, st, se, DeflatedExplicitVRLittleEndian))]
        # encapsulated too; not "RGB planar": pydicom's RLE encoder reads its pixels as interleaved
        if name in ("monochrome2 multi-frame", "RGB", "signed rescaled"):
            copies.append(store(gateway, _copy(ds, st, se, RLELossless)))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        for frame in sorted({1, frames}):
            assert _decodes_from_frame(gateway, native, frame), name
            assert not any(_decodes_from_frame(gateway, c, frame) for c in copies), name
            for query in queries:
                suffix = f"/frames/{frame}/rendered{query}"
                got = get(gateway, instance_url(gateway, native, suffix), "image/png")
                assert got.status_code == 200, (name, suffix, got.text)
                pixels = np.asarray(image(got.content))
                for other in copies:
                    assert np.array_equal(
                        np.asarray(image(get(gateway, instance_url(gateway, other, suffix), "image/png").content)),
                        pixels,
                    ), (name, suffix)
                params = render.RenderParams(
                    media_type="image/png",
                    window=render.parse_window(query.removeprefix("?window=")) if "window" in query else None,
                    viewport=(77, 64) if "viewport" in query else None,
                )
                expected = np.asarray(image(render.render(f.read(native), frame=frame, params=params)))
                assert np.array_equal(pixels, expected), (name, suffix)
            jpeg = get(gateway, instance_url(gateway, native, f"/frames/{frame}/rendered"), "image/jpeg")
            assert "content-encoding" not in jpeg.headers  # httpx asks for gzip: images go as they are
            assert (
                jpeg.content
                == get(gateway, instance_url(gateway, copies[0], f"/frames/{frame}/rendered"), "image/jpeg").content
            )


def test_the_lookup_table_gives_what_the_pipeline_gives_per_pixel() -> None:
    """A frame too small for the table (computed pixel by pixel) tiled 5x5 (through the table):
    the rendering must be the tile of the small one's, window by window, min/max included."""
    variants: list[Dataset] = []
    for signed, photometric in ((0, "MONOCHROME2"), (1, "MONOCHROME1"), (1, "MONOCHROME2")):
        ds = f.ct_dataset(rows=60, columns=60)
        ds.PixelRepresentation, ds.PhotometricInterpretation = signed, photometric
        _pixels(ds, -2048 if signed else 0, 2048 if signed else 4096, "<i2" if signed else "<u2")
        variants.append(ds)
    ds = f.ct_dataset(rows=30, columns=30)  # 8-bit: a 256-entry table
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    del ds.RescaleSlope, ds.RescaleIntercept
    _pixels(ds, 0, 256, "u1")
    variants.append(ds)
    modality_lut = _render_cases()["modality LUT"]
    modality_lut.Rows = modality_lut.Columns = 60
    modality_lut.PixelData = modality_lut.PixelData[: 60 * 60 * 2]
    variants.append(modality_lut)
    for ds in variants:
        big = copy.deepcopy(ds)
        small_pixels = np.frombuffer(ds.PixelData, ds.pixel_array.dtype).reshape(ds.Rows, ds.Columns)
        big.Rows, big.Columns = ds.Rows * 5, ds.Columns * 5
        big.PixelData = np.tile(small_pixels, (5, 5)).tobytes()
        small, tiled = f.read(f.to_bytes(ds)), f.read(f.to_bytes(big))
        for window in (None, "40,400", "100,1,linear", "0,1000,linear-exact", "40,80,sigmoid"):
            params = render.RenderParams(media_type="image/png", window=render.parse_window(window) if window else None)
            want = np.tile(np.asarray(image(render.render(small, params=params))), (5, 5))
            assert np.array_equal(np.asarray(image(render.render(tiled, params=params))), want), window


def test_a_remembered_token_still_expires_and_goes_with_its_key(gateway: Gateway) -> None:
    """The gateway remembers verified local tokens (`Authenticator`): that must not outlive `exp`
    nor a change of the signing key."""
    data = store(gateway, f.to_bytes(f.ct_dataset(rows=8, columns=8)))
    path = instance_url(gateway, data, "/frames/1")
    short, long = gateway.token(ttl=2), gateway.token(ttl=600)
    for token in (short, short, long, long):  # the second use of each comes from memory
        assert get(gateway, path, Authorization=f"Bearer {token}").status_code == 200
    exp = jwt.decode(short, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, exp - time.time()) + 0.2)
    r = get(gateway, path, Authorization=f"Bearer {short}")
    assert r.status_code == 401 and "expired" in r.headers["www-authenticate"]
    (gateway.settings.data_dir / "jwt-secret").write_text("another-signing-key-" + "k" * 40)
    r = get(gateway, path, Authorization=f"Bearer {long}")
    assert r.status_code == 401 and "signature" in r.headers["www-authenticate"]
    assert get(gateway, path).status_code == 200  # a token of the new key


# ----- byte ranges and the SCP path ---------------------------------------------------------


def test_single_part_instance_with_byte_ranges(gateway: Gateway) -> None:
    st, se = f.uid(), f.uid()
    data = store(gateway, f.to_bytes(f.ct_dataset(study_uid=st, series_uid=se, rows=64, columns=64)))
    rle = store(gateway, f.bundled("MR_small_RLE.dcm", study=st, series=se))
    whole = get(gateway, instance_url(gateway, data), "application/dicom")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["content-length"] == str(len(data))
    assert whole.headers["content-type"] == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
    r = get(gateway, instance_url(gateway, data), "application/dicom", Range="bytes=128-131")
    assert r.status_code == 206 and r.content == b"DICM"
    assert r.headers["content-range"] == f"bytes 128-131/{len(data)}"
    r = get(gateway, instance_url(gateway, data), "application/dicom", Range="bytes=-100")
    assert r.status_code == 206 and r.content == data[-100:]
    r = get(gateway, instance_url(gateway, data), "application/dicom", Range="bytes=5000-")
    assert r.status_code == 206 and r.content == data[5000:]
    r = get(gateway, instance_url(gateway, data), "application/dicom", Range=f"bytes={len(data)}-")
    assert_problem(r, 416)
    assert r.headers["content-range"] == f"bytes */{len(data)}"
    r = get(gateway, instance_url(gateway, rle), "application/dicom", Range="bytes=0-9")  # transcoded: whole object
    assert r.status_code == 200 and f.read(r.content).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_instances_stored_through_the_scp_come_back_over_wado(gateway: Gateway, tmp_path: Path) -> None:
    from pynetdicom import AE, build_context

    from pacs.server import start

    st, se = f.uid(), f.uid()
    sent = [f.read(f.bundled(n, study=st, series=se)) for n in ("JPEG2000.dcm", "MR_small_RLE.dcm", "CT_small.dcm")]
    scp = start(gateway.settings, gateway.archive, port=0)
    try:
        ae = AE(ae_title="CT1")
        ae.requested_contexts = [build_context(d.SOPClassUID, [d.file_meta.TransferSyntaxUID]) for d in sent]
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="MUNIPACS")
        assert assoc.is_established
        for ds in sent:
            assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
    finally:
        scp.shutdown()
    client: DICOMwebClient = gateway.client()
    back = {str(d.SOPInstanceUID): d for d in client.retrieve_series(st, se, media_types=(("application/dicom", "*"),))}
    for ds in sent:
        got = back[str(ds.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert pixels_equal(got, ds)


# ----- negotiation and windowing, without a server --------------------------------------------


def test_accept_negotiation_ranges_and_window_functions() -> None:
    from fastapi import HTTPException

    from gateway.dicomweb import multipart as mp
    from gateway.dicomweb.render import Window, apply_window

    header = (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50; q=0.5, '
        'multipart/related; type="application/dicom"; transfer-syntax=*'
    )
    assert mp.negotiate_dicom(header, single_part=False) == mp.DicomChoice(True, ("*", "1.2.840.10008.1.2.4.50"))
    assert mp.negotiate_dicom(None, single_part=True) == mp.DicomChoice(True, (ExplicitVRLittleEndian,), True)
    assert mp.negotiate_dicom("application/dicom", single_part=True).multipart is False
    with pytest.raises(HTTPException):
        mp.negotiate_dicom("application/dicom;q=0", single_part=True)
    bulk = mp.negotiate_bulk('multipart/related; type="application/octet-stream", multipart/related; type="image/*"')
    assert bulk.select("1.2.840.10008.1.2.4.90", encapsulated=True) == (mp.OCTET, True)  # preference order
    assert mp.negotiate_bulk("image/jls").select("1.2.840.10008.1.2.4.80", encapsulated=True) == ("image/jls", False)
    assert mp.negotiate_bulk("image/jpeg").select(ExplicitVRLittleEndian, encapsulated=False) is None
    assert mp.negotiate_rendered("image/webp, image/*;q=0.8") == "image/jpeg"
    assert mp.negotiate_rendered("image/jpeg", "image/png") == "image/png"

    assert mp.parse_range("bytes=0-9", 100) == (0, 10)
    assert mp.parse_range("bytes=90-200", 100) == (90, 100)
    assert mp.parse_range("bytes=-10", 100) == (90, 100)
    for ignored in (None, "bytes=5-2", "bytes=0-1,5-6", "items=0-1", "bytes=x-"):
        assert mp.parse_range(ignored, 100) is None
    with pytest.raises(HTTPException) as exc:
        mp.parse_range("bytes=100-", 100)
    assert exc.value.status_code == 416

    x = np.array([-1000.0, 0.0, 40.0, 80.0, 1000.0])
    linear = apply_window(x, Window(40, 80))
    assert linear[0] == 0 and linear[-1] == 255 and list(linear) == sorted(linear)
    assert list(apply_window(np.array([9.0, 10.0]), Window(10, 1))) == [0, 255]  # width 1: a threshold
    sigmoid = apply_window(x, Window(40, 80, "sigmoid"))
    assert sigmoid[2] == 128 and 0 < sigmoid[1] < 128 < sigmoid[3] < 255
