"""`storage.index.reserved`: object keys reserved a batch per transaction, handed out in turn."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import delete, select

from storage.archive import Archive
from storage.blobs.protocol import new_keys
from storage.index.models import PendingBlob
from storage.index.reserved import BATCH, Reserved


def rows(archive: Archive) -> dict[int, str]:
    with archive.db.read() as s:
        return dict(s.execute(select(PendingBlob.id, PendingBlob.object_key)).all())


def test_keys_are_reserved_a_batch_at_a_time_and_each_handed_out_once(archive: Archive) -> None:
    reserved = Reserved(max_age=60)
    taken = [reserved.take(archive.db, archive.owner, new_keys) for _ in range(BATCH + 1)]
    assert len(set(taken)) == BATCH + 1  # no key twice
    assert len(rows(archive)) == 2 * BATCH  # two reservations: every key's row is committed
    assert all(rows(archive)[pending_id] == key for pending_id, key in taken)
    assert len(reserved.unused()) == BATCH - 1 and reserved.unused() <= set(rows(archive).values())
    assert reserved.release(archive.db) == BATCH - 1
    assert set(rows(archive)) == {pending_id for pending_id, _ in taken}  # the unused ones' rows went


def test_a_key_older_than_its_age_limit_is_not_handed_out(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep removes a live process's rows older than the recovery grace: a key waits at
    most half of it, then a fresh batch is reserved instead, and the stale keys' rows released."""
    reserved = Reserved(max_age=60)
    first = reserved.take(archive.db, archive.owner, new_keys)
    stale = reserved.unused()
    later = time.monotonic() + 61
    monkeypatch.setattr(time, "monotonic", lambda: later)
    second = reserved.take(archive.db, archive.owner, new_keys)
    assert second[1] not in stale | {first[1]}  # from a fresh batch
    kept = set(rows(archive).values())
    assert kept.isdisjoint(stale) and len(kept) == 1 + BATCH  # the stale keys' rows released


def test_without_a_grace_period_keys_are_reserved_one_at_a_time(archive: Archive) -> None:
    reserved = Reserved(max_age=0)
    reserved.take(archive.db, archive.owner, new_keys)
    assert len(rows(archive)) == 1 and reserved.unused() == set()


def test_a_row_another_process_removed_is_never_confused_with_a_newer_one(archive: Archive) -> None:
    """Settled rows and reserved keys are dropped by object key: SQLite gives a deleted row's id
    to the next row, and another process's sweep may remove a row an idle process still lists."""
    reserved = Reserved(max_age=60)
    pending_id, key = reserved.take(archive.db, archive.owner, new_keys)
    archive.settled.add(key)
    with archive.db.write_conn() as conn:  # another process's sweep: every row goes
        conn.execute(delete(PendingBlob))
    newer = Reserved(max_age=60).take(archive.db, archive.owner, new_keys)  # may take the same ids
    assert archive.settled.flush(archive.db) == 1
    reserved.release(archive.db)
    assert newer in rows(archive).items() and len(rows(archive)) == BATCH  # the newer batch, whole
    assert pending_id not in rows(archive) or rows(archive)[pending_id] != key
