"""The audit trail forwarded to the city's SIEM: every record, in order, as IHE ATNA syslog.

The records stay where they are (append-only, `audit_records`); how far a target has been sent
is one row of `audit_cursors`, keyed by the target URL. Each process that serves may run a
`Forwarder`; the one that holds the cursor's claim sends, the others only look every round
whether the claim has lapsed. A claim is taken as the storage commitment sweep takes a kept
request (`storage.workflow.commitment.claim_due`): when the row is unclaimed, its lease ran out
or its holder is a dead process of this host (as `storage.archive.owner_is_gone` tells), with a
compare-and-set on the holder seen, so of two processes only one wins, on SQLite as on
PostgreSQL. The holder renews its lease while it works and gives it up when it stops.

A round reads up to `BATCH` records after the cursor, in id order, sends each
(`storage.audit.atna`, `storage.audit.syslog`), and only then moves the cursor past them. So
delivery is **at least once**: a process killed (or a claim lost) between sending and moving
the cursor leaves that batch to be sent again by the next holder, and a receiver may see some
records twice (their hash, in no message, or their time and content tell them apart); none is
skipped. A receiver that is unreachable stops the round before the cursor moves: the records
wait in the table, and the forwarder tries again after 1 s, doubling to 30 s, logging each
failure as one `audit.forward.unreachable` line (the target and the error, never a record).
As everywhere in syslog, a message written to the connection counts as delivered: a receiver
that crashes holding unread bytes loses them (`storage.audit.syslog`).

Ids are handed out when a record is inserted and become visible when its transaction commits,
which on PostgreSQL need not be in id order: with several writers, record 11 may be visible
before record 10 is. A round therefore stops at a hole in the ids and waits up to `GAP_WAIT`
for it to fill; a hole still there by then is an insert that rolled back (a sequence never
gives a number back), and is passed over.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from storage.audit import atna
from storage.audit.syslog import SEVERITY_NOTICE, SEVERITY_WARNING, SyslogSender, Target, syslog_message
from storage.index.db import Database, dialect_insert
from storage.index.models import AuditCursor, AuditRecord
from storage.logs import event
from storage.processes import owner_is_gone
from storage.settings import Settings

log = logging.getLogger(__name__)

#: the most records one round reads, sends, and moves the cursor past
BATCH = 500
#: how long a claim holds without renewal: far longer than a round may take (a round stops
#: sending after a quarter of it), short enough that a dead holder on another host is
#: replaced within a minute
LEASE = timedelta(seconds=60)
#: the pause of a round that found nothing to send (or found the cursor claimed elsewhere)
IDLE_SECONDS = 0.5
#: the first and the longest wait after a failed connection (doubling in between)
RETRY_FIRST, RETRY_MAX = 1.0, 30.0
#: how long a hole in the ids may be waited for before it is taken for a rolled-back insert
GAP_WAIT = 30.0


@dataclass(frozen=True, slots=True)
class _Cursor:
    last_id: int
    claimed_by: str | None
    claimed_until: datetime


class Forwarder:
    """Sends the audit trail to one syslog target from a daemon thread, while it holds the claim.

    Built by `start_forwarder`; the keyword arguments exist so that tests can shorten the waits.
    """

    def __init__(
        self,
        db: Database,
        target: Target,
        *,
        owner: str,
        ae_title: str,
        ca: Path | None = None,
        batch: int = BATCH,
        lease: timedelta = LEASE,
        idle: float = IDLE_SECONDS,
        retry: tuple[float, float] = (RETRY_FIRST, RETRY_MAX),
        gap_wait: float = GAP_WAIT,
    ) -> None:
        self.db = db
        self.target = target
        self.owner = owner
        self.ae_title = ae_title
        self.batch = max(1, min(batch, BATCH))
        self.lease = lease
        self.idle = idle
        self.retry = retry
        self.gap_wait = gap_wait
        self.hostname = socket.gethostname()
        self._sender = SyslogSender(target, ca=ca)
        self._key = str(target)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gap: tuple[int, float] | None = None  # the first missing id seen, and when

    def start(self) -> None:
        """Forward from now on, in a daemon thread (a second call does nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-forward", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop forwarding, close the connection and give up the claim.

        Giving it up lets another process's forwarder take over at its next round instead of
        after the lease; records sent but not yet behind the cursor are sent again by it.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._sender.close()
        try:
            with self.db.write() as session:
                session.execute(
                    update(AuditCursor)
                    .where(AuditCursor.target == self._key, AuditCursor.claimed_by == self.owner)
                    .values(claimed_by=None, claimed_until=None)
                )
        except SQLAlchemyError as exc:  # the lease runs out instead
            event(log, "audit.forward.release_failed", level=logging.WARNING, target=self._key, reason=_why(exc))

    def _run(self) -> None:
        event(log, "audit.forward.started", target=self._key, owner=self.owner)
        wait = self.retry[0]
        failing = False
        while not self._stop.is_set():
            try:
                sent = self.round()
            except OSError as exc:  # the receiver: unreachable, refused, TLS, timed out
                self._sender.close()
                event(
                    log,
                    "audit.forward.unreachable",
                    level=logging.WARNING,
                    target=self._key,
                    reason=_why(exc),
                    retry_in=wait,
                )
            except SQLAlchemyError as exc:  # the database may be away for a while
                event(log, "audit.forward.database_failed", level=logging.WARNING, target=self._key, reason=_why(exc))
            except Exception as exc:  # this thread's last-resort guard: keep forwarding
                event(log, "audit.forward.failed", level=logging.ERROR, target=self._key, reason=_why(exc))
            else:
                if failing:
                    event(log, "audit.forward.resumed", target=self._key)
                failing = False
                wait = self.retry[0]
                if sent == 0:
                    self._stop.wait(self.idle)
                continue
            failing = True
            self._stop.wait(wait)
            wait = min(wait * 2, self.retry[1])

    def round(self) -> int:
        """One round: claim or renew, read a batch, send it, move the cursor. How many were sent.

        Raises `OSError` when the receiver could not be reached (the cursor stays where the
        last sent record left it) and `SQLAlchemyError` when the database could not.
        """
        last_id = self._claim()
        if last_id is None:
            return 0
        with self.db.read() as session:
            records = session.scalars(
                select(AuditRecord).where(AuditRecord.id > last_id).order_by(AuditRecord.id).limit(self.batch)
            ).all()
        records = self._without_gap(last_id, records)
        if not records:
            return 0
        # The claim has at least half its lease left (`_claim` renews below that): stop sending
        # after a quarter, so that the cursor moves while the claim still holds.
        deadline = time.monotonic() + self.lease.total_seconds() / 4
        sent = 0
        try:
            for record in records:
                if self._stop.is_set() or time.monotonic() > deadline:
                    break
                self._sender.send(self._syslog(record))
                sent += 1
        finally:
            if sent:
                self._advance(records[sent - 1].id)
        return sent

    def _syslog(self, record: AuditRecord) -> bytes:
        """The record as RFC 5424: authpriv.notice for a success, authpriv.warning for a refusal,
        a failure or an emergency access, which a SIEM is to look at."""
        xml = atna.message(record, ae_title=self.ae_title, host=self.hostname)
        ok = record.outcome == "ok" and not record.reason
        return syslog_message(
            xml, time=record.time, severity=SEVERITY_NOTICE if ok else SEVERITY_WARNING, hostname=self.hostname
        )

    def _claim(self) -> int | None:
        """The cursor's position if this process holds (or now takes) the claim; else None.

        A read first: the holder renews only once half its lease is gone, and the others see a
        live claim without taking SQLite's write lock.
        """
        now = datetime.now(UTC)
        cursor = self._read_cursor()
        if cursor is not None and cursor.claimed_by == self.owner and cursor.claimed_until - now > self.lease / 2:
            return cursor.last_id
        if cursor is not None and not self._takeable(cursor, now):
            return None
        with self.db.write() as session:
            self._ensure_row(session)
            row = session.get(AuditCursor, self._key, populate_existing=True)
            if row is None:
                return None
            seen = _Cursor(int(row.last_id), row.claimed_by, _aware(row.claimed_until))
            if not self._takeable(seen, now):
                return None
            taken = session.execute(
                update(AuditCursor)
                .where(AuditCursor.target == self._key, AuditCursor.claimed_by.is_not_distinct_from(seen.claimed_by))
                .values(claimed_by=self.owner, claimed_until=now + self.lease)
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult
                return None
        if seen.claimed_by != self.owner:
            event(
                log,
                "audit.forward.claimed",
                target=self._key,
                owner=self.owner,
                previous_owner=seen.claimed_by,
                last_id=seen.last_id,
            )
        return seen.last_id

    def _takeable(self, cursor: _Cursor, now: datetime) -> bool:
        holder = cursor.claimed_by
        return holder is None or holder == self.owner or cursor.claimed_until <= now or owner_is_gone(holder)

    def _read_cursor(self) -> _Cursor | None:
        with self.db.read() as session:
            row = session.execute(
                select(AuditCursor.last_id, AuditCursor.claimed_by, AuditCursor.claimed_until).where(
                    AuditCursor.target == self._key
                )
            ).first()
        if row is None:
            return None
        return _Cursor(int(row.last_id), row.claimed_by, _aware(row.claimed_until))

    def _ensure_row(self, session: Session) -> None:
        """The target's cursor, at the start of the trail, if it has none yet (two may race)."""
        values = {"target": self._key, "last_id": 0, "claimed_by": None, "claimed_until": None}
        ins = dialect_insert(session.get_bind().dialect.name, AuditCursor)
        session.execute(ins.values(**values).on_conflict_do_nothing(index_elements=["target"]))

    def _advance(self, last_id: int) -> None:
        """Move the cursor past what was sent, if the claim is still this process's."""
        with self.db.write() as session:
            moved = session.execute(
                update(AuditCursor)
                .where(
                    AuditCursor.target == self._key,
                    AuditCursor.claimed_by == self.owner,
                    AuditCursor.last_id < last_id,
                )
                .values(last_id=last_id)
                .execution_options(synchronize_session=False)
            )
        if moved.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult
            # Another process took the claim (this one stalled past its lease): it sends the
            # batch again, which at-least-once allows.
            event(log, "audit.forward.claim_lost", level=logging.WARNING, target=self._key, owner=self.owner)

    def _without_gap(self, last_id: int, records: Sequence[AuditRecord]) -> list[AuditRecord]:
        """The records up to the first hole in the ids that may still fill (module docstring)."""
        expected = last_id + 1
        kept: list[AuditRecord] = []
        for record in records:
            if record.id != expected:
                if self._gap is None or self._gap[0] != expected:
                    self._gap = (expected, time.monotonic())
                if time.monotonic() - self._gap[1] < self.gap_wait:
                    break
                event(
                    log,
                    "audit.forward.gap_skipped",
                    level=logging.WARNING,
                    target=self._key,
                    ids=f"{expected}-{record.id - 1}",
                )
                self._gap = None
            kept.append(record)
            expected = record.id + 1
        return kept


def start_forwarder(db: Database, settings: Settings, *, owner: str) -> Forwarder | None:
    """Forward the audit trail to `settings.audit_syslog` from a daemon thread; None when unset.

    `owner` names this process in the cursor's claim (`storage.archive.process_owner`, as
    `Archive.owner`), so that a forwarder of this host can tell when its holder has died.

    Raises
    ------
    ValueError
        `PACS_AUDIT_SYSLOG` is not a `tcp://host:port` or `tls://host[:port]` URL.
    """
    if not settings.audit_syslog.strip():
        return None
    forwarder = Forwarder(
        db,
        Target.parse(settings.audit_syslog),
        owner=owner,
        ae_title=settings.ae_title,
        ca=settings.audit_syslog_ca,
    )
    forwarder.start()
    return forwarder


def _aware(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # SQLite returns naive ones


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
