"""A FHIR Subscription's pending notification outlives a killed `pacs serve`, and a deleted
subscription sends nothing more: end to end, with a modality sending over DICOM (pynetdicom as
the peer), `pacs serve` as a process killed with SIGKILL, and a real HTTP receiver.

The receiver answers 503 until the server is killed, so the study's notification is pending in
the database (attempted, failed, due again) at the kill; the next `pacs serve` on the same data
claims it (its holder is a dead process of this host) and delivers it.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from fhir.resources.R4B.imagingstudy import ImagingStudy
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.kit import dicom_factory as f
from tests.kit.hooks import receiver
from tests.kit.servers import ServerProcess, start_server

TIMING = {
    "PACS_SUBSCRIPTION_QUIET": "0.3",
    "PACS_SUBSCRIPTION_RETRY": "0.3",
    "PACS_SUBSCRIPTION_RETRY_MAX": "0.5",
    "PACS_SUBSCRIPTION_FAILURES": "1000",
}


def c_store(server: ServerProcess) -> str:
    """One new two-instance study, sent as a modality does; its Study Instance UID."""
    study, series = f.uid(), f.uid()
    ae = AE(ae_title="CT-NEW")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="MUNIPACS")
    assert assoc.is_established
    try:
        for number in (1, 2):
            ds = f.ct_dataset(study_uid=study, series_uid=series, instance_number=number)
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    return study


def test_a_pending_notification_outlives_a_killed_server_and_a_deleted_subscription_sends_nothing(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    with receiver() as hook:
        hook.answer("/hook", *[503] * 1000)  # down until the server is killed
        server = start_server(var, env=TIMING)
        try:
            made = httpx.post(
                f"{server.url}/fhir/Subscription",
                json={
                    "resourceType": "Subscription",
                    "status": "requested",
                    "reason": "every new study (the city's registry)",
                    "criteria": "ImagingStudy",
                    "channel": {
                        "type": "rest-hook",
                        "endpoint": hook.url + "/hook",
                        "payload": "application/fhir+json",
                    },
                },
                headers=server.admin(),
            )
            assert made.status_code == 201, made.text
            study = c_store(server)
            hook.wait_for(2, "/hook", status=503)  # attempted and failed, due again
        finally:
            server.kill()  # SIGKILL, holding or about to hold the delivery's claim
        hook.answer("/hook")  # up again

        again = start_server(var, env=TIMING)
        try:
            [note] = hook.wait_for(1, "/hook", status=200)
            sent = ImagingStudy.model_validate_json(note.body)
            assert sent.id == study and sent.numberOfInstances == 2
            deadline = time.monotonic() + 10  # logged once the delivery is recorded, after the POST
            while "fhir.subscription.delivered" not in again.log_text():
                assert time.monotonic() < deadline, again.log_text()
                time.sleep(0.1)
            assert f"{hook.url}/hook" not in again.log_text()  # no line carries the endpoint's URL

            path = f"{again.url}/fhir/Subscription/{made.json()['id']}"
            assert httpx.delete(path, headers=again.admin()).status_code == 204
            assert httpx.get(path, headers=again.admin()).status_code == 410
            c_store(again)
            time.sleep(3.0)  # the quiet time and a few rounds
            assert len(hook.got("/hook", status=200)) == 1
        finally:
            again.kill()
