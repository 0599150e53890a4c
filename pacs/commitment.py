"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION, then N-EVENT-REPORT.

The N-ACTION is answered at once: a success only says the request was received (J.3.2.1.3).
Which instances are committed is decided by `storage.commitment` and reported afterwards by a
background thread, so no association waits on the report and the report never races the
N-ACTION response on the wire.

Where the report goes (J.3.3.1.2 allows the same association or another one): on the same
association when the requester is still on it, and idle, a second after the N-ACTION
response; a requester that is waiting for its report does exactly that. Otherwise (it
released, or it went on with other requests, which pynetdicom's acceptor could not tell apart
from the answer to the report) a new association is opened to the calling AE's registered
address, proposing the SCP role for Storage Commitment (the requester accepts the SCU role,
J.3.3.1.3). A failed report is retried a few times on a new association before it is given up.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import N_ACTION_RSP
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from pacs.policy import principal_for
from pacs.status import SUCCESS, failure
from storage.access import Principal, require_read
from storage.archive import Archive
from storage.commitment import Request, Result, evaluate, report_address, request
from storage.errors import InvalidCommitmentRequest, StorageError
from storage.logs import event as log_event

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


def handle(event: Event, archive: Archive) -> tuple[int | Dataset, None]:
    """EVT_N_ACTION: check and acknowledge the request; the report follows in the background."""
    assoc, action = event.assoc, cast(N_ACTION, event.request)
    principal = principal_for(assoc, archive)
    try:
        require_read(principal, "N-ACTION")  # an unregistered AE: 0x0124 Not Authorized
        if action.ActionTypeID != REQUEST_STORAGE_COMMITMENT:
            return NO_SUCH_ACTION, None
        if action.RequestedSOPInstanceUID != INSTANCE_UID:
            return INVALID_OBJECT_INSTANCE, None
        req = _parse(event)
    except StorageError as exc:
        log_event(
            log,
            "dimse.commitment.refused",
            level=logging.WARNING,
            calling_ae=principal.sub,
            status=f"0x{exc.status:04X}",
            detail=exc.detail,
        )
        return failure(exc), None
    reporter_for(assoc.ae, archive).submit(assoc, principal, req, int(action.MessageID or 0))
    log_event(
        log,
        "dimse.commitment.requested",
        calling_ae=principal.sub,
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
    assoc: Association
    principal: Principal
    request: Request
    watch: _Watch


class Reporter:
    """The background reports of one SCP: a thread per accepted request, stopped with the SCP."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()

    def submit(self, assoc: Association, principal: Principal, req: Request, message_id: int) -> None:
        job = _Job(assoc, principal, req, _Watch(assoc, message_id))
        thread = threading.Thread(target=self._run, args=(job,), name="stgcmt-report", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel the retries still waiting; give reports being sent a moment to finish."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, job: _Job) -> None:
        try:
            self._deliver(job)
        finally:
            job.watch.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _deliver(self, job: _Job) -> None:
        job.watch.responded.wait(REPORT_TIMEOUT)  # never report before the N-ACTION response
        result: Result | None = None
        reason = "stopped with the SCP"
        delays = (GRACE_SECONDS, *RETRY_DELAYS)
        for attempt, delay in enumerate(delays, start=1):
            if self._stop.wait(delay):
                break
            try:
                result = result or self._evaluate(job)
                how = self._send_somewhere(job, result, first=attempt == 1)
            except Exception as exc:  # this thread's last-resort guard: log, then retry or give up
                reason = str(exc) if isinstance(exc, _Undelivered) else f"{type(exc).__name__}: {exc}"
                retry_in = delays[attempt] if attempt < len(delays) else None
                log_event(
                    log,
                    "dimse.commitment.retry",
                    level=logging.WARNING,
                    **self._fields(job, result),
                    attempt=attempt,
                    reason=reason,
                    retry_in=retry_in,
                )
                continue
            log_event(log, "dimse.commitment", **self._fields(job, result), sent=how, attempts=attempt)
            return
        log_event(
            log, "dimse.commitment", level=logging.ERROR, **self._fields(job, result), sent="undelivered", reason=reason
        )

    @staticmethod
    def _fields(job: _Job, result: Result | None) -> dict[str, Any]:
        return {
            "transaction_uid": job.request.transaction_uid,
            "calling_ae": job.principal.sub,
            "committed": len(result.committed) if result else None,
            "failed": len(result.failed) if result else None,
        }

    def _send_somewhere(self, job: _Job, result: Result, *, first: bool) -> str:
        """The same association if the requester waits there, else a new one to its address."""
        if first and job.watch.waiting_here():
            self._send(job.assoc, result)
            return "same-association"
        self._send_new(job, result)
        return "new-association"

    def _evaluate(self, job: _Job) -> Result:
        with self.archive.db.read() as session:
            return evaluate(session, job.principal, job.request)

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
            address = report_address(session, job.principal.sub)
        if address is None:
            raise _Undelivered(f"no address is registered for AE {job.principal.sub} (pacs org add --ae AET@host:port)")
        ae = AE(ae_title=self.archive.settings.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = REPORT_TIMEOUT
        assoc = ae.associate(
            address[0],
            address[1],
            contexts=[build_context(StorageCommitmentPushModel)],
            ae_title=job.principal.sub,
            ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)],  # the archive reports: SCP
        )
        if not assoc.is_established:
            raise _Undelivered(f"association to {address[0]}:{address[1]} {_why_not(assoc)}")
        try:
            self._send(assoc, result)
        finally:
            if assoc.is_established:
                assoc.release()


def _why_not(assoc: Association) -> str:
    if assoc.is_rejected:
        return "rejected"
    return "aborted" if assoc.is_aborted else "could not be opened"


_reporters: weakref.WeakKeyDictionary[Any, Reporter] = weakref.WeakKeyDictionary()
_reporters_lock = threading.Lock()


def reporter_for(ae: Any, archive: Archive) -> Reporter:
    """The reporter of an SCP (one pynetdicom AE), made on its first storage commitment request."""
    with _reporters_lock:
        reporter = _reporters.get(ae)
        if reporter is None:
            reporter = _reporters[ae] = Reporter(archive)
        return reporter


def stop(ae: Any) -> None:
    """Stop the reports of an SCP that is shutting down (a report still waiting is not sent)."""
    with _reporters_lock:
        reporter = _reporters.pop(ae, None)
    if reporter is not None:
        reporter.stop()
