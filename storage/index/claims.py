"""Claims on rows that several processes may work on (a kept commitment request, a Subscription
delivery): who holds a row, and taking it over with a compare-and-set on the holder seen, so of
two processes that sweep at once only one gets it, on SQLite as on PostgreSQL.

A row is free when no one holds it, its holder's lease ran out, or its holder is a dead process
of this host (`storage.processes.owner_is_gone`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from storage.processes import owner_is_gone


def as_utc(moment: datetime | None) -> datetime:
    """A database time with its zone (SQLite hands times back without one: they are UTC); the
    earliest time for None."""
    if moment is None:
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def held(holder: str | None, until: datetime | None, now: datetime) -> bool:
    """Whether a live process holds the row under a lease that still runs."""
    return holder is not None and as_utc(until) > now and not owner_is_gone(holder)


def take(session: Session, model: Any, row_id: int, holder: str | None, owner: str, until: datetime) -> bool:
    """Claim row `row_id` of `model` (its `claimed_by` / `claimed_until`) for `owner` until
    `until`, if `holder` still holds it as seen; whether this process got it."""
    taken = session.execute(
        update(model)
        .where(model.id == row_id, model.claimed_by.is_not_distinct_from(holder))
        .values(claimed_by=owner, claimed_until=until)
        .execution_options(synchronize_session=False)
    )
    return bool(taken.rowcount == 1)  # type: ignore[attr-defined]  # a CursorResult
