"""Storage Commitment Push Model (PS3.4 Annex J) with a pynetdicom modality on real sockets.

The modality runs in its own process, as a real one would (pynetdicom's options are process
globals: the archive's `PASS_CONTEXTVARS`, set in this process, breaks pynetdicom's own
receipt of an N-EVENT-REPORT). It stores instances with C-STORE, asks for their commitment
with N-ACTION, and receives the N-EVENT-REPORT either on the same association (it waits
there) or on a new one the archive opens to its registered address (it released at once),
where it runs an SCP that accepts the Storage Commitment SCU role (PS3.4 J.3.3.1.3).
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, StorageCommitmentPushModel, Verification
from sqlalchemy import select

from pacs.commitment import INSTANCE_UID
from pacs.server import RunningScp
from storage.access.orgs import AeSpec, add_org
from storage.archive import Archive
from storage.index.models import CommitmentRequest
from storage.settings import Settings
from tests.kit import dicom_factory as f
from tests.kit.net import free_port
from tests.kit.servers import start_server

REPORT_WAIT = 15.0
CT = str(CTImageStorage)


@dataclass
class Visit:
    """What the modality does: store these instances, then ask for the commitment of `refs`."""

    ae_title: str
    store: list[str]  # SOP Instance UIDs of CT slices to C-STORE first
    refs: list[tuple[str, str]]  # (SOP Class UID, SOP Instance UID) in the N-ACTION
    transaction_uid: str = field(default_factory=generate_uid)
    release_at_once: bool = False  # else wait on the association for the report
    listen_port: int | None = None  # run an SCP there for a report on a new association


def _modality(visit: Visit, scp_port: int, out: Any, listen_now: Any, acknowledged: Any) -> None:
    """The modality process: report what happened as one dict on `out`; set `acknowledged` once
    it holds the answer to its N-ACTION."""
    reports: queue.Queue[dict[str, Any]] = queue.Queue()

    def on_report(event: evt.Event) -> tuple[int, None]:
        info = event.event_information
        via = str(event.assoc.requestor.ae_title).strip() if event.assoc.is_acceptor else "same-association"
        reports.put(
            {
                "event_type": int(event.event_type),
                "via": via,
                "transaction_uid": str(info.TransactionUID),
                "retrieve_ae": str(info.get("RetrieveAETitle", "")),
                "committed": [str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])],
                "failed": [
                    (str(i.ReferencedSOPInstanceUID), str(i.ReferencedSOPClassUID), int(i.FailureReason))
                    for i in info.get("FailedSOPSequence", [])
                ],
            }
        )
        return 0x0000, None

    ae = AE(ae_title=visit.ae_title)
    for sop_class in (CTImageStorage, StorageCommitmentPushModel, Verification):
        ae.add_requested_context(sop_class)
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    handlers = [(evt.EVT_N_EVENT_REPORT, on_report)]
    assoc = ae.associate("127.0.0.1", scp_port, ae_title="MUNIPACS", evt_handlers=handlers)
    for sop in visit.store:
        assert assoc.send_c_store(f.ct_dataset(sop_uid=sop)).Status == 0x0000
    info = Dataset()
    info.TransactionUID = visit.transaction_uid
    info.ReferencedSOPSequence = [_ref(c, i) for c, i in visit.refs]
    status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, INSTANCE_UID)
    result: dict[str, Any] = {"action_status": int(status.Status), "error_comment": status.get("ErrorComment")}
    acknowledged.set()
    if visit.release_at_once:
        assoc.release()
    server = None
    if visit.listen_port is not None:
        listen_now.wait(REPORT_WAIT)
        server = ae.start_server(("127.0.0.1", visit.listen_port), block=False, evt_handlers=handlers)
    try:
        result["report"] = reports.get(timeout=REPORT_WAIT if result["action_status"] == 0 else 3)
        time.sleep(0.3)
        result["more_reports"] = reports.qsize()
    except queue.Empty:
        result["report"] = None
    if assoc.is_established:
        assoc.release()
    if server is not None:
        server.shutdown()
    out.put(result)


def _ref(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


class Modality:
    """A modality process on its way: `.result()` waits for what it saw."""

    def __init__(self, visit: Visit, scp_port: int, *, listen_now: bool = True) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._out = ctx.Queue()
        self.listen_now = ctx.Event()
        self.acknowledged = ctx.Event()
        if listen_now:
            self.listen_now.set()
        self._process = ctx.Process(
            target=_modality, args=(visit, scp_port, self._out, self.listen_now, self.acknowledged), daemon=True
        )
        self._process.start()

    def result(self) -> dict[str, Any]:
        try:
            return dict(self._out.get(timeout=60))
        finally:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()


def commitment_lines(caplog: pytest.LogCaptureFixture, name: str = "dimse.commitment") -> list[dict[str, Any]]:
    return [r.pacs_fields for r in caplog.records if r.getMessage() == name]  # type: ignore[attr-defined]


def wait_for_line(caplog: pytest.LogCaptureFixture, name: str, timeout: float = REPORT_WAIT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not (lines := commitment_lines(caplog, name)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lines, f"no {name} line"
    return lines[0]


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pacs")


def register(archive: Archive, ae_title: str, port: int) -> None:
    with archive.db.write() as s:
        add_org(s, "hosp-a", None, [AeSpec(ae_title, "127.0.0.1", port)])


def test_report_on_the_same_association(scp: RunningScp, caplog: pytest.LogCaptureFixture) -> None:
    stored = [f.uid() for _ in range(3)]
    never_stored = (CT, f.uid())
    wrong_class = (str(MRImageStorage), stored[2])
    visit = Visit("CT1", stored, [(CT, stored[0]), (CT, stored[1]), never_stored, wrong_class])
    sent_before = reports("same-association")
    result = Modality(visit, scp.port).result()

    assert result["action_status"] == 0x0000
    report = result["report"]
    assert report is not None, result
    assert report["via"] == "same-association" and result["more_reports"] == 0
    assert report["event_type"] == 2  # failures exist
    assert report["transaction_uid"] == visit.transaction_uid
    assert report["retrieve_ae"] == "MUNIPACS"
    assert report["committed"] == stored[:2]
    assert report["failed"] == [(never_stored[1], CT, 0x0112), (wrong_class[1], wrong_class[0], 0x0119)]
    line = wait_for_line(caplog, "dimse.commitment")
    assert (line["sent"], line["committed"], line["failed"]) == ("same-association", 2, 2)
    assert line["transaction_uid"] == visit.transaction_uid
    assert reports("same-association") == sent_before + 1


def test_report_on_a_new_association_after_release(
    scp: RunningScp, archive: Archive, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    register(archive, "CT2", port)
    stored = [f.uid() for _ in range(2)]
    visit = Visit("CT2", stored, [(CT, s) for s in stored], release_at_once=True, listen_port=port)
    result = Modality(visit, scp.port).result()

    assert result["action_status"] == 0x0000
    report = result["report"]
    assert report is not None, result
    assert report["via"] == "MUNIPACS"  # the archive called the modality's SCP
    assert report["event_type"] == 1 and not report["failed"]  # all committed
    assert report["committed"] == stored
    assert report["transaction_uid"] == visit.transaction_uid
    line = wait_for_line(caplog, "dimse.commitment")
    assert (line["sent"], line["committed"], line["failed"], line["attempts"]) == ("new-association", 2, 0, 1)


def test_a_failed_report_is_retried(scp: RunningScp, archive: Archive, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    register(archive, "CT2", port)
    stored = [f.uid()]
    visit = Visit("CT2", stored, [(CT, stored[0])], release_at_once=True, listen_port=port)
    modality = Modality(visit, scp.port, listen_now=False)  # nobody listens at the registered address yet

    retry = wait_for_line(caplog, "dimse.commitment.retry")
    assert retry["attempt"] == 1 and f"127.0.0.1:{port}" in retry["reason"]
    modality.listen_now.set()
    result = modality.result()

    assert result["report"] is not None, result
    assert result["report"]["committed"] == stored
    line = wait_for_line(caplog, "dimse.commitment")
    assert (line["sent"], line["attempts"]) == ("new-association", 2)


def test_unknown_ae_is_refused(scp: RunningScp, caplog: pytest.LogCaptureFixture) -> None:
    stored = [f.uid()]
    result = Modality(Visit("STRANGER", stored, [(CT, stored[0])]), scp.port).result()
    assert result["action_status"] == 0x0124  # an unknown AE may store (held unassigned), not be vouched for
    assert "not registered" in result["error_comment"]
    assert result["report"] is None
    assert commitment_lines(caplog, "dimse.commitment.refused")[0]["status"] == "0x0124"


def test_many_references_in_one_request(scp: RunningScp) -> None:
    """More references than one SQL IN list holds: every one is answered, in the request's order."""
    stored = [f.uid() for _ in range(3)]
    missing = [(CT, f.uid()) for _ in range(1200)]
    visit = Visit("CT1", stored, [*missing[:600], *[(CT, s) for s in stored], *missing[600:]])
    result = Modality(visit, scp.port).result()
    report = result["report"]
    assert report is not None, result
    assert report["event_type"] == 2
    assert report["committed"] == stored
    assert [sop for sop, _, _ in report["failed"]] == [sop for _, sop in missing]


def test_no_address_and_gone_is_given_up_after_the_retries(
    scp: RunningScp, archive: Archive, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CT1 has no registered address: once it has left, nothing can carry its report. Each
    attempt says why; after the last retry the request is given up, said, and forgotten."""
    import pacs.commitment as commitment

    monkeypatch.setattr(commitment, "RETRY_DELAYS", (0.2,))  # one retry, soon
    retried, given_up = reports("retry"), reports("undelivered")
    monkeypatch.setattr(commitment, "SWEEP_SECONDS", 0.2)
    stored = [f.uid()]
    result = Modality(Visit("CT1", stored, [(CT, stored[0])], release_at_once=True), scp.port).result()
    assert result["action_status"] == 0x0000 and result["report"] is None
    retry = wait_for_line(caplog, "dimse.commitment.retry")
    assert "no address is registered for AE CT1" in retry["reason"] and retry["retry_in"] == 0.2
    line = wait_for_line(caplog, "dimse.commitment")
    assert (line["sent"], line["attempts"]) == ("undelivered", 2) and "no address" in line["reason"]
    assert kept(archive) == []
    assert reports("retry") == retried + 1 and reports("undelivered") == given_up + 1  # for alerting


def reports(outcome: str) -> float:
    """The `pacs_commitment_reports` counter of this process (the SCP runs in it)."""
    return REGISTRY.get_sample_value("pacs_commitment_reports_total", {"outcome": outcome}) or 0.0


def kept(archive: Archive) -> list[str]:
    """Transaction UIDs of the requests acknowledged and not yet reported."""
    with archive.db.read() as s:
        return list(s.scalars(select(CommitmentRequest.transaction_uid)))


def test_a_report_outlives_a_killed_server(tmp_path: Path) -> None:
    """`pacs serve` is killed (SIGKILL) right after it acknowledged an N-ACTION, before it could
    report; the next `pacs serve` on the same data sends the report the first one promised."""
    var = tmp_path / "var"
    server = start_server(var)
    port = free_port()
    archive = Archive.open(Settings(data_dir=var, dicom_port=0, http_port=0))  # type: ignore[call-arg]
    with archive.db.write() as s:
        add_org(s, "hosp-a", "Spitalul Județean A", [AeSpec("CT2", "127.0.0.1", port)])
    archive.close()
    stored = [f.uid() for _ in range(2)]
    visit = Visit("CT2", stored, [(CT, s) for s in stored], release_at_once=True, listen_port=port)
    modality = Modality(visit, server.dicom_port, listen_now=False)  # its SCP is not up yet
    # Killed once the modality holds the success, not when the log says the request was kept: the
    # response leaves after that line, and a kill in between would leave the modality unanswered.
    assert modality.acknowledged.wait(REPORT_WAIT)
    server.kill()  # SIGKILL: the first attempt comes a second after the acknowledgement at the earliest
    assert "dimse.commitment.requested" in server.log_text()
    assert "dimse.commitment " not in server.log_text()  # killed before any report went out
    modality.listen_now.set()

    again = start_server(var)
    try:
        result = modality.result()
        assert result["action_status"] == 0x0000
        report = result["report"]
        assert report is not None, result
        assert report["via"] == "MUNIPACS" and report["transaction_uid"] == visit.transaction_uid
        assert report["committed"] == stored and result["more_reports"] == 0
        deadline = time.monotonic() + REPORT_WAIT
        while "dimse.commitment " not in again.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert re.search(r"dimse\.commitment .*sent=new-association", again.log_text()), again.log_text()
    finally:
        again.kill()


def refused_at_once(scp: RunningScp, info: Dataset, action_type: int, instance: str) -> tuple[int, int]:
    """N-ACTION from an in-process SCU (no report to receive), then C-ECHO on the same association."""
    ae = AE(ae_title="CT1")
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.add_requested_context(Verification)
    ae.dimse_timeout = 10
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="MUNIPACS")
    try:
        status, _ = assoc.send_n_action(info, action_type, StorageCommitmentPushModel, instance)
        echo = assoc.send_c_echo()
        if "Status" not in echo:
            # pynetdicom's requestor (the peer here, not the SCP) can hand a response to its own
            # reactor thread instead of the call waiting for it ("Received unexpected C-ECHO
            # service message", seen once in CI under load): the SCP answered; ask once more
            echo = assoc.send_c_echo()
        return int(status.Status), int(echo.Status)
    finally:
        assoc.release()


@pytest.mark.parametrize(
    ("case", "status"),
    [("no transaction uid", 0x0115), ("no references", 0x0115), ("action type 2", 0x0123), ("other instance", 0x0117)],
)
def test_bad_requests_are_refused_at_once(scp: RunningScp, case: str, status: int) -> None:
    info = Dataset()
    info.TransactionUID = generate_uid()
    info.ReferencedSOPSequence = [_ref(CT, f.uid())]
    action_type, instance = 1, INSTANCE_UID
    if case == "no transaction uid":
        del info.TransactionUID
    elif case == "no references":
        info.ReferencedSOPSequence = []
    elif case == "action type 2":
        action_type = 2
    else:
        instance = generate_uid()
    # refused with its status, and the association carries on
    assert refused_at_once(scp, info, action_type, instance) == (status, 0x0000)
