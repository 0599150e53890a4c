"""/api/worklist over real HTTP: what an integrator and an admin may do, and what bad input gets.

The gateway fixture registers hosp-a (AE CT1) and clinic-b (AE US-B); tokens come from its helpers.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.kit.dicomweb import Gateway

ADMIN = {"org": None, "roles": ("admin",)}
RIS_A = {"org": "hosp-a", "roles": ("integrator",)}
RIS_B = {"org": "clinic-b", "roles": ("integrator",)}
CLINICIAN_A = {"org": "hosp-a", "roles": ("clinician",)}
ORDER = {
    "patient_name": "Ştefănescu^Ioana",
    "patient_id": "P001",
    "patient_birth_date": "1980-02-29",
    "patient_sex": "F",
    "accession_number": "ACC001",
    "requested_procedure_description": "CT torace nativ",
    "modality": "CT",
    "scheduled_station_ae_title": "CT1",
    "scheduled_procedure_step_start_date": "2026-11-23",
    "scheduled_procedure_step_start_time": "08:30",
    "referring_physician_name": "Ţăranu^Mihai",
}


def api(gw: Gateway, method: str, path: str = "", who: dict[str, Any] = RIS_A, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{gw.url}/api/worklist{path}", headers=gw.headers(**who), timeout=30, **kw)


def problem(r: httpx.Response, status: int) -> str:
    """The problem's detail, after checking it is an RFC 9457 answer with `status`."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    return str(r.json().get("detail", ""))


def test_an_integrator_schedules_reads_moves_on_and_removes_a_step(gateway: Gateway) -> None:
    r = api(gateway, "POST", json=ORDER)
    assert r.status_code == 201, r.text
    step = r.json()
    assert r.headers["location"] == f"/api/worklist/{step['id']}"
    assert step["org"] == "hosp-a" and step["status"] == "SCHEDULED"
    assert step["patient_name"] == "Ştefănescu^Ioana" and step["patient_birth_date"] == "19800229"
    assert step["scheduled_procedure_step_start_date"] == "20261123"
    assert step["scheduled_procedure_step_start_time"] == "0830"
    assert step["study_instance_uid"].startswith("1.2.826.0.1.3680043.8.498.")

    assert api(gateway, "GET", f"/{step['id']}").json() == step
    assert [s["id"] for s in api(gateway, "GET", params={"date": "20261123", "modality": "CT"}).json()] == [step["id"]]
    assert api(gateway, "GET", params={"date": "20261124"}).json() == []

    r = api(gateway, "PATCH", f"/{step['id']}", json={"status": "STARTED"})
    assert r.status_code == 200 and r.json()["status"] == "STARTED"
    assert api(gateway, "GET", params={"status": "SCHEDULED"}).json() == []
    assert api(gateway, "DELETE", f"/{step['id']}").status_code == 204
    problem(api(gateway, "GET", f"/{step['id']}"), 404)


def test_organizations_are_kept_apart(gateway: Gateway) -> None:
    a = api(gateway, "POST", json=ORDER).json()
    b = api(gateway, "POST", who=ADMIN, json=ORDER | {"org": "clinic-b", "scheduled_station_ae_title": "US-B"}).json()
    assert b["org"] == "clinic-b"
    for method, kw in (("GET", {}), ("PATCH", {"json": {"status": "DISCONTINUED"}}), ("DELETE", {})):
        problem(api(gateway, method, f"/{b['id']}", **kw), 404)  # as if it did not exist
    assert [s["id"] for s in api(gateway, "GET").json()] == [a["id"]]
    assert [s["id"] for s in api(gateway, "GET", who=RIS_B).json()] == [b["id"]]
    assert {s["id"] for s in api(gateway, "GET", who=ADMIN).json()} == {a["id"], b["id"]}
    assert [s["id"] for s in api(gateway, "GET", who=ADMIN, params={"org": "clinic-b"}).json()] == [b["id"]]
    assert "own organization" in problem(api(gateway, "POST", json=ORDER | {"org": "clinic-b"}), 403)


def test_roles_and_tokens(gateway: Gateway) -> None:
    problem(api(gateway, "POST", who=CLINICIAN_A, json=ORDER), 403)
    problem(api(gateway, "GET", who=CLINICIAN_A), 403)
    for method in ("GET", "POST"):
        r = httpx.request(method, f"{gateway.url}/api/worklist", json=ORDER)
        problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")
    problem(httpx.get(f"{gateway.url}/api/worklist/1"), 401)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("modality", "CTX"),
        ("patient_name", ""),
        ("patient_id", None),
        ("scheduled_procedure_step_start_date", "2026-02-30"),
        ("scheduled_procedure_step_start_time", "8 o'clock"),
        ("study_instance_uid", "1.2.840.abc"),
        ("scheduled_station_ae_title", "A_VERY_LONG_AE_TITLE"),
        ("accession_number", "ACCESSION-NUMBER-TOO-LONG"),
        ("patient_sex", "X"),
        ("station_ae", "CT1"),  # unknown fields are refused, so a typo is noticed
    ],
)
def test_bad_input_is_a_problem_naming_the_field(gateway: Gateway, field: str, value: Any) -> None:
    body = {k: v for k, v in (ORDER | {field: value}).items() if v is not None}
    r = api(gateway, "POST", json=body)
    detail = problem(r, 400)
    assert field in detail
    assert [e["loc"] for e in r.json()["errors"]] == [["body", field]]


def test_bad_requests_that_the_archive_refuses(gateway: Gateway) -> None:
    assert "org: no organization" in problem(api(gateway, "POST", who=ADMIN, json=ORDER | {"org": "nowhere"}), 400)
    assert "org: required" in problem(api(gateway, "POST", who=ADMIN, json=ORDER), 400)
    detail = problem(api(gateway, "POST", json=ORDER | {"scheduled_station_ae_title": "US-B"}), 400)
    assert "scheduled_station_ae_title" in detail
    problem(api(gateway, "GET", params={"date": "20261124-20261123"}), 400)
    problem(api(gateway, "GET", params={"status": "DONE"}), 400)
    problem(api(gateway, "GET", "/not-a-number"), 400)
    headers = gateway.headers(**RIS_A) | {"content-type": "application/json"}
    problem(httpx.post(f"{gateway.url}/api/worklist", content=b"{not json", headers=headers), 400)

    step = api(gateway, "POST", json=ORDER).json()
    problem(api(gateway, "PATCH", f"/{step['id']}", json={"status": "DONE"}), 400)
    assert api(gateway, "PATCH", f"/{step['id']}", json={"status": "COMPLETED"}).status_code == 200
    assert "final" in problem(api(gateway, "PATCH", f"/{step['id']}", json={"status": "SCHEDULED"}), 400)


def test_the_routes_are_described(gateway: Gateway) -> None:
    spec = httpx.get(f"{gateway.url}/openapi.json", headers=gateway.headers(**ADMIN)).json()
    assert {"get", "post"} <= set(spec["paths"]["/api/worklist"])
    assert {"get", "patch", "delete"} <= set(spec["paths"]["/api/worklist/{step_id}"])


@pytest.mark.parametrize("step_id", ["9223372036854775808", "0", "-1", "1e3"])
@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_an_id_out_of_range_is_400_not_500(gateway: Gateway, method: str, step_id: str) -> None:
    """Before: 2**63 reached SQLite and answered 500 (OverflowError); ids are 1 to 2**63-1, as
    the OpenAPI says."""
    kw = {"json": {"status": "STARTED"}} if method == "PATCH" else {}
    detail = problem(api(gateway, method, f"/{step_id}", **kw), 400)
    assert "step_id" in detail
