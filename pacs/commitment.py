"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION, then N-EVENT-REPORT.

The N-ACTION is answered at once: a success only says the request was received (J.3.2.1.3).
It also promises a report, so the request is first kept in the index (`storage.workflow.commitment`),
and only then acknowledged; it is forgotten once its report is delivered or given up. Which
instances are committed is decided when the report is sent, by a background thread, so no
association waits on the report and the report never races the N-ACTION response on the wire.

Where the report goes (J.3.3.1.2 allows the same association or another one): on the same
association when the requester is still on it, and idle, a second after the N-ACTION
response; a requester that is waiting for its report does exactly that. Otherwise (it
released, or it went on with other requests, which pynetdicom's acceptor could not tell apart
from the answer to the report) a new association is opened to the calling AE's registered
address, proposing the SCP role for Storage Commitment (the requester accepts the SCU role,
J.3.3.1.3). A failed report is retried a few times on a new association before it is given up.

Retries, and reports a killed process never sent, are found by every SCP process sweeping the
kept requests every few seconds (and once at start): a process claims a request before it
reports, so with `--dicom-workers N` or several servers on one database each report is sent once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import N_ACTION_RSP
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from pacs.policy import audit, context_for
from pacs.status import SUCCESS, failure
from storage.access.context import Channel, Context
from storage.access.policy import require_read
from storage.archive import Archive
from storage.errors import InvalidCommitmentRequest, StorageError
from storage.logs import event as log_event
from storage.metrics import COMMITMENT_REPORTS
from storage.workflow.commitment import (
    Pending,
    Request,
    Result,
    any_due,
    claim_due,
    evaluate,
    keep,
    postpone,
    report_address,
    request,
    settle,
)

log = logging.getLogger(__name__)

#: The well-known Storage Commitment Push Model SOP Instance (PS3.4 J.3.5)
INSTANCE_UID = "1.2.840.10008.1.20.1.1"
REQUEST_STORAGE_COMMITMENT = 1  # the only Action Type ID (PS3.4 J.3.2.1)
NO_SUCH_ACTION = 0x0123
INVALID_OBJECT_INSTANCE = 0x0117

#: How long after the N-ACTION response a requester still on the association, and silent, is
#: taken to be waiting there for its report: a requester that releases at once does so within
#: a round trip.
GRACE_SECONDS = 1.0
#: Waits of the retries on a new association after the first attempt failed.
RETRY_DELAYS = (2.0, 10.0, 60.0, 300.0)
#: Connection, association and answer timeouts of a report's own association.
REPORT_TIMEOUT = 30.0
#: How often each SCP process looks for kept requests whose report is due.
SWEEP_SECONDS = 2.0
#: How long a claim on a kept request holds: longer than one attempt can take (connection,
#: association and answer, each up to REPORT_TIMEOUT). A claim of a dead process on this host
#: is taken over at once; one of another host's process, when it runs out.
CLAIM_LEASE = timedelta(seconds=4 * REPORT_TIMEOUT)


def handle(event: Event, archive: Archive, reporter: Reporter) -> tuple[int | Dataset, None]:
    """EVT_N_ACTION: check and acknowledge the request; `reporter` sends the report in the background."""
    assoc, action = event.assoc, cast(N_ACTION, event.request)
    ctx = context_for(assoc, archive)
    try:
        require_read(ctx, "N-ACTION")  # an unregistered AE: 0x0124 Not Authorized
        if action.ActionTypeID != REQUEST_STORAGE_COMMITMENT:
            return NO_SUCH_ACTION, None
        if action.RequestedSOPInstanceUID != INSTANCE_UID:
            return INVALID_OBJECT_INSTANCE, None
        req = _parse(event)
        audit(ctx, "N-ACTION", detail=f"storage commitment of {len(req.references)} instances")
    except StorageError as exc:
        log_event(
            log,
            "dimse.commitment.refused",
            level=logging.WARNING,
            calling_ae=ctx.principal.sub,
            status=f"0x{exc.status:04X}",
            detail=exc.detail,
        )
        return failure(exc), None
    job_id = reporter.keep(ctx, req)  # kept before it is acknowledged: the report survives a crash
    reporter.submit(assoc, ctx, req, int(action.MessageID or 0), job_id)
    log_event(
        log,
        "dimse.commitment.requested",
        calling_ae=ctx.principal.sub,
        transaction_uid=req.transaction_uid,
        references=len(req.references),
    )
    return SUCCESS, None


def _parse(event: Event) -> Request:
    try:  # pydicom decodes lazily: a malformed data set raises on first access
        info = event.action_information
        items = [
            (str(i.get("ReferencedSOPClassUID", "")), str(i.get("ReferencedSOPInstanceUID", "")))
            for i in info.get("ReferencedSOPSequence", [])
        ]
        transaction_uid = str(info.get("TransactionUID", ""))
    except Exception as exc:
        raise InvalidCommitmentRequest(f"Action Information cannot be decoded: {type(exc).__name__}") from exc
    return request(transaction_uid, items)


def event_information(result: Result, retrieve_ae: str) -> Dataset:
    """The N-EVENT-REPORT's Event Information (PS3.4 Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = result.transaction_uid
    ds.RetrieveAETitle = retrieve_ae  # where the committed instances can be retrieved from
    if result.committed:
        ds.ReferencedSOPSequence = [_item(r.sop_class_uid, r.sop_instance_uid) for r in result.committed]
    if result.failed:
        ds.FailedSOPSequence = [
            _item(f.reference.sop_class_uid, f.reference.sop_instance_uid, f.reason) for f in result.failed
        ]
    return ds


def _item(sop_class: str, sop_instance: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if reason is not None:
        item.FailureReason = reason
    return item


class _Undelivered(Exception):
    """One attempt to deliver a report failed; the message says why (for the log)."""


class _Watch:
    """What the requester does after its N-ACTION: whether the response left, whether it spoke since."""

    def __init__(self, assoc: Association, message_id: int) -> None:
        self.assoc, self.message_id = assoc, message_id
        self.responded = threading.Event()
        self.busy = False
        assoc.bind(evt.EVT_DIMSE_SENT, self._sent)
        assoc.bind(evt.EVT_DIMSE_RECV, self._received)

    def _sent(self, event: Event) -> None:
        msg = event.message
        if isinstance(msg, N_ACTION_RSP) and msg.command_set.MessageIDBeingRespondedTo == self.message_id:
            self.responded.set()

    def _received(self, _event: Event) -> None:
        if self.responded.is_set():
            self.busy = True

    def waiting_here(self) -> bool:
        return self.responded.is_set() and not self.busy and self.assoc.is_established

    def close(self) -> None:
        self.assoc.unbind(evt.EVT_DIMSE_SENT, self._sent)
        self.assoc.unbind(evt.EVT_DIMSE_RECV, self._received)


@dataclass
class _Job:
    """One delivery attempt of a kept request; `watch` is set for the first, made by the process
    that answered the N-ACTION while its association may still be open."""

    id: int
    ctx: Context  # the requester's, as it was when it asked
    request: Request
    attempts: int  # made before this one
    watch: _Watch | None = None  # holds the association


class Reporter:
    """The reports of one SCP: a sweeping thread, and a thread per delivery attempt."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._sweeper: threading.Thread | None = None

    def start(self) -> None:
        """Sweep the kept requests from now on (first at once: a dead process's may be waiting)."""
        with self._lock:
            if self._sweeper is None and not self._stop.is_set():
                self._sweeper = threading.Thread(target=self._sweep, name="stgcmt-sweep", daemon=True)
                self._sweeper.start()

    def keep(self, ctx: Context, req: Request) -> int:
        """Keep an acknowledged request in the index, claimed for this process's first attempt."""
        with self.archive.db.write() as session:
            return keep(session, ctx, req, self.archive.owner, CLAIM_LEASE)

    def submit(self, assoc: Association, ctx: Context, req: Request, message_id: int, job_id: int) -> None:
        self._spawn(_Job(job_id, ctx, req, 0, _Watch(assoc, message_id)))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sweeping and waiting; give reports being sent a moment to finish. A request not
        reported stays kept, and the next SCP process to sweep reports it."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [*self._threads, *([self._sweeper] if self._sweeper else [])]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _spawn(self, job: _Job) -> None:
        thread = threading.Thread(target=self._run, args=(job,), name="stgcmt-report", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _sweep(self) -> None:
        while True:
            try:
                due = self._claim_due()
            except Exception as exc:  # the database may be away for a while: try again next time
                log_event(log, "dimse.commitment.sweep_failed", level=logging.WARNING, reason=_why(exc))
                due = []
            for pending in due:
                if pending.previous_owner is not None:
                    log_event(
                        log,
                        "dimse.commitment.resumed",
                        transaction_uid=pending.request.transaction_uid,
                        calling_ae=pending.principal.sub,
                        previous_owner=pending.previous_owner,
                    )
                ctx = Context(
                    pending.principal,
                    Channel.DIMSE,
                    audit=self.archive.audit,
                    care_relationship=self.archive.settings.care_relationship,
                )
                self._spawn(_Job(pending.id, ctx, pending.request, pending.attempts))
            if self._stop.wait(SWEEP_SECONDS):
                return

    def _claim_due(self) -> list[Pending]:
        with self.archive.db.read() as session:
            if not any_due(session):
                return []
        with self.archive.db.write() as session:
            return claim_due(session, self.archive.owner, CLAIM_LEASE)

    def _run(self, job: _Job) -> None:
        try:
            self._attempt(job)
        except Exception as exc:  # this thread's last-resort guard: the claim runs out, then a sweep retries
            log_event(log, "dimse.commitment.failed", level=logging.ERROR, **self._fields(job, None), reason=_why(exc))
        finally:
            if job.watch is not None:
                job.watch.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _attempt(self, job: _Job) -> None:
        if job.watch is not None:
            job.watch.responded.wait(REPORT_TIMEOUT)  # never report before the N-ACTION response
            if self._stop.wait(GRACE_SECONDS):
                self._postpone(job, job.attempts, 0.0)  # stopped: free for the next process at once
                return
        attempt = job.attempts + 1
        result: Result | None = None
        try:
            result = self._evaluate(job)
            how = self._send_somewhere(job, result)
        except Exception as exc:  # any failure of this attempt: retried later, or given up
            self._failed(job, attempt, result, _why(exc))
            return
        self._forget(job)
        COMMITMENT_REPORTS.labels(how).inc()
        log_event(log, "dimse.commitment", **self._fields(job, result), sent=how, attempts=attempt)

    def _failed(self, job: _Job, attempt: int, result: Result | None, reason: str) -> None:
        if attempt > len(RETRY_DELAYS):
            self._forget(job)
            COMMITMENT_REPORTS.labels("undelivered").inc()
            fields = {**self._fields(job, result), "sent": "undelivered", "attempts": attempt, "reason": reason}
            log_event(log, "dimse.commitment", level=logging.ERROR, **fields)
            return
        retry_in = RETRY_DELAYS[attempt - 1]
        self._postpone(job, attempt, retry_in)
        COMMITMENT_REPORTS.labels("retry").inc()
        fields = {**self._fields(job, result), "attempt": attempt, "reason": reason, "retry_in": retry_in}
        log_event(log, "dimse.commitment.retry", level=logging.WARNING, **fields)

    def _forget(self, job: _Job) -> None:
        with self.archive.db.write() as session:
            settle(session, job.id, self.archive.owner)

    def _postpone(self, job: _Job, attempts: int, delay: float) -> None:
        with self.archive.db.write() as session:
            postpone(session, job.id, self.archive.owner, attempts=attempts, delay=delay)

    @staticmethod
    def _fields(job: _Job, result: Result | None) -> dict[str, Any]:
        return {
            "transaction_uid": job.request.transaction_uid,
            "calling_ae": job.ctx.principal.sub,
            "committed": len(result.committed) if result else None,
            "failed": len(result.failed) if result else None,
        }

    def _send_somewhere(self, job: _Job, result: Result) -> str:
        """The same association if the requester waits there, else a new one to its address."""
        if job.watch is not None and job.watch.waiting_here():
            self._send(job.watch.assoc, result)
            return "same-association"
        self._send_new(job, result)
        return "new-association"

    def _evaluate(self, job: _Job) -> Result:
        with self.archive.db.read() as session:
            return evaluate(session, job.ctx, job.request)

    def _send(self, assoc: Association, result: Result) -> None:
        info = event_information(result, self.archive.settings.ae_title)
        status, _ = assoc.send_n_event_report(info, result.event_type, StorageCommitmentPushModel, INSTANCE_UID)
        code = status.get("Status")
        if code is None:
            raise _Undelivered("no answer to the N-EVENT-REPORT (association ended or timed out)")
        if code_to_category(code) not in (STATUS_SUCCESS, STATUS_WARNING):
            raise _Undelivered(f"the requester answered the N-EVENT-REPORT with 0x{code:04X}")

    def _send_new(self, job: _Job, result: Result) -> None:
        with self.archive.db.read() as session:
            address = report_address(session, job.ctx.principal.sub)
        if address is None:
            raise _Undelivered(
                f"no address is registered for AE {job.ctx.principal.sub} (pacs org add --ae AET@host:port)"
            )
        ae = AE(ae_title=self.archive.settings.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = REPORT_TIMEOUT
        assoc = ae.associate(
            address[0],
            address[1],
            contexts=[build_context(StorageCommitmentPushModel)],
            ae_title=job.ctx.principal.sub,
            ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)],  # the archive reports: SCP
        )
        if not assoc.is_established:
            raise _Undelivered(f"association to {address[0]}:{address[1]} {_why_not(assoc)}")
        try:
            self._send(assoc, result)
        finally:
            if assoc.is_established:
                assoc.release()


def _why(exc: Exception) -> str:
    return str(exc) if isinstance(exc, _Undelivered) else f"{type(exc).__name__}: {exc}"


def _why_not(assoc: Association) -> str:
    if assoc.is_rejected:
        return "rejected"
    return "aborted" if assoc.is_aborted else "could not be opened"
