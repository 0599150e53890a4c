"""FHIR Subscriptions (rest-hook on ImagingStudy) against a real HTTP receiver, both backends.

The gateway runs its notifier as `pacs serve` does (in its lifespan); studies go in through the
ingest pipeline as the hospital's CT and the clinic's ultrasound send them, and a listener
started here (`tests.kit.hooks`) is the provider's system. Each test watches patients of its own
(`patient=` criteria) and posts to a path of its own, so that tests do not see each other's
notifications. Studies count as arrived after `QUIET` seconds; failed sends are retried after
`RETRY` seconds, and three in a row put a subscription in status error.

The restart of `pacs serve` with a delivery pending is `tests/e2e/test_subscription_restart.py`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.subscription import Subscription
from pydicom.dataset import Dataset
from sqlalchemy import select

from storage.audit.records import Filters
from storage.audit.records import search as audit_search
from storage.index.models import PatientIdentity, SubscriptionDelivery
from storage.patients import cnp
from storage.patients.linker import link_pending
from storage.patients.model import Model
from tests.kit import dicom_factory as f
from tests.kit.backends import BACKENDS, module_archive
from tests.kit.dicomweb import Gateway, serve_gateway
from tests.kit.hooks import Receiver, receiver
from tests.kit.principals import ADMIN, CT_A, US_B, ctx
from tests.kit.seed import seed

FHIR_JSON = "application/fhir+json"
QUIET, RETRY = 0.5, 0.3
#: how long a test waits for what should not come: past the quiet time and two rounds
SETTLE = QUIET + 2.5
RIS_A: dict[str, Any] = {"org": "hosp-a", "roles": ("integrator",)}
RIS_B: dict[str, Any] = {"org": "clinic-b", "roles": ("integrator",)}
DR_A: dict[str, Any] = {"org": "hosp-a", "roles": ("clinician",)}
ADMIN_TOKEN: dict[str, Any] = {"org": None, "roles": ("admin",)}


@dataclass
class World:
    gw: Gateway
    hook: Receiver


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("subscriptions")
    timing = {
        "subscription_quiet": QUIET,
        "subscription_retry": RETRY,
        "subscription_retry_max": 2 * RETRY,
        "subscription_failures": 3,
    }
    with (
        module_archive(request, tmp, **timing) as (settings, archive),
        contextmanager(serve_gateway)(settings, archive) as gw,
        receiver() as hook,
    ):
        yield World(gw, hook)


def study(patient_id: str, *, modality: str = "CT", national_id: str = "", birth: str = "19700101") -> list[Dataset]:
    """The two instances of one new study of `patient_id`."""
    study_uid, series_uid = f.uid(), f.uid()
    found = []
    for number in (1, 2):
        ds = f.ct_dataset(
            patient_id=patient_id,
            patient_name=f"TEST^{patient_id}",
            study_uid=study_uid,
            series_uid=series_uid,
            modality=modality,
            instance_number=number,
        )
        ds.PatientBirthDate, ds.PatientSex = birth, "F"
        if national_id:
            item = Dataset()
            item.PatientID, item.IssuerOfPatientID = national_id, cnp.ISSUER
            ds.OtherPatientIDsSequence = [item]
        found.append(ds)
    return found


def store(world: World, instances: list[Dataset], sender: Any = CT_A) -> str:
    seed(world.gw.archive, *instances, as_=sender)
    return str(instances[0].StudyInstanceUID)


def identity_of(world: World, patient_id: str) -> int:
    with world.gw.archive.db.read() as session:
        return int(session.scalar(select(PatientIdentity.id).where(PatientIdentity.patient_id == patient_id)))


def subscribe(world: World, who: dict[str, Any], criteria: str, path: str, **channel: Any) -> dict[str, Any]:
    body = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "new studies of our patients",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": world.hook.url + path, **channel},
    }
    answer = post(world, "Subscription", body, who)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def post(world: World, path: str, body: Any, who: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
    headers = world.gw.headers(**(who or RIS_A)) | {"Content-Type": FHIR_JSON}
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(f"{world.gw.url}/fhir/{path}", content=content, headers=headers | kw.pop("headers", {}), **kw)


def fhir(world: World, method: str, path: str, who: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{world.gw.url}/fhir/{path}", headers=world.gw.headers(**(who or RIS_A)), **kw)


def outcome(answer: httpx.Response, status: int, code: str) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == code, body
    assert "/tmp" not in answer.text and "Traceback" not in answer.text
    return str(body["issue"][0]["diagnostics"])


def delivery_states(world: World, subscription_id: str) -> dict[str, tuple[str, int]]:
    return {d.study_uid: (d.state, d.attempts) for d in deliveries(world, subscription_id)}


def deliveries(world: World, subscription_id: str) -> list[SubscriptionDelivery]:
    with world.gw.archive.db.read() as session:
        return list(
            session.scalars(
                select(SubscriptionDelivery)
                .where(SubscriptionDelivery.subscription_id == int(subscription_id))
                .order_by(SubscriptionDelivery.id)
            )
        )


# ----- what a new study sends ----------------------------------------------------------------------


def test_a_new_study_of_a_patient_is_posted_with_its_imaging_study_and_the_receivers_header(world: World) -> None:
    before = store(world, study("SUB-P1"))  # the patient's study before the subscription: not notified
    patient = identity_of(world, "SUB-P1")
    made = subscribe(
        world,
        RIS_A,
        f"ImagingStudy?patient=Patient/{patient}&modality=CT",
        "/ris-a",
        payload=FHIR_JSON,
        header=["Authorization: Bearer hook-secret"],
    )
    Subscription.model_validate(made)
    assert made["status"] == "active" and made["meta"]["versionId"]
    new = store(world, study("SUB-P1"))
    store(world, study("SUB-P1", modality="MR"))  # the criteria asks for CT only
    store(world, study("SUB-OTHER"))  # another patient

    got = world.hook.wait_for(1, "/ris-a")
    time.sleep(SETTLE)
    assert len(world.hook.got("/ris-a")) == 1
    note = got[0]
    assert note.headers["authorization"] == "Bearer hook-secret"
    assert note.headers["content-type"] == FHIR_JSON
    sent = ImagingStudy.model_validate_json(note.body)
    assert sent.id == new != before
    assert sent.subject.reference == f"Patient/{patient}" and sent.numberOfInstances == 2
    assert sent.endpoint[0].reference == "Endpoint/dicomweb"
    [delivery] = deliveries(world, made["id"])
    assert (delivery.study_uid, delivery.state, delivery.attempts) == (new, "delivered", 1)
    assert delivery.delivered_at is not None
    # the send is on record: an export of the patient's study, by the subscriber, to the receiver
    records = audit_search(world.gw.archive.db, ctx(ADMIN), Filters(study=new, action="export"))
    assert records and records[0]["outcome"] == "ok" and records[0]["channel"] == "fhir"
    assert records[0]["org"] == "hosp-a" and records[0]["source"] == "127.0.0.1"


def test_a_provider_is_told_of_another_institutions_study_of_a_person_it_cares_for_unless_opted_out(
    world: World,
) -> None:
    """The clinic subscribes to its record of a patient; the hospital's new study of the same
    person (linked on the CNP) is the clinic's to see by care relationship, and is posted, as a
    ping (no payload). A person who opted out is not, though the hospital's study matches."""
    ana, maria = "2850317220011", "2900712220026"
    ana, maria = ana[:12] + cnp.check_digit(ana[:12]), maria[:12] + cnp.check_digit(maria[:12])
    for patient_id, national_id, sender in (
        ("C-SUB-ANA", ana, US_B),
        ("H-SUB-ANA", ana, CT_A),
        ("C-SUB-MARIA", maria, US_B),
        ("H-SUB-MARIA", maria, CT_A),
    ):
        store(world, study(patient_id, national_id=national_id, birth="19850317"), sender)
    link_pending(world.gw.archive.db, Model())
    for patient_id, path in (("C-SUB-ANA", "/ris-b-ana"), ("C-SUB-MARIA", "/ris-b-maria")):
        subscribe(world, RIS_B, f"ImagingStudy?patient=Patient/{identity_of(world, patient_id)}", path)
    person = httpx.get(
        f"{world.gw.url}/api/identities",
        params={"issuer": "urn:pacs:org:clinic-b", "patient_id": "C-SUB-MARIA"},
        headers=world.gw.headers(**ADMIN_TOKEN),
    )
    assert person.status_code == 200, person.text
    opted = httpx.put(
        f"{world.gw.url}/api/persons/{person.json()['person_id']}/consent",
        json={"cross_org_sharing": "opt-out", "recorded_by": "front desk, clinic B"},
        headers=world.gw.headers(**RIS_B),
    )
    assert opted.status_code == 200, opted.text

    hospitals = store(world, study("H-SUB-ANA", national_id=ana, birth="19850317"))
    store(world, study("H-SUB-MARIA", national_id=maria, birth="19850317"))
    [ping] = world.hook.wait_for(1, "/ris-b-ana")
    assert ping.body == b"" and "content-type" not in ping.headers
    time.sleep(SETTLE)
    assert world.hook.got("/ris-b-maria") == []
    assert hospitals  # the clinic was told of the hospital's study, not given it


def test_more_studies_than_one_round_reads_are_each_notified_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The matcher reads changed studies a page at a time (`imaging.MAX_CHANGED`); with a page
    of 2 and 5 new studies, it goes on page after page and records each once."""
    from storage.query import imaging

    store(world, study("SUB-MANY"))
    made = subscribe(world, RIS_A, f"ImagingStudy?patient=Patient/{identity_of(world, 'SUB-MANY')}", "/many")
    monkeypatch.setattr(imaging, "MAX_CHANGED", 2)
    new = {store(world, study("SUB-MANY")) for _ in range(5)}
    world.hook.wait_for(5, "/many")
    time.sleep(SETTLE)
    assert len(world.hook.got("/many")) == 5
    assert {d.study_uid for d in deliveries(world, made["id"])} == new


# ----- failures, retries, error, and back --------------------------------------------------------


def test_failed_sends_are_retried_then_the_subscription_errs_and_an_update_delivers_the_backlog(
    world: World,
) -> None:
    store(world, study("SUB-FLAKY"))
    made = subscribe(world, RIS_A, f"ImagingStudy?patient=Patient/{identity_of(world, 'SUB-FLAKY')}", "/flaky")
    world.hook.answer("/flaky", 500, 500, 500)
    first = store(world, study("SUB-FLAKY"))
    failed = world.hook.wait_for(3, "/flaky", status=500)
    waits = [b.at - a.at for a, b in zip(failed, failed[1:], strict=False)]
    assert waits[0] >= RETRY and waits[1] >= 2 * RETRY  # backing off
    deadline = time.monotonic() + 10
    while fhir(world, "GET", f"Subscription/{made['id']}").json()["status"] != "error":
        assert time.monotonic() < deadline, "the subscription did not go to status error"
        time.sleep(0.1)
    erred = fhir(world, "GET", f"Subscription/{made['id']}").json()
    assert "3 notifications failed in a row" in erred["error"] and "HTTP 500" in erred["error"]

    second = store(world, study("SUB-FLAKY"))  # matched while in error: kept, not sent
    time.sleep(SETTLE)
    assert world.hook.got("/flaky", status=200) == []
    assert {d.study_uid for d in deliveries(world, made["id"])} == {first, second}

    resumed = fhir(world, "PUT", f"Subscription/{made['id']}", json={**erred, "status": "active"})
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "active" and "error" not in resumed.json()
    world.hook.wait_for(2, "/flaky", status=200)
    expected = {first: ("delivered", 4), second: ("delivered", 1)}
    deadline = time.monotonic() + 10
    while (states := delivery_states(world, made["id"])) != expected and time.monotonic() < deadline:
        time.sleep(0.1)  # a delivery is recorded just after the receiver answered it (seen in CI)
    assert states == expected


def test_a_deleted_subscription_is_gone_and_sends_nothing(world: World) -> None:
    store(world, study("SUB-GONE"))
    patient = identity_of(world, "SUB-GONE")
    kept = subscribe(world, RIS_A, f"ImagingStudy?patient=Patient/{patient}", "/kept")
    gone = subscribe(world, RIS_A, f"ImagingStudy?patient=Patient/{patient}", "/gone")
    assert fhir(world, "DELETE", f"Subscription/{gone['id']}").status_code == 204
    outcome(fhir(world, "GET", f"Subscription/{gone['id']}"), 410, "deleted")
    outcome(fhir(world, "DELETE", f"Subscription/{gone['id']}"), 410, "deleted")
    listed = fhir(world, "GET", "Subscription").json()
    assert kept["id"] in {e["resource"]["id"] for e in listed["entry"]}
    assert gone["id"] not in {e["resource"]["id"] for e in listed["entry"]}

    store(world, study("SUB-GONE"))
    world.hook.wait_for(1, "/kept")
    time.sleep(SETTLE)
    assert world.hook.got("/gone") == [] and deliveries(world, gone["id"]) == []


# ----- the resource: who may, and what is refused ------------------------------------------------


def test_subscriptions_are_their_organizations_and_managed_by_integrators(world: World) -> None:
    made = subscribe(world, RIS_A, "ImagingStudy?modality=CT", "/crud")
    path = f"Subscription/{made['id']}"
    read = fhir(world, "GET", path)
    assert read.status_code == 200 and read.headers["etag"] == f'W/"{made["meta"]["versionId"]}"'
    assert fhir(world, "GET", path, who=DR_A).status_code == 200  # its organization's clinician reads it
    assert fhir(world, "GET", path, who=ADMIN_TOKEN).status_code == 200
    outcome(fhir(world, "GET", path, who=RIS_B), 404, "not-found")  # another organization's: absent
    outcome(fhir(world, "DELETE", path, who=RIS_B), 404, "not-found")
    outcome(fhir(world, "DELETE", path, who=DR_A), 403, "forbidden")
    body = {**made, "channel": {**made["channel"], "endpoint": world.hook.url + "/elsewhere"}}
    outcome(post(world, "Subscription", body, DR_A), 403, "forbidden")  # a clinician makes none
    paused = fhir(world, "PUT", path, json={**body, "status": "off"})
    assert paused.status_code == 200 and paused.json()["status"] == "off"
    assert paused.json()["channel"]["endpoint"].endswith("/elsewhere")
    searched = fhir(world, "GET", "Subscription", params={"status": "off"})
    Bundle.model_validate(searched.json())
    assert made["id"] in {e["resource"]["id"] for e in searched.json()["entry"]}
    assert made["id"] not in {
        e["resource"]["id"] for e in fhir(world, "GET", "Subscription", who=RIS_B).json().get("entry", [])
    }
    outcome(fhir(world, "PUT", path, json={**body, "id": "999"}), 400, "invalid")
    outcome(fhir(world, "GET", "Subscription", params={"criteria": "x"}), 400, "invalid")


def _subscription(**changes: Any) -> dict[str, Any]:
    channel = {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", **changes.pop("channel", {})}
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "r",
        "criteria": "ImagingStudy?modality=CT",
        "channel": channel,
        **changes,
    }


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "not JSON"),
        ({"resourceType": "Patient"}, 400, "must be a Subscription"),
        ({k: v for k, v in _subscription().items() if k != "reason"}, 400, "reason"),
        (_subscription(criteria="Patient?name=x"), 422, "only ImagingStudy"),
        (_subscription(criteria="ImagingStudy?_count=5"), 422, "_count"),
        (_subscription(criteria="ImagingStudy?_lastUpdated=ge2026-01-01"), 422, "_lastUpdated"),
        (_subscription(criteria="ImagingStudy?colour=red"), 422, "unknown search parameter"),
        (_subscription(criteria="ImagingStudy?started=2024-13"), 422, "started"),
        (_subscription(criteria="ImagingStudy?" + "a=1&" * 40), 422, "30"),
        (_subscription(criteria="ImagingStudy?modality=" + "C" * 3000), 422, "2048"),
        (_subscription(status="error"), 422, "server's to set"),
        (_subscription(channel={"type": "email"}), 422, "rest-hook"),
        (_subscription(channel={"endpoint": "ftp://example.org/x"}), 422, "http or https"),
        (_subscription(channel={"endpoint": "http://"}), 422, "http or https"),
        (_subscription(channel={"header": ["X-A: 1\r\nX-B: 2"]}), 422, "Name: value"),
        (_subscription(channel={"header": ["no colon"]}), 422, "Name: value"),
        (_subscription(channel={"header": [f"X-{i}: 1" for i in range(11)]}), 422, "at most 10"),
        (_subscription(channel={"payload": "application/fhir+xml"}), 422, "payload"),
        (_subscription(reason="r" * 1025), 422, "reason"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_subscription_this_server_cannot_serve_is_refused_naming_why(
    world: World, body: Any, status: int, says: str
) -> None:
    code = "invalid" if status == 400 else "processing"
    assert says in outcome(post(world, "Subscription", body), status, code)


def test_bodies_are_bounded_and_must_be_fhir_json(world: World) -> None:
    huge = _subscription(reason="r" * (70 * 1024))
    outcome(post(world, "Subscription", huge), 413, "too-costly")
    outcome(post(world, "Subscription", _subscription(), headers={"Content-Type": "text/plain"}), 415, "not-supported")


def test_endpoints_outside_the_configured_prefixes_are_refused(world: World) -> None:
    settings = world.gw.archive.settings
    original = list(settings.subscription_endpoints)
    settings.subscription_endpoints[:] = ["https://ris.hosp-a.example/"]
    try:
        says = outcome(post(world, "Subscription", _subscription()), 422, "processing")
        assert "not among the endpoints" in says
        allowed = _subscription(channel={"endpoint": "https://ris.hosp-a.example/fhir-hook"})
        made = post(world, "Subscription", allowed)
        assert made.status_code == 201, made.text
        assert fhir(world, "DELETE", f"Subscription/{made.json()['id']}").status_code == 204
    finally:
        settings.subscription_endpoints[:] = original
