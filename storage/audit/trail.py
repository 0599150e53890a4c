"""The audit recorder of a process: every access event becomes a hash-chained row, in batches.

DESIGN.md "Access, shares, emergency access, consent and audit": a record is committed before
or with the answer, or the operation fails. So `record` returns only once its row is committed,
and raises `AuditUnavailable` when it could not be; callers answer after it. Writing one
transaction per event would cost every request a commit; instead one writer thread per process
takes whatever events are waiting, commits them in one transaction, and wakes their callers
(group commit, as databases do with their own log): under load a batch grows, and a lone
request pays one small commit. A caller that may block commits in its own thread when nobody
else is committing (`submit(lead=True)`), taking the others' waiting records along. The writer
also fills in, for events that name a study, the study's patient and, for a read across
organizations, the study's owner (one query per batch), so that the request paths do not look
them up.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, insert, literal, or_, select, union_all
from sqlalchemy.exc import DBAPIError

from storage import metrics
from storage.access.context import AccessEvent
from storage.access.policy import care_of
from storage.audit.chain import GENESIS, record_hash
from storage.errors import OutOfResources
from storage.index.db import Database, db_now
from storage.index.models import AuditRecord, Share, Study, StudyOwner, utcnow
from storage.logs import event

log = logging.getLogger(__name__)

#: the most events one transaction writes
BATCH = 512
#: how long a caller waits for its record before the operation fails
WAIT_SECONDS = 30.0
_LIMITS = {"actor": 256, "org": 64, "source": 64, "action": 128, "patient": 64, "study": 64, "reason": 256}


def _printable(text: str) -> str:
    """`text` with control characters shown as escapes: a peer's bytes reach records (a query's
    PatientID), and a NUL would make PostgreSQL refuse the whole batch."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


class AuditUnavailable(OutOfResources):
    """The audit record could not be committed, so the operation it records must not proceed."""

    reason = "audit_unavailable"


@dataclass(slots=True)
class _Pending:
    access: AccessEvent
    done: Future[None]


def _saw(access: AccessEvent, owners: tuple[str, ...], shared: tuple[str, ...]) -> bool:
    """Whether the record may name the patient and owner of the study the event names.

    A successful event names them when the study was the caller's to read: an admin or the
    console (no organization), an emergency access, an owner, or an organization it is shared
    with; a query that named another's study and found nothing read nothing of it, and must not
    look like a read across organizations. A refusal names them: a data-protection officer asks
    who tried to reach a patient's images, and the outcome says nothing was read.
    """
    if access.outcome != "ok":
        return True
    return access.org is None or bool(access.reason) or access.org in owners or access.org in shared


class AuditTrail:
    """The recorder every request context of this process records through (`Archive.audit`)."""

    def __init__(self, db: Database, owner: str | None = None) -> None:
        self._db = db
        #: records not yet committed, in arrival order; whoever leads (`_leading`) commits them
        self._waiting: list[_Pending] = []
        self._chain = f"{owner or f'{socket.gethostname()}:{os.getpid()}'}:{secrets.token_hex(4)}"
        self._seq, self._prev = 0, GENESIS
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._leading = False
        self._thread: threading.Thread | None = None
        self._closed = False
        self._conn: Connection | None = None

    @property
    def chain(self) -> str:
        return self._chain

    def submit(self, access: AccessEvent, *, lead: bool = False) -> Future[None]:
        """Queue `access`; the future completes once its row is committed (or fails).

        With `lead`, a caller that may block (a worker thread, not the event loop) commits in
        its own thread when no commit is under way, and returns with its record committed: no
        hand-off to the writer thread and back, whose wake-ups and turns at the interpreter
        lock cost a lone request more than the commit itself. Records queued meanwhile by
        others go in the same transaction (group commit); once its own is in, the caller hands
        what is left to the writer thread.
        """
        done: Future[None] = Future()
        pending = _Pending(access, done)
        with self._lock:
            if self._closed:
                done.set_exception(AuditUnavailable("the audit trail of this process is closed"))
                return done
            self._waiting.append(pending)
            if self._leading or not lead:
                self._start()
                if not self._leading:
                    self._wake.notify()
                return done
            self._leading = True
        self._lead(pending)
        return done

    def record(self, access: AccessEvent) -> None:
        """Record `access` and return once it is committed (from a thread that may block).

        Raises
        ------
        AuditUnavailable
            The record could not be committed in time: the caller must not answer success.
        """
        try:
            self.submit(access, lead=True).result(timeout=WAIT_SECONDS)
        except AuditUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a timeout or the database's error, in one meaning
            raise AuditUnavailable(f"the audit record could not be written: {type(exc).__name__}") from exc

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        with self._lock:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=WAIT_SECONDS)
            return
        with self._lock:  # no writer thread: every record so far was committed by its caller
            leftover = not self._leading and bool(self._waiting)
            if leftover:
                self._leading = True
        if leftover:
            self._lead(None)
        with self._lock:
            conn = None if self._leading else self._conn  # a leader still committing keeps it
            if conn is not None:
                self._conn = None
        if conn is not None:
            conn.close()

    def _start(self) -> None:
        """Start the writer thread, once (the caller holds `_lock`)."""
        if self._thread is None and not self._closed:
            thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            thread.start()
            self._thread = thread

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self._lock:
                conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def _loop(self) -> None:
        """The writer thread: lead whenever records wait and nobody else leads; stop once closed
        and nothing waits."""
        while True:
            with self._lock:
                while self._leading or not self._waiting:
                    if self._closed and not self._waiting and not self._leading:
                        return
                    self._wake.wait(timeout=1.0)
                self._leading = True
            self._lead(None)

    def _lead(self, own: _Pending | None) -> None:
        """Commit waiting records, a batch at a time, until `own` is committed (or, for the
        writer thread, until none wait); then give up the lead, waking the writer thread for
        what is left."""
        while True:
            with self._lock:
                batch = self._waiting[:BATCH]
                del self._waiting[:BATCH]
                if not batch or (own is not None and own.done.done()):
                    self._waiting[0:0] = batch
                    self._leading = False
                    if self._waiting:
                        self._start()
                        self._wake.notify()
                    return
            self._write(batch)

    def _write(self, batch: list[_Pending]) -> None:
        """Commit `batch`; when that fails, each record alone, so one bad record fails only its caller."""
        try:
            self._commit(batch)
        except Exception as exc:  # noqa: BLE001 - every waiting caller learns it; the chain stays as it was
            if len(batch) > 1:
                for item in batch:
                    self._write([item])
                return
            event(log, "audit.write_failed", level=logging.ERROR, records=1, error=type(exc).__name__)
            batch[0].done.set_exception(AuditUnavailable(f"the audit record could not be written: {exc}"))

    def _commit(self, batch: list[_Pending]) -> None:
        """Commit `batch` on the kept connection; once more on a new one when the database had
        dropped the kept one (a restart, a failover: nothing pings it, unlike the pool's)."""
        try:
            self._commit_on(self._connection(), batch)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            event(log, "audit.reconnected", level=logging.WARNING)
            self._commit_on(self._connection(), batch)

    def _commit_on(self, conn: Connection, batch: list[_Pending]) -> None:
        try:
            with conn.begin():  # the lookup and the insert in one transaction
                rows, seq, prev = self._rows(conn, batch, self._seq, self._prev)
                conn.execute(insert(AuditRecord), rows)
        except Exception:
            self._conn = None  # a broken connection is not used again
            conn.close()
            raise
        self._seq, self._prev = seq, prev
        metrics.AUDIT_RECORDS.inc(len(batch))
        for item in batch:
            if item.access.reason and item.access.outcome != "refused":
                metrics.EMERGENCY_ACCESS.inc()
            item.done.set_result(None)

    def _connection(self) -> Connection:
        """The writer's own connection, kept: a pool checkout with its ping, per batch, was half of
        what a lone request paid for its record (0.6 of 1.1 ms on SQLite)."""
        if self._conn is None:
            self._conn = self._db.write_engine.connect()
        return self._conn

    def _rows(
        self, conn: Connection, batch: list[_Pending], seq: int, prev: str
    ) -> tuple[list[dict[str, Any]], int, str]:
        studies = _studies(conn, {p.access.study for p in batch if p.access.study and p.access.patient is None})
        cared = _cared(conn, batch, studies)
        rows = []
        now = utcnow()
        for item in batch:
            a = item.access
            patient, owners, shared = studies.get(a.study or "", (None, (), ()))
            by_care = (a.org, a.study) in cared
            if not (_saw(a, owners, shared) or by_care):
                patient, owners = None, ()  # a request that named a study it cannot see read nothing of it
            seq += 1
            values: dict[str, Any] = {
                "chain": self._chain,
                "seq": seq,
                "prev_hash": prev,
                "time": now,
                "actor": a.actor,
                "org": a.org,
                "source": a.source,
                "channel": a.channel.value,
                "action": a.action,
                "patient": a.patient if a.patient is not None else patient,
                "study": a.study,
                "outcome": a.outcome,
                "reason": a.reason,
                "owner_org": None if not owners or a.org in owners else owners[0],
                "detail": "; ".join(filter(None, (a.detail, "by care relationship" if by_care else "")))[:2000],
            }
            for name, limit in _LIMITS.items():
                if isinstance(values[name], str):
                    values[name] = _printable(values[name])[:limit]
            values["detail"] = _printable(values["detail"])
            values["hash"] = prev = record_hash(values)
            rows.append(values)
        return rows, seq, prev


#: a study's patient, and each organization that owns it or to which it is shared now
_OWNERS = (
    select(Study.study_uid, Study.patient_id, StudyOwner.org_id, literal("owner").label("kind"))
    .outerjoin(StudyOwner, StudyOwner.study_id == Study.id)
    .where(Study.study_uid.in_(bindparam("uids", expanding=True)))
)
_SHARED = (
    select(Study.study_uid, Study.patient_id, Share.to_org, literal("share").label("kind"))
    .join(Share, Share.study_id == Study.id)
    .where(
        Study.study_uid.in_(bindparam("uids", expanding=True)),
        Share.revoked_at.is_(None),
        or_(Share.expires_at.is_(None), Share.expires_at > db_now()),
    )
)
_OWNERS_AND_SHARES = union_all(_OWNERS, _SHARED)


def _cared(
    conn: Connection, batch: list[_Pending], studies: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]
) -> set[tuple[str | None, str | None]]:
    """The (organization, study UID) of the batch's successful reads of a study the caller's
    organization neither owns nor was shared, but reaches by care relationship
    (`storage.access.policy.care_of`): one query per such organization, none in most batches."""
    asked: dict[str, set[str]] = {}
    for item in batch:
        a = item.access
        if a.study in studies and a.org and a.outcome == "ok" and a.care_relationship and not a.reason:
            _, owners, shared = studies[a.study]
            if owners and a.org not in owners and a.org not in shared:
                asked.setdefault(a.org, set()).add(a.study)
    found: set[tuple[str | None, str | None]] = set()
    for org, uids in asked.items():
        rows = conn.scalars(select(Study.study_uid).where(Study.study_uid.in_(sorted(uids)), care_of(org)))
        found.update((org, uid) for uid in rows)
    return found


def _studies(conn: Connection, uids: set[str]) -> dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """study UID -> (its patient ID, its owners, the organizations it is shared with now), in one query."""
    if not uids:
        return {}
    patients: dict[str, str] = {}
    orgs: dict[tuple[str, str], set[str]] = {}
    for uid, patient, org, kind in conn.execute(_OWNERS_AND_SHARES, {"uids": sorted(uids)[:BATCH]}):
        patients[uid] = patient
        if org is not None:
            orgs.setdefault((uid, kind), set()).add(org)
    return {
        uid: (patient, tuple(sorted(orgs.get((uid, "owner"), ()))), tuple(sorted(orgs.get((uid, "share"), ()))))
        for uid, patient in patients.items()
    }
