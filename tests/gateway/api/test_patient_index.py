"""The patient index over the admin API, on both backends: find an identity, read its person,
link and unlink by hand, review the queue; admins only, every refusal as the contract says."""

from __future__ import annotations

from typing import Any

import httpx
from pydicom.dataset import Dataset

from storage.patients import cnp
from storage.patients.linker import link_pending
from storage.patients.model import Model
from tests.kit import dicom_factory as f
from tests.kit.dicomweb import Gateway
from tests.kit.principals import CT_A, US_B
from tests.kit.seed import seed

ADMIN = {"org": None, "roles": ("admin",)}
DR_A = {"org": "hosp-a", "roles": ("clinician",)}
HOSP_A, CLINIC_B = "urn:pacs:org:hosp-a", "urn:pacs:org:clinic-b"


def call(gw: Gateway, method: str, path: str, who: dict[str, Any] = ADMIN, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{gw.url}{path}", headers=gw.headers(**who), timeout=30, **kw)


def store(gw: Gateway, patient_id: str, name: str, birth: str, *, as_: Any, other_cnp: str = "") -> str:
    ds = f.ct_dataset(patient_id=patient_id, patient_name=name)
    ds.PatientBirthDate, ds.PatientSex = birth, "M"
    if other_cnp:
        item = Dataset()
        item.PatientID, item.IssuerOfPatientID = other_cnp, "RO-CNP"
        ds.OtherPatientIDsSequence = [item]
    return str(seed(gw.archive, ds, as_=as_)[0].study_uid)


def identity(gw: Gateway, issuer: str, patient_id: str) -> dict[str, Any]:
    r = call(gw, "GET", "/api/identities", params={"issuer": issuer, "patient_id": patient_id})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_review_accept_and_the_persons_view(gateway: Gateway) -> None:
    study_a = store(gateway, "123", "POPESCU^ION", "19600101", as_=CT_A)
    study_b = store(gateway, "9-44", "Popescu^Ion", "19600101", as_=US_B)
    link_pending(gateway.archive.db, Model())
    queue = call(gateway, "GET", "/api/link-candidates").json()
    assert len(queue) == 1 and queue[0]["score"] > 12
    pair = {
        (queue[0]["a"]["issuer"], queue[0]["a"]["patient_id"]),
        (queue[0]["b"]["issuer"], queue[0]["b"]["patient_id"]),
    }
    assert pair == {(HOSP_A, "123"), (CLINIC_B, "9-44")}
    accepted = call(gateway, "POST", f"/api/link-candidates/{queue[0]['id']}/accept")
    assert accepted.status_code == 200, accepted.text
    person_id = accepted.json()["person_id"]
    assert (
        identity(gateway, HOSP_A, "123")["person_id"] == identity(gateway, CLINIC_B, "9-44")["person_id"] == person_id
    )
    person = call(gateway, "GET", f"/api/persons/{person_id}").json()
    assert {i["patient_id"] for i in person["identities"]} == {"123", "9-44"}
    assert {s["study_instance_uid"] for s in person["studies"]} == {study_a, study_b}
    assert person["links"][-1]["action"] == "link" and person["links"][-1]["actor"] == "admin@None"
    assert call(gateway, "GET", "/api/link-candidates").json() == []
    assert len(call(gateway, "GET", "/api/link-candidates", params={"status": "accepted"}).json()) == 1
    assert call(gateway, "POST", f"/api/link-candidates/{queue[0]['id']}/accept").status_code == 404  # decided


def test_manual_link_unlink_and_reject(gateway: Gateway) -> None:
    store(gateway, "H-1", "IONESCU^DAN", "19700101", as_=CT_A)
    store(gateway, "C-1", "GEORGESCU^MIHAI", "19510101", as_=US_B)
    link_pending(gateway.archive.db, Model())
    body = {"a": {"issuer": HOSP_A, "patient_id": "H-1"}, "b": {"issuer": CLINIC_B, "patient_id": "C-1"}}
    linked = call(gateway, "POST", "/api/links", json=body)
    assert linked.status_code == 200, linked.text
    person_id = linked.json()["person_id"]
    split = call(gateway, "POST", f"/api/persons/{person_id}/unlink", json={"issuer": CLINIC_B, "patient_id": "C-1"})
    assert split.status_code == 200 and split.json()["person_id"] != person_id
    assert identity(gateway, CLINIC_B, "C-1")["person_id"] == split.json()["person_id"]
    again = call(gateway, "POST", f"/api/persons/{person_id}/unlink", json={"issuer": CLINIC_B, "patient_id": "C-1"})
    assert again.status_code == 404  # no longer in that person


def test_two_cnps_cannot_be_linked_by_hand(gateway: Gateway) -> None:
    one, two = (p + cnp.check_digit(p) for p in ("160010107001", "160010107002"))
    store(gateway, "H-2", "POPESCU^ION", "19600101", as_=CT_A, other_cnp=one)
    store(gateway, "C-2", "POPESCU^ION", "19600101", as_=US_B, other_cnp=two)
    link_pending(gateway.archive.db, Model())
    body = {"a": {"issuer": HOSP_A, "patient_id": "H-2"}, "b": {"issuer": CLINIC_B, "patient_id": "C-2"}}
    r = call(gateway, "POST", "/api/links", json=body)
    assert r.status_code == 409 and "CNP" in r.json()["detail"]


def test_admins_only_and_unknowns_are_404(gateway: Gateway) -> None:
    store(gateway, "H-3", "POPESCU^ION", "19600101", as_=CT_A)
    params = {"issuer": HOSP_A, "patient_id": "H-3"}
    assert call(gateway, "GET", "/api/identities", DR_A, params=params).status_code == 403
    assert call(gateway, "GET", "/api/link-candidates", DR_A).status_code == 403
    assert call(gateway, "GET", "/api/identities", params={"issuer": HOSP_A, "patient_id": "nobody"}).status_code == 404
    assert call(gateway, "GET", "/api/persons/999999").status_code == 404
    assert call(gateway, "POST", "/api/link-candidates/999999/reject").status_code == 404
    bad = {"a": {"issuer": HOSP_A, "patient_id": "H-3"}, "b": {"issuer": HOSP_A}}
    assert call(gateway, "POST", "/api/links", json=bad).status_code == 400
