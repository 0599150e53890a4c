"""Whether a failure means a backend is away (the database, the object store), not a bug.

While PostgreSQL restarts or the S3 server is unreachable, requests fail with the drivers'
exceptions, which the edges must not know (no edge imports sqlalchemy or minio). They ask here,
and answer what a client may retry (HTTP 503 with Retry-After, DIMSE 0xA700 Out of Resources)
instead of an internal error; a wrong answer is never given, since the failed step raised.
"""

from __future__ import annotations

from collections.abc import Iterator

import urllib3.exceptions
from sqlalchemy import exc as sql

DATABASE, OBJECT_STORE = "database", "object store"


def outage(error: BaseException) -> str | None:
    """The backend whose absence `error` (or an error it was raised from) shows, else None."""
    for cause in _chain(error):
        if isinstance(cause, sql.OperationalError | sql.InterfaceError | sql.TimeoutError):
            return DATABASE  # refused, reset, "the database system is shutting down", pool timeout
        if isinstance(cause, sql.DBAPIError) and cause.connection_invalidated:
            return DATABASE
        if isinstance(cause, urllib3.exceptions.HTTPError):
            return OBJECT_STORE  # the S3 client's transport: refused, reset, retries exhausted
    return None


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
