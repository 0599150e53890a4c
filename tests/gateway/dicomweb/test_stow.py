"""STOW-RS against the live gateway: dicomweb-client for the happy paths, raw httpx bodies for
everything a client library would not send. After each, the index and the blob store are
checked from outside: bad parts leave nothing, good parts are stored byte for byte."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from requests import HTTPError
from sqlalchemy import select

from gateway.dicomweb.multipart_reader import MultipartError, parse_content_type, read_parts
from storage.index.models import Instance, Series, Study
from tests.kit import dicom_factory as f
from tests.kit.dicomweb import Gateway
from tests.kit.inspect import blob_keys, row_counts

BOUNDARY = "pacs-test-boundary"
CT = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
NOTHING = {"patient_identities": 0, "studies": 0, "series": 0, "instances": 0, "pending_blobs": 0}


def body(*parts: bytes, content_type: str | None = "application/dicom", nl: bytes = b"\r\n") -> bytes:
    out = b""
    for p in parts:
        head = b"Content-Type: " + content_type.encode() + nl if content_type else b""
        out += b"--" + BOUNDARY.encode() + nl + head + nl + p + nl
    return out + b"--" + BOUNDARY.encode() + b"--" + nl


def post(gw: Gateway, content: bytes | Iterator[bytes], *, study: str = "", content_type: str = CT, **headers: str):
    url = f"{gw.dicomweb}/studies" + (f"/{study}" if study else "")
    hdrs = {**gw.headers(), "Content-Type": content_type, **headers}
    return httpx.post(url, content=content, headers=hdrs, timeout=60)


def stored(gw: Gateway, sop_uid: str) -> bytes:
    with gw.archive.db.read() as s:
        key = s.scalars(select(Instance.object_key).where(Instance.sop_uid == sop_uid)).one()
    with gw.archive.blobs.open(key) as blob:
        return blob.read()


def from_file(ds: Dataset) -> Dataset:
    """`ds` as a client holds it after reading a Part-10 file (preamble and file meta included)."""
    return pydicom.dcmread(io.BytesIO(f.to_bytes(ds)))


def seq(response: dict, tag: str) -> list[dict]:
    return response.get(tag, {}).get("Value", [])


def value(item: dict, tag: str) -> object:
    return item[tag]["Value"][0] if tag in item else None


def assert_nothing_stored(gw: Gateway) -> None:
    assert row_counts(gw.archive) == NOTHING
    assert blob_keys(gw.archive) == set()


# ----- dicomweb-client ---------------------------------------------------------------------


def test_client_stores_a_study(gateway: Gateway) -> None:
    study, series = f.uid(), [f.uid(), f.uid()]
    datasets = [from_file(f.ct_dataset(study_uid=study, series_uid=series[i % 2])) for i in range(3)]
    result = gateway.client().store_instances(datasets)
    assert result.RetrieveURL == f"{gateway.dicomweb}/studies/{study}"
    assert "FailedSOPSequence" not in result
    refs = {item.ReferencedSOPInstanceUID: item for item in result.ReferencedSOPSequence}
    assert set(refs) == {ds.SOPInstanceUID for ds in datasets}
    for ds in datasets:
        item = refs[ds.SOPInstanceUID]
        assert item.ReferencedSOPClassUID == ds.SOPClassUID
        assert item.RetrieveURL == (
            f"{gateway.dicomweb}/studies/{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        )
        assert "WarningReason" not in item
        assert stored(gateway, ds.SOPInstanceUID)[128:132] == b"DICM"
    counts = row_counts(gateway.archive)
    assert (counts["studies"], counts["series"], counts["instances"], counts["pending_blobs"]) == (1, 2, 3, 0)
    assert len(blob_keys(gateway.archive)) == 3
    with gateway.archive.db.read() as s:
        row = s.scalars(select(Study)).one()
    assert row.org_id == "hosp-a" and row.num_instances == 3 and row.num_series == 2


def test_client_stores_into_a_named_study_and_refuses_another_study(gateway: Gateway) -> None:
    study = f.uid()
    mine = [from_file(f.ct_dataset(study_uid=study)), from_file(f.ct_dataset(study_uid=study))]
    result = gateway.client().store_instances(mine, study_instance_uid=study)
    assert result.RetrieveURL == f"{gateway.dicomweb}/studies/{study}"
    assert len(result.ReferencedSOPSequence) == 2

    stranger = f.ct_dataset()
    r = post(gateway, body(f.to_bytes(f.ct_dataset(study_uid=study)), f.to_bytes(stranger)), study=study)
    assert r.status_code == 202
    (failed,) = seq(r.json(), "00081198")
    assert value(failed, "00081197") == 0xA900
    assert value(failed, "00081155") == stranger.SOPInstanceUID
    assert value(failed, "00081150") == stranger.SOPClassUID
    assert "study_mismatch" in r.headers["warning"]
    assert len(seq(r.json(), "00081199")) == 1
    assert row_counts(gateway.archive)["instances"] == 3  # the stranger left nothing
    assert len(blob_keys(gateway.archive)) == 3

    with pytest.raises(HTTPError) as err:  # every part of another study: 409
        gateway.client().store_instances([from_file(f.ct_dataset())], study_instance_uid=study)
    assert err.value.response.status_code == 409
    assert row_counts(gateway.archive)["instances"] == 3


def test_an_instance_stored_twice_is_acknowledged_and_kept_once(gateway: Gateway) -> None:
    ds = from_file(f.ct_dataset())
    data = f.to_bytes(ds)
    client = gateway.client()
    first = client.store_instances([ds])
    again = client.store_instances([ds])
    assert "WarningReason" not in first.ReferencedSOPSequence[0]
    (item,) = again.ReferencedSOPSequence
    assert item.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert item.WarningReason == 0xB00E
    assert "FailedSOPSequence" not in again
    r = post(gateway, body(data, data))  # twice in one body
    assert r.status_code == 200 and len(seq(r.json(), "00081199")) == 2
    assert row_counts(gateway.archive)["instances"] == 1
    assert len(blob_keys(gateway.archive)) == 1


# ----- raw bodies --------------------------------------------------------------------------


def test_mixed_good_and_bad_parts_keep_the_good_ones(gateway: Gateway) -> None:
    good = f.ct_dataset()
    good_bytes = f.to_bytes(good)
    truncated = f.truncated()
    bad_uid = f.with_uid("SOPInstanceUID", "1.2.3.abc")
    bad_charset = f.with_charset("ISO_IR 192", b"Pop\xffescu")
    r = post(gateway, body(f.NOT_DICOM, good_bytes, truncated, bad_uid, f.garbage_dataset(), bad_charset))
    assert r.status_code == 202
    assert r.headers["content-type"] == "application/dicom+json"
    response = r.json()
    (ref,) = seq(response, "00081199")
    assert value(ref, "00081155") == good.SOPInstanceUID
    assert value(response, "00081190") == f"{gateway.dicomweb}/studies/{good.StudyInstanceUID}"
    failed = seq(response, "00081198")
    assert [value(i, "00081197") for i in failed] == [0xC000, 0xC000, 0xA900, 0xC000, 0xA900]
    not_dicom, cut, uid, garbage, charset = failed
    assert set(not_dicom) == {"00081197"}  # nothing readable: no UIDs
    assert value(cut, "00081150") == "1.2.840.10008.5.1.4.1.1.2" and value(cut, "00081155")
    assert "00081155" not in uid and value(uid, "00081150") == "1.2.840.10008.5.1.4.1.1.2"
    assert value(charset, "00081155")
    for reason in ("not_dicom", "truncated", "invalid_uid", "bad_charset"):
        assert reason in r.headers["warning"]
    assert stored(gateway, good.SOPInstanceUID) == good_bytes  # byte for byte
    counts = row_counts(gateway.archive)
    assert (counts["instances"], counts["pending_blobs"]) == (1, 0)
    assert len(blob_keys(gateway.archive)) == 1


def test_all_parts_bad_is_409_and_leaves_nothing(gateway: Gateway) -> None:
    r = post(gateway, body(f.NOT_DICOM, f.truncated(), f.with_uid("StudyInstanceUID", "1.02.3")))
    assert r.status_code == 409
    assert "00081199" not in r.json() and len(seq(r.json(), "00081198")) == 3
    assert_nothing_stored(gateway)


SQLITE_ONLY = pytest.mark.parametrize("settings", ["sqlite-fs"], indirect=True)  # refused before storage


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("content_type", "status", "words"),
    [
        ("application/dicom", 415, "multipart/related"),
        ("application/octet-stream", 415, "multipart/related"),
        (f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}', 415, "only application/dicom"),
        (f"multipart/related; type=application/octet-stream; boundary={BOUNDARY}", 415, "only application/dicom"),
        ('multipart/related; type="application/dicom"', 400, "boundary"),
    ],
)
def test_wrong_content_type(gateway: Gateway, content_type: str, status: int, words: str) -> None:
    r = post(gateway, body(f.to_bytes(f.ct_dataset())), content_type=content_type)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/problem+json")
    assert words in r.json()["detail"]
    assert_nothing_stored(gateway)


@SQLITE_ONLY
def test_accept_negotiation(gateway: Gateway) -> None:
    data = body(f.to_bytes(f.ct_dataset()))
    r = post(gateway, data, Accept="application/dicom+xml")
    assert r.status_code == 406 and "application/dicom+json" in r.json()["detail"]
    r = post(gateway, data, Accept="application/dicom+xml, application/dicom+json;q=0")
    assert r.status_code == 406
    assert_nothing_stored(gateway)
    r = post(gateway, data, Accept="application/dicom+xml;q=0.9, application/dicom+json;q=0.5")
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"


@SQLITE_ONLY
def test_bodies_that_hold_no_part_and_unauthenticated_posts(gateway: Gateway) -> None:
    for content in (b"", b"just some bytes", b"--" + BOUNDARY.encode() + b"--\r\n"):
        r = post(gateway, content)
        assert r.status_code == 400, content
        assert r.headers["content-type"].startswith("application/problem+json")
    r = post(gateway, body(f.to_bytes(f.ct_dataset())), study="1.2.abc")
    assert r.status_code == 400 and "Study Instance UID" in r.json()["detail"]
    r = httpx.post(f"{gateway.dicomweb}/studies", content=body(f.NOT_DICOM), headers={"Content-Type": CT})
    assert r.status_code == 401
    assert_nothing_stored(gateway)


def test_multipart_edge_cases(gateway: Gateway) -> None:
    """Preamble, epilogue, bare LF, unquoted boundary, parts without Content-Type, a wrong part type."""
    a, b, c, d = (f.ct_dataset() for _ in range(4))
    raw = [f.to_bytes(x) for x in (a, b, c, d)]
    content = b"This is a preamble.\r\n--" + BOUNDARY.encode() + b"-not-a-delimiter\r\n" + body(raw[0], raw[1])
    r = post(gateway, content + b"This is the epilogue.\r\n")
    assert r.status_code == 200 and len(seq(r.json(), "00081199")) == 2

    r = post(gateway, body(raw[2], content_type=None, nl=b"\n"), content_type=CT.replace('"pacs', "pacs")[:-1])
    assert r.status_code == 200, r.text
    r = post(gateway, body(raw[3], content_type="text/plain"))
    assert r.status_code == 409
    (failed,) = seq(r.json(), "00081198")
    assert value(failed, "00081197") == 0xC000 and value(failed, "00081155") == d.SOPInstanceUID
    assert "text/plain" in r.headers["warning"]
    for x, data in zip((a, b, c), raw, strict=False):
        assert stored(gateway, x.SOPInstanceUID) == data
    assert row_counts(gateway.archive)["instances"] == 3


def test_a_body_cut_short_keeps_the_complete_parts(gateway: Gateway) -> None:
    first, second = f.ct_dataset(), f.ct_dataset()
    whole = body(f.to_bytes(first), f.to_bytes(second))
    r = post(gateway, whole[: len(whole) - 200])  # inside the second part: no closing boundary
    assert r.status_code == 202
    (failed,) = seq(r.json(), "00081198")
    assert value(failed, "00081197") == 0xC000 and "closing boundary" in r.headers["warning"]
    assert value(seq(r.json(), "00081199")[0], "00081155") == first.SOPInstanceUID
    counts = row_counts(gateway.archive)
    assert (counts["instances"], counts["pending_blobs"]) == (1, 0)
    assert len(blob_keys(gateway.archive)) == 1

    third = f.ct_dataset()  # a part whose headers cannot be read: the rest of the body is lost
    broken = body(f.to_bytes(third)) + b"--" + BOUNDARY.encode() + b"\r\nno header here\r\n\r\n" + f.NOT_DICOM
    r = post(gateway, broken.replace(b"--" + BOUNDARY.encode() + b"--\r\n", b""))
    assert r.status_code == 202 and "malformed part header" in r.headers["warning"]
    assert [value(i, "00081197") for i in seq(r.json(), "00081198")] == [0xC000]
    assert row_counts(gateway.archive)["instances"] == 2


def test_a_large_streamed_body_spills_parts_to_disk(gateway: Gateway) -> None:
    """Chunked transfer, parts over the 8 MiB memory limit, each stored as sent."""
    big = [f.ct_dataset(rows=1024, columns=1024, frames=5) for _ in range(2)]  # 10 MiB each
    raw = [f.to_bytes(ds) for ds in big]
    content = body(*raw, f.to_bytes(f.ct_dataset()))

    def chunks() -> Iterator[bytes]:
        rng = random.Random(7)
        pos = 0
        while pos < len(content):
            n = rng.randrange(1, 300_000)
            yield content[pos : pos + n]
            pos += n

    r = post(gateway, chunks())
    assert r.status_code == 200, r.text
    assert len(seq(r.json(), "00081199")) == 3
    for ds, data in zip(big, raw, strict=True):
        assert stored(gateway, ds.SOPInstanceUID) == data
    with gateway.archive.db.read() as s:
        assert s.scalar(select(Series.num_instances).limit(1)) == 1


# ----- the reader on its own ---------------------------------------------------------------


def _split(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 30))))
    return [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_reader_survives_any_chunking() -> None:
    rng = random.Random(42)
    parts = [rng.randbytes(rng.randrange(0, 3000)) for _ in range(4)]
    parts += [b"", b"\r\n--" + BOUNDARY.encode() + b"x looks like a delimiter\r\n", b"ends with CR\r"]
    for trial in range(200):
        content = rng.choice([b"", b"preamble\r\n"]) + body(*parts) + rng.choice([b"", b"epilogue"])
        got = []
        for part in read_parts(_split(content, rng), BOUNDARY, memory_limit=rng.choice([16, 1024, 1 << 20])):
            assert part.complete and part.media_type == "application/dicom"
            got.append(part.data if part.data is not None else part.path.read_bytes())  # type: ignore[union-attr]
        assert got == parts, trial


def test_reader_removes_spilled_parts_and_reports_structure_errors(tmp_path) -> None:
    content = body(b"x" * 5000, b"y" * 5000)
    paths = [p.path for p in read_parts([content], BOUNDARY, memory_limit=100, spool_dir=tmp_path)]
    assert all(p is not None for p in paths) and list(tmp_path.iterdir()) == []
    with pytest.raises(MultipartError, match="never appears"):
        list(read_parts([b"no delimiter here"], BOUNDARY))
    with pytest.raises(MultipartError, match="malformed part header"):
        list(read_parts([b"--" + BOUNDARY.encode() + b"\r\nno colon\r\n\r\nx\r\n"], BOUNDARY))
    with pytest.raises(MultipartError, match="longer than"):
        list(read_parts([b"--" + BOUNDARY.encode() + b"\r\nX: " + b"a" * 20000], BOUNDARY))
    folded = b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom;\r\n\ttransfer-syntax=1.2\r\n\r\nz\r\n"
    (part,) = read_parts([folded], BOUNDARY)  # no closing delimiter at all: incomplete
    assert part.headers["content-type"] == "application/dicom; transfer-syntax=1.2" and not part.complete


def test_content_type_parameters() -> None:
    ct = parse_content_type('Multipart/Related; TYPE="application/dicom"; boundary="a:b c"; start="<x>"')
    assert ct.media_type == "multipart/related"
    assert ct.params == {"type": "application/dicom", "boundary": "a:b c", "start": "<x>"}
    assert parse_content_type('multipart/related;boundary="a\\"b";type=x').params == {"boundary": 'a"b', "type": "x"}
    assert parse_content_type("garbage").media_type == ""
