"""Where the bytes of every instance live: a folder or an S3 bucket, as `PACS_STORAGE_URL` says.

`protocol` is the interface the archive relies on (`BlobStore`, its durability promise, the
server-made keys); `fs` and `s3` implement it, and only `s3` talks to the minio client.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from storage.blobs.protocol import BlobStore
from storage.settings import Settings


def from_settings(settings: Settings) -> BlobStore:
    """Build the blob store that `PACS_STORAGE_URL` names (`file://PATH` or `s3://BUCKET?...`)."""
    url = urlparse(settings.storage_url)
    if url.scheme == "file":
        from storage.blobs.fs import FileBlobStore

        return FileBlobStore(Path(unquote(url.netloc + url.path)))
    if url.scheme == "s3":
        from storage.blobs.s3 import S3BlobStore

        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        return S3BlobStore(
            bucket=url.netloc,
            prefix=url.path.strip("/"),
            endpoint=query.get("endpoint", "https://s3.amazonaws.com"),
            region=query.get("region") or None,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
        )
    raise ValueError(f"unsupported storage URL scheme {url.scheme!r}")
