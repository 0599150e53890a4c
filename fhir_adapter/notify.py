"""Subscription notifications: matched and sent by a daemon thread of every gateway process.

Each round does two things (`storage.workflow.subscriptions` keeps the rules and the state):

- **match**: for each live subscription, the studies its owner may see that match its criteria
  (the ImagingStudy search of the criteria, `storage.query.imaging.changed`) and arrived since
  its watermark are recorded as pending deliveries;
- **deliver**: due deliveries are claimed, each study is read again as the owner (a study that
  is gone, or that the owner may no longer see, is dropped, not sent), and POSTed to the
  subscription's endpoint with its headers: the ImagingStudy as `application/fhir+json` when the
  subscription asked for a payload, an empty body (a ping) when not. A 2xx is delivered; anything
  else (another status, a refused connection, `TIMEOUT`) is retried with backoff.

Every send is an export of patient data on the subscriber's behalf, audited as one (`export`,
channel fhir, the owner as actor, the endpoint's host as the other party) before its outcome is
stored: an audit trail that cannot record leaves the delivery pending, to be sent (and
recorded) again. Redirects are not followed and the receiver's answer is not read, so an
endpoint cannot lead the archive elsewhere or make it hold a large body. Processes share the
work through the database only; any of them sends what another matched.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
import orjson

from fhir_adapter import imaging_study
from fhir_adapter.outcome import FhirError
from fhir_adapter.subscription import query_of
from storage.access.context import Channel, Context
from storage.access.principal import Principal
from storage.archive import Archive
from storage.errors import NotFound
from storage.logs import event
from storage.query import imaging
from storage.query.search import Query
from storage.workflow import subscriptions
from storage.workflow.subscriptions import Due, Retry, Watch

log = logging.getLogger(__name__)

#: the pause between rounds
IDLE_SECONDS = 1.0
#: the longest a receiver may take to answer (connect, send, first byte)
TIMEOUT = 10.0
#: a study whose last change is this close to another's is read again on the next page
_TICK = timedelta(microseconds=1)
#: how far a subscription's watermark may lag when nothing new matched before it is written
#: (the next round re-reads from it anyway): an idle subscription costs a read a round, and a
#: write only this often
WATERMARK_STEP = timedelta(seconds=20)


class Notifier:
    """Matches and sends Subscription notifications from a daemon thread, until stopped."""

    def __init__(self, archive: Archive, *, idle: float = IDLE_SECONDS, timeout: float = TIMEOUT) -> None:
        self.archive = archive
        self.idle = idle
        self.retry = Retry.of(archive.settings)
        self.quiet = timedelta(seconds=archive.settings.subscription_quiet)
        self._client = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fhir-notify", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop after the send in progress; what is claimed and unsent goes to another process
        when its claim lapses."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.match()
                sent = self.deliver()
            except Exception as exc:  # this thread's last-resort guard (the database may be away)
                event(log, "fhir.subscription.round_failed", level=logging.WARNING, reason=_why(exc))
                sent = 0
            if not sent:
                self._stop.wait(self.idle)

    def match(self) -> None:
        """Record the deliveries of studies that arrived since each subscription last looked."""
        until = datetime.now(UTC) - self.quiet
        with self.archive.db.read() as session:
            watches = subscriptions.to_match(session, until)
        for watch in watches:
            try:
                self._match_one(watch, until)
            except FhirError as exc:  # a criteria this version no longer reads: the others go on
                event(
                    log,
                    "fhir.subscription.unmatched",
                    level=logging.WARNING,
                    subscription=watch.id,
                    reason=exc.diagnostics[:200],
                )

    def _match_one(self, watch: Watch, until: datetime) -> None:
        query = query_of(watch.criteria)
        keys, _updated = imaging_study.keys_of(query)
        subject = imaging_study.patient_of(query)
        ctx = self._context(watch.owner, "")
        since = watch.since
        while True:
            with self.archive.db.read() as session:
                found = imaging.changed(
                    Query("STUDY", keys), ctx, session=session, since=since, until=until, patient=subject
                )
                new = subscriptions.unrecorded(session, watch.id, found)
            whole = len(found) < imaging.MAX_CHANGED
            mark = until if whole else found[-1][1]
            if new or mark - watch.checked_until > WATERMARK_STEP:
                with self.archive.db.write() as session:
                    subscriptions.record_matches(session, watch.id, new, mark)
            if whole or self._stop.is_set():
                return
            since = max(found[-1][1] - _TICK, found[0][1])  # the last change's twins are read again

    def deliver(self) -> int:
        """Send the due notifications this process could claim; how many were attempted.

        Sends stop at half the claims' lease (slow receivers time out one after another), and
        what was claimed and not sent is released for the next round, here or elsewhere."""
        with self.archive.db.write() as session:
            due = subscriptions.claim_due(session, self.archive.owner)
        deadline = time.monotonic() + subscriptions.LEASE.total_seconds() / 2
        sent = 0
        for item in due:
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            self._deliver_one(item)
            sent += 1
        if sent < len(due):
            with self.archive.db.write() as session:
                subscriptions.release(session, due[sent:], self.archive.owner)
        return sent

    def _deliver_one(self, due: Due) -> None:
        host = urlsplit(due.endpoint).hostname or ""
        ctx = self._context(due.owner, host)
        owner = self.archive.owner
        try:
            with self.archive.db.read() as session:
                found = imaging.one(due.study_uid, ctx, session=session)
        except NotFound:
            with self.archive.db.write() as session:
                subscriptions.dropped(session, due, owner, "the study is gone, or its subscriber may no longer see it")
            return
        row = found.studies[0]
        body = orjson.dumps(imaging_study.resource(row, found)) if due.payload else b""
        error = self._post(due, body)
        detail = f"Subscription/{due.subscription_id} notification to {host}"[:200]
        ctx.audit.record(
            ctx.event(
                "export",
                "ok" if error is None else "failed",
                study=due.study_uid,
                patient=row.patient_id,
                detail=detail,
            )
        )
        with self.archive.db.write() as session:
            if error is None:
                subscriptions.delivered(session, due, owner)
                given_up = False
            else:
                given_up = subscriptions.failed(session, due, owner, error, self.retry)
        fields = {"subscription": due.subscription_id, "delivery": due.id, "attempt": due.attempts + 1}
        if error is None:
            event(log, "fhir.subscription.delivered", **fields)
            return
        event(log, "fhir.subscription.failed", level=logging.WARNING, reason=error, **fields)
        if given_up:
            event(log, "fhir.subscription.error", level=logging.WARNING, subscription=due.subscription_id)

    def _post(self, due: Due, body: bytes) -> str | None:
        """POST one notification; None when the receiver took it, else what went wrong."""
        headers = {"User-Agent": "municipal-pacs"}
        for header in due.headers:
            name, _, value = header.partition(":")
            headers[name.strip()] = value.strip()
        if body:
            headers["Content-Type"] = due.payload
        try:
            with self._client.stream("POST", due.endpoint, content=body, headers=headers) as answer:
                status = answer.status_code
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {str(exc)[:200]}"
        return None if 200 <= status < 300 else f"the endpoint answered HTTP {status}"

    def _context(self, owner: Principal, host: str) -> Context:
        return Context(
            owner,
            Channel.FHIR,
            host,
            self.archive.audit,
            care_relationship=self.archive.settings.care_relationship,
        )


def start(archive: Archive) -> Notifier:
    """The notifier of this process, started."""
    notifier = Notifier(archive)
    notifier.start()
    return notifier


def _why(exc: BaseException) -> str:
    """What went wrong, without the statement's parameters (they may name a patient)."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"[:300]
