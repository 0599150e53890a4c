"""The pending rows of staged blobs whose names are durable, dropped with the next index commit.

Why: a staged blob's pending row outlives its index commit by its folder's fsync
(`storage.ingest.pipeline._settle`); dropping it in a transaction of its own cost every
received instance a write transaction more. Their object keys wait here instead and go in the
next instance's index commit (`pipeline._index`), or in the sweep's transaction when no
instance follows (`storage.ingest.recovery.sweep`), or when the process closes its archive.
One left behind by a killed process is harmless: start-up recovery finds its instance indexed
and its blob present, and drops it (`recovery.settled`).
"""

from __future__ import annotations

import threading

from sqlalchemy import Connection, bindparam, delete

from storage.index.db import Database
from storage.index.models import PendingBlob

#: by object key, never by row id: SQLite hands a deleted row's id to the next row, and another
#: process's sweep may have removed a row this process still lists (an idle worker's)
_DROP = delete(PendingBlob).where(PendingBlob.object_key.in_(bindparam("keys", expanding=True)))
#: the usual case, one association's previous instance: without the expanding IN's rendering
_DROP_ONE = delete(PendingBlob).where(PendingBlob.object_key == bindparam("key"))


class Settled:
    """This process's settled pending rows, by object key (thread-safe; a few per association
    in flight)."""

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._lock = threading.Lock()

    def add(self, key: str) -> None:
        with self._lock:
            self._keys.append(key)

    def drop_within(self, conn: Connection) -> list[str]:
        """Drop the settled rows in the caller's transaction; their keys, which the caller gives
        back (`give_back`) if that transaction does not commit."""
        with self._lock:
            keys, self._keys = self._keys, []
        if keys:
            try:
                if len(keys) == 1:
                    conn.execute(_DROP_ONE, {"key": keys[0]})
                else:
                    conn.execute(_DROP, {"keys": keys})
            except BaseException:
                self.give_back(keys)
                raise
        return keys

    def waiting(self) -> set[str]:
        """The keys whose rows are not dropped yet."""
        with self._lock:
            return set(self._keys)

    def give_back(self, keys: list[str]) -> None:
        with self._lock:
            self._keys[:0] = keys

    def flush(self, db: Database) -> int:
        """Drop the settled rows in a transaction of their own; how many."""
        keys: list[str] = []
        try:
            with db.write_conn(light=True) as conn:
                keys = self.drop_within(conn)
        except BaseException:
            self.give_back(keys)
            raise
        return len(keys)
