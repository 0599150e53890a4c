"""S3 blob store (MinIO, Ceph RGW, AWS) through the `minio` client.

Uploads stream from the file or body with a known length: objects below `PART_SIZE` go up
in one PUT, larger ones as a multipart upload, so memory stays bounded whatever the size.
An S3 PUT answers only once the object is stored, which is the durability ingest needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import BinaryIO, cast
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.error import S3Error

from storage.blobs.protocol import BlobInfo, Meta, Placed, Staging

PART_SIZE = 16 * 1024 * 1024
#: the prefix of an object's user metadata names (`x-amz-meta-pacs-org`...)
META = "pacs-"


class S3BlobStore:
    def __init__(
        self,
        *,
        bucket: str,
        prefix: str,
        endpoint: str,
        region: str | None,
        access_key: str,
        secret_key: str,
    ) -> None:
        u = urlparse(endpoint)
        pool = urllib3.PoolManager(
            num_pools=16,
            maxsize=32,
            timeout=urllib3.Timeout(connect=10, read=120),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self.client = Minio(
            u.netloc,
            access_key=access_key,
            secret_key=secret_key,
            secure=u.scheme == "https",
            region=region,
            http_client=pool,
        )
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        """Create the bucket on first start, so no separate init step is needed."""
        if self.client.bucket_exists(self.bucket):
            return
        try:
            self.client.make_bucket(self.bucket)
        except S3Error as exc:  # a concurrent starter won the race
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _name(self, key: str) -> str:
        return self.prefix + key

    def put_file(self, key: str, path: Path, meta: Meta | None = None) -> BlobInfo:
        size = path.stat().st_size
        with open(path, "rb") as f:
            return self.put(key, f, size, meta)

    def stage(self, path: Path, meta: Meta | None = None) -> Staging | None:  # noqa: ARG002 - the protocol's
        """Nothing to stage: an object store takes the bytes over the network (`put_file`)."""
        return None

    def stages(self, folder: Path) -> bool:  # noqa: ARG002 - the protocol's
        return False

    def put_staged(self, key: str, staging: Staging) -> Placed:
        durable: Future[None] = Future()
        durable.set_result(None)  # a completed PUT is durable, name and all
        return Placed(self.put_file(key, staging.path, staging.meta), durable)

    def put(self, key: str, data: BinaryIO, size: int, meta: Meta | None = None) -> BlobInfo:
        self.client.put_object(
            self.bucket,
            self._name(key),
            data,
            size,
            content_type="application/dicom",
            part_size=PART_SIZE,
            metadata={f"{META}{name}": value for name, value in (meta or {}).items()},  # x-amz-meta-pacs-*
        )
        return BlobInfo(key=key, size=size)

    def open(self, key: str) -> BinaryIO:
        return cast(BinaryIO, _Body(self.client.get_object(self.bucket, self._name(key))))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        resp = self.client.get_object(self.bucket, self._name(key), offset=start, length=length)
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        resp = self.client.get_object(self.bucket, self._name(key))
        try:
            yield from resp.stream(chunk_size)
        finally:
            resp.close()
            resp.release_conn()

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, self._name(key))

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, self._name(key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise
        return True

    def keys(self) -> Iterator[str]:
        for found in self.client.list_objects(self.bucket, prefix=self.prefix or None, recursive=True):
            if found.object_name is not None and not found.is_dir:
                yield found.object_name.removeprefix(self.prefix)

    def meta(self, key: str) -> dict[str, str]:
        headers = self.client.stat_object(self.bucket, self._name(key)).metadata or {}
        prefix = f"x-amz-meta-{META}"
        return {
            name.lower().removeprefix(prefix): value
            for name, value in headers.items()
            if name.lower().startswith(prefix)
        }

    def prefetch(self, key: str) -> None:
        """No read-ahead: each GET streams from the S3 server as it is sent on."""
        del key

    def local_path(self, key: str) -> Path | None:  # noqa: ARG002 - the objects live on the S3 server
        return None

    def check(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            raise OSError(f"bucket {self.bucket} does not exist")


class _Body:
    """A file-like wrapper that releases the pooled connection on close."""

    def __init__(self, resp: urllib3.BaseHTTPResponse) -> None:
        self._resp = resp

    def read(self, n: int = -1) -> bytes:
        return self._resp.read(None if n < 0 else n)

    def close(self) -> None:
        self._resp.close()
        self._resp.release_conn()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
