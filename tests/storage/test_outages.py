"""`storage.outages.outage` tells a backend that is away from a bug, with the real drivers'
own exceptions: PostgreSQL through psycopg and SQLAlchemy, S3 through the minio client's
urllib3, each pointed at a port where nothing listens."""

from __future__ import annotations

import pytest

from storage.blobs.s3 import S3BlobStore
from storage.errors import OutOfResources
from storage.index.db import Database
from storage.outages import DATABASE, OBJECT_STORE, outage
from tests.kit.net import free_port


def raised(action: object) -> BaseException:
    with pytest.raises(Exception) as caught:
        action()  # type: ignore[operator]
    return caught.value


def test_a_database_that_refuses_connections_is_an_outage() -> None:
    db = Database.connect(f"postgresql+psycopg://pacs:pacs@127.0.0.1:{free_port()}/pacs", pool_size=1)
    try:
        error = raised(db.check)
    finally:
        db.dispose()
    assert outage(error) == DATABASE
    wrapped = OutOfResources("could not store")
    wrapped.__cause__ = error
    assert outage(wrapped) == DATABASE  # found through the chain of causes


def test_an_object_store_that_refuses_connections_is_an_outage() -> None:
    error = raised(
        lambda: S3BlobStore(
            bucket="pacs",
            prefix="",
            endpoint=f"http://127.0.0.1:{free_port()}",
            region="us-east-1",
            access_key="k",
            secret_key="s",
        )
    )
    assert outage(error) == OBJECT_STORE


def test_a_bug_is_not_an_outage() -> None:
    assert outage(ValueError("a bug")) is None
    assert outage(KeyError("0020000D")) is None
