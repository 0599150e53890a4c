"""FHIR Subscriptions' rules: who owns one, which studies it is told of, and each notification
from matched to delivered.

A subscription belongs to the principal that created it (an integrator's system, or an admin),
and its organization's integrators manage it. It is told only of studies that principal may
see, decided in SQL by `storage.access.policy` when a study is matched, and again just before
the notification is sent (a consent may have changed in between). A study counts as arrived
once no instance has come for `PACS_SUBSCRIPTION_QUIET` seconds (Orthanc's "stable study"); a
study that receives more instances later is matched again, as an update.

**Matching.** Each subscription keeps a watermark (`checked_until`). A round takes the studies
that changed in (watermark - `MARGIN`, now - quiet] and match the subscription's criteria (the
FHIR edge turns the criteria into the query), records one delivery per (subscription, study,
study version) under a unique key, so that two processes matching at once record it once, and
moves the watermark. `MARGIN` re-reads the last minute, so that an ingest transaction that
committed late (its `updated_at` is taken before its commit) is not passed over.

**Delivery.** Any process claims due deliveries (a compare-and-set on the holder seen, as
commitment reports are claimed), sends them, and records the outcome. A failure is retried
after `PACS_SUBSCRIPTION_RETRY` seconds, doubling up to `PACS_SUBSCRIPTION_RETRY_MAX`; after
`PACS_SUBSCRIPTION_FAILURES` failed sends in a row the subscription's status becomes `error`
and its sends stop, while its matches are still recorded: an update back to `active` delivers
the backlog. A holder killed mid-send leaves its claim to lapse (`LEASE`), so a notification may
be sent twice (at least once), and none is lost. Status `off` (the client's) stops matching too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from storage.access.context import Context
from storage.access.principal import Principal, Role
from storage.errors import Conflict, Gone, NotFound
from storage.index.claims import as_utc, held, take
from storage.index.db import dialect_insert
from storage.index.models import Subscription, SubscriptionDelivery
from storage.settings import Settings

ACTIVE, ERROR, OFF = "active", "error", "off"
PENDING, DELIVERED, DROPPED = "pending", "delivered", "dropped"
#: how far back of its watermark each round re-reads a subscription's changed studies
MARGIN = timedelta(seconds=60)
#: how long a claimed delivery stays its holder's: far longer than one send may take
LEASE = timedelta(seconds=60)
#: the live subscriptions one organization may hold
MAX_PER_ORG = 100
#: the most deliveries one round claims
CLAIM_BATCH = 32


@dataclass(frozen=True, slots=True)
class Spec:
    """What a client asks for (already checked by the edge that parsed it)."""

    criteria: str
    endpoint: str
    headers: tuple[str, ...] = ()
    payload: str = ""
    reason: str = ""
    status: str = ACTIVE
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """A subscription as a read shows it."""

    id: int
    status: str
    reason: str
    criteria: str
    endpoint: str
    headers: tuple[str, ...]
    payload: str
    end: datetime | None
    error: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Watch:
    """A subscription to match: its criteria, its owner, and from when."""

    id: int
    criteria: str
    owner: Principal
    since: datetime
    #: its watermark: studies that changed up to here are recorded
    checked_until: datetime


@dataclass(frozen=True, slots=True)
class Due:
    """A claimed delivery: what to send, where, and on whose behalf."""

    id: int
    subscription_id: int
    study_uid: str
    attempts: int
    owner: Principal
    endpoint: str
    headers: tuple[str, ...]
    payload: str


@dataclass(frozen=True, slots=True)
class Retry:
    """When to try again after a failed send, and when to give a subscription up (status error)."""

    first: float
    longest: float
    failures: int

    @classmethod
    def of(cls, settings: Settings) -> Retry:
        return cls(settings.subscription_retry, settings.subscription_retry_max, settings.subscription_failures)

    def wait(self, attempts: int) -> float:
        """Seconds before the next send, after `attempts` failed ones (1, 2, ...)."""
        return float(min(self.first * 2 ** min(attempts - 1, 30), self.longest))


def create(session: Session, ctx: Context, spec: Spec) -> Record:
    """A new subscription owned by the caller; matching starts from now.

    Raises
    ------
    NotAuthorized
        The caller is neither an integrator nor an admin.
    Conflict
        Its organization already holds `MAX_PER_ORG` live subscriptions.
    """
    _require_manager(ctx, "create a Subscription")
    principal = ctx.principal
    held = session.scalar(
        select(func.count())
        .select_from(Subscription)
        .where(Subscription.owner_org.is_not_distinct_from(principal.org), Subscription.deleted_at.is_(None))
    )
    if (held or 0) >= MAX_PER_ORG:
        raise Conflict(f"the organization holds {MAX_PER_ORG} subscriptions: delete one first")
    now = datetime.now(UTC)
    row = Subscription(
        owner_sub=principal.sub[:256],
        owner_org=principal.org,
        owner_roles=",".join(sorted(principal.roles)),
        checked_until=now,
        created_at=now,
        updated_at=now,
        **_fields(spec),
    )
    session.add(row)
    session.flush()
    return _record(row)


def get(session: Session, ctx: Context, subscription_id: int) -> Record:
    """A subscription the caller's organization owns (any, for an admin).

    Raises
    ------
    NotFound
        No such subscription, or another organization's (the same answer).
    Gone
        The caller's, deleted.
    """
    return _record(_visible(session, ctx, subscription_id))


def search(session: Session, ctx: Context, *, status: str | None = None, limit: int = 100) -> list[Record]:
    """The live subscriptions the caller may read, oldest first."""
    stmt = select(Subscription).where(Subscription.deleted_at.is_(None), _readable(ctx))
    if status is not None:
        stmt = stmt.where(Subscription.status == status)
    return [_record(r) for r in session.scalars(stmt.order_by(Subscription.id).limit(max(0, limit)))]


def replace(session: Session, ctx: Context, subscription_id: int, spec: Spec) -> Record:
    """An update: the new criteria, channel and status; back to `active` clears the error and
    sends what waited. Studies already matched stay matched; new criteria apply from now."""
    _require_manager(ctx, "update a Subscription")
    row = _visible(session, ctx, subscription_id)
    for name, value in _fields(spec).items():
        setattr(row, name, value)
    if spec.status == ACTIVE:
        row.failures, row.error = 0, ""
    row.updated_at = datetime.now(UTC)
    session.flush()
    return _record(row)


def delete(session: Session, ctx: Context, subscription_id: int) -> None:
    """Delete it: its pending deliveries are dropped and a read of it answers 410 from now on."""
    _require_manager(ctx, "delete a Subscription")
    row = _visible(session, ctx, subscription_id)
    now = datetime.now(UTC)
    row.deleted_at, row.status, row.updated_at = now, OFF, now
    session.execute(
        update(SubscriptionDelivery)
        .where(SubscriptionDelivery.subscription_id == row.id, SubscriptionDelivery.state == PENDING)
        .values(state=DROPPED, last_error="subscription deleted", claimed_by=None, claimed_until=None)
    )


def to_match(session: Session, until: datetime) -> list[Watch]:
    """The subscriptions whose matches up to `until` are not all recorded yet: live, not off,
    not ended (an `error` one included, so that nothing waits unrecorded)."""
    rows = session.scalars(
        select(Subscription)
        .where(
            Subscription.deleted_at.is_(None),
            Subscription.status.in_((ACTIVE, ERROR)),
            or_(Subscription.end_at.is_(None), Subscription.end_at > until),
            Subscription.checked_until < until,
        )
        .order_by(Subscription.id)
    ).all()
    return [
        Watch(
            r.id,
            r.criteria,
            _owner(r),
            max(as_utc(r.checked_until) - MARGIN, as_utc(r.created_at)),
            as_utc(r.checked_until),
        )
        for r in rows
    ]


def unrecorded(
    session: Session, subscription_id: int, studies: Sequence[tuple[str, datetime]]
) -> list[tuple[str, datetime]]:
    """Those of `studies` (UID, version) that have no delivery of the subscription yet: each
    round re-reads the last minute's changes, and a write of nothing new is spared."""
    if not studies:
        return []
    known = {
        (uid, as_utc(version))
        for uid, version in session.execute(
            select(SubscriptionDelivery.study_uid, SubscriptionDelivery.study_version).where(
                SubscriptionDelivery.subscription_id == subscription_id,
                SubscriptionDelivery.study_uid.in_({uid for uid, _ in studies}),
            )
        )
    }
    return [(uid, version) for uid, version in studies if (uid, as_utc(version)) not in known]


def record_matches(
    session: Session, subscription_id: int, studies: Iterable[tuple[str, datetime]], until: datetime
) -> None:
    """Record a delivery for each (study UID, study version) not recorded yet, and move the
    watermark to `until`."""
    now = datetime.now(UTC)
    rows = [
        {
            "subscription_id": subscription_id,
            "study_uid": uid,
            "study_version": version,
            "state": PENDING,
            "attempts": 0,
            "due_at": now,
            "last_error": "",
            "created_at": now,
        }
        for uid, version in studies
    ]
    if rows:
        stmt = dialect_insert(session.get_bind().dialect.name, SubscriptionDelivery).on_conflict_do_nothing(
            index_elements=["subscription_id", "study_uid", "study_version"]
        )
        session.execute(stmt, rows)
    session.execute(
        update(Subscription)
        .where(Subscription.id == subscription_id, Subscription.checked_until < until)
        .values(checked_until=until)
    )


def claim_due(session: Session, owner: str, *, limit: int = CLAIM_BATCH) -> list[Due]:
    """Claim for `owner` the pending deliveries of active subscriptions that are due and that no
    live process holds; of two processes that claim at once, only one gets each."""
    now = datetime.now(UTC)
    rows = session.execute(
        select(SubscriptionDelivery, Subscription)
        .join(Subscription, Subscription.id == SubscriptionDelivery.subscription_id)
        .where(
            SubscriptionDelivery.state == PENDING,
            SubscriptionDelivery.due_at <= now,
            Subscription.status == ACTIVE,
            Subscription.deleted_at.is_(None),
            or_(Subscription.end_at.is_(None), Subscription.end_at > now),
        )
        .order_by(SubscriptionDelivery.due_at, SubscriptionDelivery.id)
        .limit(limit)
    ).all()
    claimed: list[Due] = []
    for delivery, subscription in rows:
        holder = delivery.claimed_by
        if held(holder, delivery.claimed_until, now):
            continue
        if take(session, SubscriptionDelivery, delivery.id, holder, owner, now + LEASE):
            claimed.append(
                Due(
                    delivery.id,
                    subscription.id,
                    delivery.study_uid,
                    delivery.attempts,
                    _owner(subscription),
                    subscription.endpoint,
                    tuple(json.loads(subscription.headers)),
                    subscription.payload,
                )
            )
    return claimed


def delivered(session: Session, due: Due, owner: str) -> None:
    """The receiver took it (a 2xx): done, and the subscription's failures start over."""
    now = datetime.now(UTC)
    done = session.execute(
        update(SubscriptionDelivery)
        .where(SubscriptionDelivery.id == due.id, SubscriptionDelivery.claimed_by == owner)
        .values(
            state=DELIVERED,
            attempts=due.attempts + 1,
            delivered_at=now,
            last_error="",
            claimed_by=None,
            claimed_until=None,
        )
    )
    if done.rowcount == 1:  # type: ignore[attr-defined]
        session.execute(update(Subscription).where(Subscription.id == due.subscription_id).values(failures=0, error=""))


def failed(session: Session, due: Due, owner: str, error: str, retry: Retry) -> bool:
    """A send failed: try again later, and put the subscription in status `error` once it has
    failed `retry.failures` times in a row. Whether it did just now."""
    attempts = due.attempts + 1
    moved = session.execute(
        update(SubscriptionDelivery)
        .where(SubscriptionDelivery.id == due.id, SubscriptionDelivery.claimed_by == owner)
        .values(
            attempts=attempts,
            due_at=datetime.now(UTC) + timedelta(seconds=retry.wait(attempts)),
            last_error=error[:1000],
            claimed_by=None,
            claimed_until=None,
        )
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]  # the claim lapsed: its new holder records
        return False
    failures = (
        session.scalar(
            update(Subscription)
            .where(Subscription.id == due.subscription_id)
            .values(failures=Subscription.failures + 1)
            .returning(Subscription.failures)
        )
        or 0
    )
    if failures < retry.failures:
        return False
    given_up = session.execute(
        update(Subscription)
        .where(Subscription.id == due.subscription_id, Subscription.status == ACTIVE)
        .values(status=ERROR, error=f"{failures} notifications failed in a row; the last: {error}"[:1000])
    )
    return bool(given_up.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, claimed: Iterable[Due], owner: str) -> None:
    """Give claimed deliveries back unsent: the next round, here or in another process, sends them."""
    session.execute(
        update(SubscriptionDelivery)
        .where(SubscriptionDelivery.id.in_([d.id for d in claimed]), SubscriptionDelivery.claimed_by == owner)
        .values(claimed_by=None, claimed_until=None)
    )


def dropped(session: Session, due: Due, owner: str, why: str) -> None:
    """Not to be sent: the study is gone, or its subscriber may no longer see it."""
    session.execute(
        update(SubscriptionDelivery)
        .where(SubscriptionDelivery.id == due.id, SubscriptionDelivery.claimed_by == owner)
        .values(state=DROPPED, last_error=why[:1000], claimed_by=None, claimed_until=None)
    )


def deliveries(session: Session, ctx: Context, subscription_id: int, *, limit: int = 100) -> list[dict[str, Any]]:
    """The record of a subscription's deliveries, newest first (what was sent, when, how it went)."""
    row = _visible(session, ctx, subscription_id, deleted_too=True)
    found: Sequence[SubscriptionDelivery] = session.scalars(
        select(SubscriptionDelivery)
        .where(SubscriptionDelivery.subscription_id == row.id)
        .order_by(SubscriptionDelivery.id.desc())
        .limit(max(0, min(limit, 1000)))
    ).all()
    return [
        {
            "id": d.id,
            "study": d.study_uid,
            "state": d.state,
            "attempts": d.attempts,
            "matched": as_utc(d.created_at).isoformat(),
            "delivered": as_utc(d.delivered_at).isoformat() if d.delivered_at else None,
            "next_attempt": as_utc(d.due_at).isoformat() if d.state == PENDING else None,
            "last_error": d.last_error or None,
        }
        for d in found
    ]


def _require_manager(ctx: Context, action: str) -> None:
    principal = ctx.principal
    if not (principal.is_admin or principal.has(Role.INTEGRATOR)):
        raise ctx.refused(action, "Subscriptions are managed by an integrator or an admin")


def _readable(ctx: Context) -> Any:
    if ctx.principal.is_admin:
        return Subscription.id.is_not(None)
    if ctx.principal.org is None:
        return Subscription.id.is_(None)
    return Subscription.owner_org == ctx.principal.org


def _visible(session: Session, ctx: Context, subscription_id: int, *, deleted_too: bool = False) -> Subscription:
    row = session.scalars(select(Subscription).where(Subscription.id == subscription_id, _readable(ctx))).first()
    if row is None:
        raise NotFound(f"no Subscription {subscription_id}")
    if row.deleted_at is not None and not deleted_too:
        raise Gone(f"Subscription {subscription_id} was deleted")
    return row


def _fields(spec: Spec) -> dict[str, Any]:
    return {
        "status": spec.status,
        "reason": spec.reason,
        "criteria": spec.criteria,
        "endpoint": spec.endpoint,
        "headers": json.dumps(list(spec.headers)),
        "payload": spec.payload,
        "end_at": spec.end,
    }


def _record(row: Subscription) -> Record:
    ended = row.end_at is not None and as_utc(row.end_at) <= datetime.now(UTC)
    return Record(
        row.id,
        OFF if ended else row.status,
        row.reason,
        row.criteria,
        row.endpoint,
        tuple(json.loads(row.headers)),
        row.payload,
        as_utc(row.end_at) if row.end_at else None,
        row.error,
        as_utc(row.updated_at),
    )


def _owner(row: Subscription) -> Principal:
    known = {role.value for role in Role}
    roles = frozenset(Role(r) for r in row.owner_roles.split(",") if r in known)
    return Principal(sub=row.owner_sub, org=row.owner_org, roles=roles)
