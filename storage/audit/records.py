"""Reading the audit trail: the data-protection officer's search, and the chain check.

Records are only ever added (`storage.audit.trail`); nothing here or anywhere in the archive
changes or deletes one. The search answers DESIGN.md's `GET /api/audit` filters, newest first
with keyset paging (`before`: the id of the last record of the previous page), so a page costs
one indexed query however long the trail is. `action=emergency` selects the emergency accesses
(every record that carries a reason), whatever their route.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, select

from storage.access.context import Context
from storage.audit.chain import FIELDS, Break, verify
from storage.index.db import Database
from storage.index.models import AuditRecord

#: the most records one page answers
MAX_PAGE = 1000
EMERGENCY = "emergency"


@dataclass(frozen=True, slots=True, kw_only=True)
class Filters:
    patient: str | None = None
    study: str | None = None
    actor: str | None = None
    org: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None
    #: the page of records just newer than this id (a FHIR `previous` link), still newest first
    after: int | None = None
    limit: int = 100


#: what a search answers: the hashed fields without the chain's own, with the id and the hash
COLUMNS = ("id", *(f for f in FIELDS if f not in ("chain", "seq", "prev_hash")), "hash")


def search(db: Database, ctx: Context, filters: Filters) -> list[dict[str, Any]]:
    """The records matching `filters`, newest first: an admin's reading (the caller checks the role)."""
    del ctx
    query = _where(select(*(getattr(AuditRecord, c) for c in COLUMNS)), filters)
    order = AuditRecord.id.asc() if filters.after else AuditRecord.id.desc()
    query = query.order_by(order).limit(max(1, min(filters.limit, MAX_PAGE)))
    with db.engine.connect() as conn:
        found = [_aware(dict(row._mapping)) for row in conn.execute(query)]
    return list(reversed(found)) if filters.after else found


def _aware(record: dict[str, Any]) -> dict[str, Any]:
    """Every time is UTC; SQLite hands DATETIME back without its zone, RFC 3339 wants one."""
    if record["time"].tzinfo is None:
        record["time"] = record["time"].replace(tzinfo=UTC)
    return record


def _where(query: Select[Any], f: Filters) -> Select[Any]:
    exact = {"patient": f.patient, "study": f.study, "actor": f.actor, "org": f.org, "outcome": f.outcome}
    for column, value in exact.items():
        if value:
            query = query.where(getattr(AuditRecord, column) == value)
    if f.action == EMERGENCY:
        query = query.where(AuditRecord.reason.is_not(None))
    elif f.action:
        query = query.where(AuditRecord.action == f.action)
    if f.since:
        query = query.where(AuditRecord.time >= f.since)
    if f.until:
        query = query.where(AuditRecord.time < f.until)
    if f.before:
        query = query.where(AuditRecord.id < f.before)
    if f.after:
        query = query.where(AuditRecord.id > f.after)
    return query


@dataclass(frozen=True, slots=True)
class Verification:
    records: int
    chains: int
    breaks: list[Break]


def verify_trail(db: Database, *, page: int = 5000) -> Verification:
    """Check every chain of the trail, reading it in pages of `page` records (a long trail
    does not have to fit in memory)."""
    seen: list[int] = [0]
    chains: set[str] = set()

    def records() -> Iterator[Any]:
        last_chain, last_seq = "", 0
        while True:
            after = (AuditRecord.chain > last_chain) | (
                (AuditRecord.chain == last_chain) & (AuditRecord.seq > last_seq)
            )
            with db.engine.connect() as conn:
                rows = conn.execute(
                    select(AuditRecord).where(after).order_by(AuditRecord.chain, AuditRecord.seq).limit(page)
                ).all()
            if not rows:
                return
            for row in rows:
                seen[0] += 1
                chains.add(row.chain)
                yield row
            last_chain, last_seq = rows[-1].chain, int(rows[-1].seq)

    breaks = list(verify(records()))
    return Verification(seen[0], len(chains), breaks)
