"""What the archive relies on from an S3 server, against the test suite's real one (Ceph RGW), so
that a site's choice (versitygw, SeaweedFS, Ceph RGW, a cloud's) can be checked by running this
file against it (`S3_ENDPOINT`, `S3_ACCESS_KEY`, `S3_SECRET_KEY`, as `.ci/run` sets them):

* a single PUT and a multipart upload (an object over `PART_SIZE`) that read back byte for byte;
* user metadata (`x-amz-meta-pacs-*`: the provenance `pacs reindex` reads) kept and listed back;
* ranged GETs (WADO-RS frames read from inside an object) at the start, inside and at the end;
* listing past one page (1,000 keys: continuation tokens), under the store's key prefix only;
* DELETE, and a missing key answered as missing (NoSuchKey), not as an error;
* bucket creation at first start when it is missing, and no error when it exists.

The archive uses plain S3 calls only (no vendor admin API) and no conditional PUT: its keys are
made by the server (UUIDs), so two writers never race for one key.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from storage.blobs.s3 import PART_SIZE, S3BlobStore

pytestmark = pytest.mark.s3


@pytest.fixture()
def store(s3_settings: dict[str, str]) -> Iterator[S3BlobStore]:
    """A store on a bucket of its own, under a key prefix (as `s3://bucket/prefix` makes one)."""
    bucket = f"pacs-conf-{uuid.uuid4().hex[:10]}"
    made = S3BlobStore(
        bucket=bucket,
        prefix="site-a",
        endpoint=s3_settings["S3_ENDPOINT"],
        region="us-east-1",
        access_key=s3_settings["S3_ACCESS_KEY"],
        secret_key=s3_settings["S3_SECRET_KEY"],
    )
    yield made
    for key in list(made.keys()):
        made.delete(key)
    made.client.remove_bucket(bucket)


def test_single_and_multipart_uploads_read_back_byte_for_byte_with_their_metadata(store: S3BlobStore) -> None:
    small = os.urandom(200_000)
    large = os.urandom(2 * PART_SIZE + 12_345)  # three parts
    meta = {"org": "hosp-a", "sender": "CT1", "channel": "dimse", "received": "2026-12-07T10:00:00+00:00"}
    store.put("aa/bb/small.dcm", io.BytesIO(small), len(small), meta)
    store.put("aa/bb/large.dcm", io.BytesIO(large), len(large), meta)
    with store.open("aa/bb/small.dcm") as body:
        assert body.read() == small
    assert b"".join(store.iter_chunks("aa/bb/large.dcm")) == large
    assert store.meta("aa/bb/small.dcm") == meta == store.meta("aa/bb/large.dcm")


def test_ranged_gets_at_the_start_inside_and_at_the_end(store: S3BlobStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    store.put("cc/dd/frames.dcm", io.BytesIO(data), len(data))
    for start, length in ((0, 132), (1_048_576, 524_288), (len(data) - 1, 1), (len(data) - 4096, 4096)):
        assert store.read_range("cc/dd/frames.dcm", start, length) == data[start : start + length]


def test_listing_goes_past_one_page_and_stays_under_the_prefix(store: S3BlobStore) -> None:
    outside = f"{uuid.uuid4().hex}.dcm"  # a key of the same bucket outside the store's prefix
    store.client.put_object(store.bucket, outside, io.BytesIO(b"x"), 1)
    keys = [f"{i % 7:02x}/{i:04d}.dcm" for i in range(1_005)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, io.BytesIO(b"."), 1), keys))
    assert sorted(store.keys()) == sorted(keys)
    store.client.remove_object(store.bucket, outside)


def test_a_missing_key_is_missing_and_a_deleted_one_is_gone(store: S3BlobStore) -> None:
    assert not store.exists("ee/ff/never.dcm")
    store.put("ee/ff/once.dcm", io.BytesIO(b"once"), 4)
    assert store.exists("ee/ff/once.dcm")
    store.delete("ee/ff/once.dcm")
    assert not store.exists("ee/ff/once.dcm")
    store.delete("ee/ff/once.dcm")  # deleting what is gone is no error (recovery may repeat it)


def test_the_bucket_is_made_at_first_start_and_found_at_the_next(
    store: S3BlobStore, s3_settings: dict[str, str]
) -> None:
    assert store.client.bucket_exists(store.bucket)  # made by the fixture's store, at its start
    again = S3BlobStore(  # a second process starting on the same bucket: no error, same objects
        bucket=store.bucket,
        prefix="site-a",
        endpoint=s3_settings["S3_ENDPOINT"],
        region="us-east-1",
        access_key=s3_settings["S3_ACCESS_KEY"],
        secret_key=s3_settings["S3_SECRET_KEY"],
    )
    again.check()
