"""What a broken or hostile client sends the gateway: refused with a precise answer, nothing kept.

Each case here was a probe of the running server (issue [5/10]) that answered 500, stored a
2 GiB part, or made one request answer the same frame 20,000 times; the memory these cost is
measured on a `pacs serve` process in `tests/e2e/test_memory_bounds.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.kit import dicom_factory as f
from tests.kit.backends import BACKENDS, make_settings, migrated_archive
from tests.kit.dicomweb import Gateway, assert_problem, get, instance_url, parts, serve_gateway, store
from tests.kit.inspect import blob_keys, row_counts, temporary_files

BOUNDARY = "hostile-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def body(*parts: bytes) -> bytes:
    out = b"".join(b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (BOUNDARY.encode(), p) for p in parts)
    return out + b"--%s--\r\n" % BOUNDARY.encode()


def stow(gw: Gateway, content: bytes) -> httpx.Response:
    headers = gw.headers() | {"Content-Type": MULTIPART}
    return httpx.post(f"{gw.dicomweb}/studies", content=content, headers=headers, timeout=60)


def failure_reasons(r: httpx.Response) -> list[int]:
    return [item["00081197"]["Value"][0] for item in r.json().get("00081198", {}).get("Value", [])]


HOSTILE_PARTS = [
    ("nested-40-levels", lambda: f.nested(40), 0xA900, "nested deeper than 32"),
    ("nested-1000-levels", lambda: f.nested(1000), 0xA900, "nested deeper than 32"),
    ("unknown-vr-study-date", lambda: f.flipped_vr("StudyDate"), 0xC000, "Unknown Value Representation"),
    ("unknown-vr-modality", lambda: f.flipped_vr("Modality"), 0xC000, "Unknown Value Representation"),
    ("pixel-data-too-long", lambda: f.pixel_data_of_length(64 * 64 * 2 + 1024 * 1024), 0xA900, "Pixel Data holds"),
    ("pixel-data-too-short", lambda: f.pixel_data_of_length(100), 0xA900, "Pixel Data holds"),
]


@pytest.mark.parametrize(("case", "make", "status", "words"), HOSTILE_PARTS, ids=[c[0] for c in HOSTILE_PARTS])
def test_a_hostile_part_fails_with_its_reason(gateway: Gateway, case: str, make, status: int, words: str) -> None:
    """Before: 500 (RecursionError, NotImplementedError) or a 2 GiB image stored. Now the part is
    a FailedSOPSequence item with its FailureReason, the Warning header says why, a good part
    in the same request is stored, and nothing of the bad one is left, not even a temp file."""
    good = f.to_bytes(f.ct_dataset())
    r = stow(gateway, body(make(), good))
    assert r.status_code == 202, r.text
    assert failure_reasons(r) == [status]
    assert words in r.headers["warning"] and "/" not in r.headers["warning"].split(" ", 2)[-1]
    assert row_counts(gateway.archive)["instances"] == 1 and len(blob_keys(gateway.archive)) == 1
    assert temporary_files(gateway.archive) == []


LIMIT = 256 * 1024


@pytest.fixture(params=BACKENDS)
def small_gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    """The gateway of an archive that takes STOW-RS parts of at most 256 KiB."""
    settings = make_settings(request, tmp_path, request.param, http_max_object_size=LIMIT)
    with migrated_archive(settings) as archive:
        yield from serve_gateway(settings, archive)


def test_a_part_over_the_size_limit_is_413_and_the_parts_before_it_are_kept(small_gateway: Gateway) -> None:
    """Before: any token holder stored a 64x64 CT with 2 GiB of Pixel Data. The reader stops at
    the part's limit (PACS_HTTP_MAX_OBJECT_SIZE) without reading the rest of it."""
    first = f.ct_dataset()
    big = f.to_bytes(f.ct_dataset(rows=512, columns=512))  # 512 KiB of pixels
    r = stow(small_gateway, body(f.to_bytes(first), big, f.to_bytes(f.ct_dataset())))
    assert_problem(r, 413)
    assert "part 2" in r.json()["detail"] and "PACS_HTTP_MAX_OBJECT_SIZE" in r.json()["detail"]
    assert "the 1 instance(s) before it were stored" in r.json()["detail"]
    assert row_counts(small_gateway.archive)["instances"] == 1
    assert temporary_files(small_gateway.archive) == []
    alone = stow(small_gateway, body(big))
    assert_problem(alone, 413)
    assert row_counts(small_gateway.archive)["instances"] == 1 and temporary_files(small_gateway.archive) == []


def test_the_size_limit_is_described_in_openapi(gateway: Gateway) -> None:
    spec = httpx.get(f"{gateway.url}/openapi.json", headers=gateway.headers()).json()
    assert "413" in spec["paths"]["/dicomweb/studies"]["post"]["responses"]


# ----- frames -------------------------------------------------------------------------------


@pytest.fixture()
def cine(gateway: Gateway) -> bytes:
    """A 12-frame instance."""
    return store(gateway, f.to_bytes(f.ct_dataset(rows=32, columns=32, frames=12)))


def test_a_frame_list_names_each_frame_once(gateway: Gateway, cine: bytes) -> None:
    """Before: /frames/1,1,1,... with 20,000 entries answered 658 MB from one 40 KB URL."""
    r = get(gateway, instance_url(gateway, cine, "/frames/" + ",".join(["1"] * 2000)))
    assert_problem(r, 400)
    assert "frame 1 is asked for more than once" in r.json()["detail"]
    assert_problem(get(gateway, instance_url(gateway, cine, "/frames/3,5,3")), 400)


def test_a_frame_list_has_at_most_ten_thousand_frames(gateway: Gateway, cine: bytes) -> None:
    numbers = ",".join(str(n) for n in range(1, 10_002))
    r = get(gateway, instance_url(gateway, cine, f"/frames/{numbers}"))
    assert_problem(r, 400)
    assert "at most 10000 frames" in r.json()["detail"]


def test_frames_are_streamed_each_once_in_the_order_asked(gateway: Gateway, cine: bytes) -> None:
    r = get(gateway, instance_url(gateway, cine, "/frames/12,1,5"), "multipart/related; type=application/octet-stream")
    assert r.status_code == 200
    assert "content-length" not in r.headers  # streamed, not built in memory first
    ds = f.read(cine)
    frame = 32 * 32 * 2
    bodies = [part for _, part in parts(r)]
    assert bodies == [ds.PixelData[(n - 1) * frame : n * frame] for n in (12, 1, 5)]


# ----- path parameters and methods ----------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/studies/" + "1" * 65,  # a UID is at most 64 characters
        "/studies/1.2.03",  # no leading zero in a component
        "/studies/1.2.3/series/1..2",
        "/studies/1.2.3/series/1.2/instances/1.2.x/metadata",
    ],
)
def test_a_bad_uid_in_the_path_is_400_naming_it(gateway: Gateway, path: str) -> None:
    r = get(gateway, path)
    assert_problem(r, 400)
    assert "is not a valid" in r.json()["detail"] and "Instance UID" in r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/dicomweb/studies", {"GET", "POST", "OPTIONS"}),
        ("/dicomweb/studies/1.2.3", {"GET", "POST", "DELETE", "OPTIONS"}),
        ("/api/worklist/1", {"GET", "PATCH", "DELETE", "OPTIONS"}),
    ],
)
def test_options_and_405_say_what_the_path_allows(gateway: Gateway, path: str, allowed: set[str]) -> None:
    """Before: OPTIONS answered 405 without Allow (RFC 9110 10.2.1 wants it on every 405)."""
    options = httpx.options(gateway.url + path, timeout=10)
    assert options.status_code == 204
    assert set(options.headers["allow"].split(", ")) >= allowed
    put = httpx.put(gateway.url + path, headers=gateway.headers(), timeout=10)
    assert_problem(put, 405)
    assert set(put.headers["allow"].split(", ")) == set(options.headers["allow"].split(", "))


def test_refused_requests_leave_nothing(gateway: Gateway) -> None:
    """The refusals above write nothing: no row, no blob, no temporary file."""
    for path in ("/studies/1.2.03", "/studies/" + "9" * 70):
        get(gateway, path)
    assert row_counts(gateway.archive)["instances"] == 0
    assert blob_keys(gateway.archive) == set() and temporary_files(gateway.archive) == []
