"""The audit trail's hash chain: how a record's hash is made, and how the chain is checked.

Each writer process keeps its own chain (`chain` = host:pid:nonce, `seq` from 1): a chain per
process needs no lock shared between processes, and a database with several `pacs serve`
processes keeps one chain per process, interleaved by time. A record's `hash` is SHA-256 over
its chain, seq, the previous record's hash (64 zeros for seq 1) and its fields in a fixed
order, so altering a field, deleting a record or inserting one breaks the chain there:
`verify` recomputes every chain and names the first record that does not follow. What a
chain cannot show alone is the removal of its last records; the syslog forward
(`storage.audit.forward`) keeps a copy outside the database for that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64

#: the fields a hash covers, in order (AuditRecord's columns but id and hash)
FIELDS = (
    "chain",
    "seq",
    "prev_hash",
    "time",
    "actor",
    "org",
    "source",
    "channel",
    "action",
    "patient",
    "study",
    "outcome",
    "reason",
    "owner_org",
    "detail",
)


def canonical_time(value: datetime) -> str:
    """The time as hashed: UTC to the microsecond, whatever the database hands back (SQLite's
    DATETIME comes back naive, PostgreSQL's timestamptz aware)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%f")


def record_hash(values: dict[str, Any]) -> str:
    """SHA-256 (hex) of a record's fields, `prev_hash` included."""
    parts = [canonical_time(values[f]) if f == "time" else values[f] for f in FIELDS]
    data = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Break:
    """The first record of a chain that does not follow: its id, its chain and why."""

    id: int
    chain: str
    seq: int
    why: str


def verify(records: Iterable[Any]) -> Iterator[Break]:
    """Every chain's first break, from records in (chain, seq) order.

    A record breaks its chain when its hash is not the hash of its fields, when its
    `prev_hash` is not the previous record's hash, or when its seq does not follow (a record
    was removed, or a chain starts after 1).
    """
    chain, expected_seq, prev = None, 1, GENESIS
    broken: str | None = None
    for r in records:
        if r.chain != chain:
            chain, expected_seq, prev, broken = r.chain, 1, GENESIS, None
        if broken == chain:
            continue
        why = _why(r, expected_seq, prev)
        if why:
            broken = chain
            yield Break(int(r.id), r.chain, int(r.seq), why)
            continue
        expected_seq, prev = int(r.seq) + 1, r.hash


def _why(r: Any, expected_seq: int, prev: str) -> str:
    if int(r.seq) != expected_seq:
        return f"seq {r.seq} where {expected_seq} was expected: a record is missing"
    if r.prev_hash != prev:
        return "prev_hash is not the previous record's hash"
    if record_hash({f: getattr(r, f) for f in FIELDS}) != r.hash:
        return "the record's fields do not match its hash: it was altered"
    return ""
