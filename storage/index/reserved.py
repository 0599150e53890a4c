"""Object keys reserved ahead, a batch of pending rows per write transaction.

Why: an ingest reserves its blob's key in a pending row committed before the blob takes that
name, so that recovery finds a blob a crash left without its index rows (DESIGN.md "Ingest
rules"). One write transaction per instance for that alone was a third of the index's work per
received instance and, with two writer processes, one more wait for SQLite's write lock each
(`pacs import` workers waited 16 % of their time there). A process now reserves `BATCH` keys
in one transaction and hands them out one per instance. A key is handed out only while its row
is younger than half the recovery grace, since the sweep may remove a live process's older
rows: older ones are released with the next reservation, the rest when the process closes its
archive. A process killed with keys in hand leaves their rows to start-up recovery, which
removes them (no blob has their names).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from sqlalchemy import bindparam, delete, insert

from storage.index.db import Database
from storage.index.models import PendingBlob, utcnow

#: keys one reservation makes: enough that reserving costs little per instance, few enough that
#: a process stopped mid-way leaves little for recovery
BATCH = 16

_RESERVE = insert(PendingBlob).returning(PendingBlob.id, PendingBlob.object_key)
#: by object key, never by row id: SQLite hands a deleted row's id to the next row
_RELEASE = delete(PendingBlob).where(PendingBlob.object_key.in_(bindparam("keys", expanding=True)))


class Reserved:
    """This process's reserved keys (thread-safe): (pending row id, key), handed out in turn."""

    def __init__(self, max_age: float) -> None:
        #: how long a reserved key may wait to be used, in seconds
        self.max_age = max_age
        self._keys: deque[tuple[int, str, float]] = deque()
        self._lock = threading.Lock()

    def take(self, db: Database, owner: str, new_keys: Callable[[int], list[str]]) -> tuple[int, str]:
        """A reserved key and its pending row's id; reserves a batch when none is left."""
        now = time.monotonic()
        stale: list[str] = []
        with self._lock:
            while self._keys:
                pending_id, key, made = self._keys.popleft()
                if now - made < self.max_age:
                    return pending_id, key
                stale.append(key)  # too old to hand out (the process was idle): released below
        batch = BATCH if self.max_age > 0 else 1
        created = utcnow()
        with db.write_conn(light=True) as conn:  # lost in a power cut: the blobs were never written
            if stale:
                conn.execute(_RELEASE, {"keys": stale})
            rows = conn.execute(
                _RESERVE, [{"object_key": key, "owner": owner, "created_at": created} for key in new_keys(batch)]
            ).all()
        first, *rest = [(int(row.id), str(row.object_key)) for row in rows]
        with self._lock:
            self._keys.extend((pending_id, key, now) for pending_id, key in rest)
        return first

    def unused(self) -> set[str]:
        """The keys not handed out yet."""
        with self._lock:
            return {key for _pending_id, key, _made in self._keys}

    def release(self, db: Database) -> int:
        """Drop the rows of the keys not handed out (the process stops); how many."""
        with self._lock:
            keys = [key for _pending_id, key, _made in self._keys]
            self._keys.clear()
        if keys:
            with db.write_conn(light=True) as conn:
                conn.execute(_RELEASE, {"keys": keys})
        return len(keys)
