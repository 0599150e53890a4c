"""The pending rows of staged blobs whose names are durable, dropped with the next index commit.

Why: a staged blob's pending row outlives its index commit by its folder's fsync
(`storage.ingest.pipeline._settle`); dropping it in a transaction of its own cost every
received instance a write transaction of its own. The ids wait here instead and go in the next
instance's index commit (`pipeline._index`), or in the sweep's transaction when no instance
follows (`storage.ingest.recovery.sweep`), or when the process closes its archive. One left behind by
a killed process is harmless: start-up recovery finds its instance indexed and its blob
present, and drops it (`recovery.settled`).
"""

from __future__ import annotations

import threading

from sqlalchemy import Connection, bindparam, delete

from storage.index.db import Database
from storage.index.models import PendingBlob

_DROP = delete(PendingBlob).where(PendingBlob.id.in_(bindparam("ids", expanding=True)))
#: the usual case, one association's previous instance: without the expanding IN's rendering
_DROP_ONE = delete(PendingBlob).where(PendingBlob.id == bindparam("id"))


class Settled:
    """This process's settled pending-row ids (thread-safe; a few per association in flight)."""

    def __init__(self) -> None:
        self._ids: list[int] = []
        self._lock = threading.Lock()

    def add(self, pending_id: int) -> None:
        with self._lock:
            self._ids.append(pending_id)

    def drop_within(self, conn: Connection) -> list[int]:
        """Drop the settled rows in the caller's transaction; the ids, which the caller gives
        back (`give_back`) if that transaction does not commit."""
        with self._lock:
            ids, self._ids = self._ids, []
        if ids:
            try:
                if len(ids) == 1:
                    conn.execute(_DROP_ONE, {"id": ids[0]})
                else:
                    conn.execute(_DROP, {"ids": ids})
            except BaseException:
                self.give_back(ids)
                raise
        return ids

    def waiting(self) -> set[int]:
        """The ids not dropped yet."""
        with self._lock:
            return set(self._ids)

    def give_back(self, ids: list[int]) -> None:
        with self._lock:
            self._ids[:0] = ids

    def flush(self, db: Database) -> int:
        """Drop the settled rows in a transaction of their own; how many."""
        ids: list[int] = []
        try:
            with db.write_conn(light=True) as conn:
                ids = self.drop_within(conn)
        except BaseException:
            self.give_back(ids)
            raise
        return len(ids)
