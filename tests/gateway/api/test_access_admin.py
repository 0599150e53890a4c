"""Organizations, shares, token revocation and the audit trail over the admin API, on both backends.

Each change must take effect at once, on the running server's next request: a share grants and
its revocation or expiry ends, a disabled organization's tokens are refused, a revoked token is
refused; every request leaves an audit record with the right fields, committed before the answer
(no record, no answer); `pacs audit verify` finds a record altered in the database.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.audit import AuditMiddleware, record_early
from storage.access.orgs import update_org
from storage.access.standing import revoke_tokens
from tests.kit import dicom_factory as f
from tests.kit.dicomweb import Gateway
from tests.kit.principals import CT_A, US_B
from tests.kit.seed import seed
from tests.kit.servers import pacs_executable

ADMIN = {"org": None, "roles": ("admin",)}
DR_A = {"org": "hosp-a", "roles": ("clinician",)}
DR_B = {"org": "clinic-b", "roles": ("clinician",)}


def call(gw: Gateway, method: str, path: str, who: dict[str, Any] = ADMIN, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{gw.url}{path}", headers=gw.headers(**who), timeout=30, **kw)


def sees(gw: Gateway, who: dict[str, Any], study: str) -> bool:
    r = call(gw, "GET", f"/dicomweb/studies/{study}/metadata", who)
    assert r.status_code in (200, 404), r.text
    return r.status_code == 200


def test_a_share_grants_at_once_and_its_revocation_ends_at_once(gateway: Gateway) -> None:
    study = str(seed(gateway.archive, f.ct_dataset(patient_id="P-A1"), as_=CT_A)[0].study_uid)
    assert sees(gateway, DR_A, study) and not sees(gateway, DR_B, study)

    foreign = call(
        gateway, "POST", "/api/shares", DR_B, json={"study_instance_uid": study, "to_org": "clinic-b", "reason": "x"}
    )
    assert foreign.status_code == 404  # clinic-b cannot share what it cannot see, nor learn it exists
    made = call(
        gateway,
        "POST",
        "/api/shares",
        DR_A,
        json={"study_instance_uid": study, "to_org": "clinic-b", "reason": "referral to cardiology"},
    )
    assert made.status_code == 201, made.text
    share = made.json()
    assert (
        share["from_org"] == "hosp-a" and share["active"] and made.headers["location"] == f"/api/shares/{share['id']}"
    )
    assert sees(gateway, DR_B, study)
    assert [s["id"] for s in call(gateway, "GET", "/api/shares", DR_B).json()] == [share["id"]]

    passed_on = call(
        gateway, "POST", "/api/shares", DR_B, json={"study_instance_uid": study, "to_org": "hosp-a", "reason": "x"}
    )
    assert passed_on.status_code in (400, 403)  # a receiver does not pass a study on
    assert call(gateway, "DELETE", f"/api/shares/{share['id']}", DR_B).status_code == 404
    revoked = call(gateway, "DELETE", f"/api/shares/{share['id']}", DR_A)
    assert revoked.status_code == 200 and not revoked.json()["active"]
    assert not sees(gateway, DR_B, study)


def test_a_share_ends_when_it_expires(gateway: Gateway) -> None:
    study = str(seed(gateway.archive, f.ct_dataset(patient_id="P-A2"), as_=CT_A)[0].study_uid)
    expires = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    made = call(
        gateway,
        "POST",
        "/api/shares",
        DR_A,
        json={"study_instance_uid": study, "to_org": "clinic-b", "reason": "on call", "expires": expires},
    )
    assert made.status_code == 201, made.text
    assert sees(gateway, DR_B, study)
    time.sleep(2.5)
    assert not sees(gateway, DR_B, study)
    past = call(
        gateway,
        "POST",
        "/api/shares",
        DR_A,
        json={"study_instance_uid": study, "to_org": "clinic-b", "reason": "x", "expires": "2020-01-01T00:00:00Z"},
    )
    assert past.status_code == 400 and "past" in past.json()["detail"]


def test_disabling_an_organization_refuses_its_tokens_at_once(gateway: Gateway) -> None:
    token = gateway.headers(**DR_B)
    assert httpx.get(f"{gateway.dicomweb}/studies", headers=token).status_code == 200
    r = call(gateway, "PATCH", "/api/orgs/clinic-b", json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True
    refused = httpx.get(f"{gateway.dicomweb}/studies", headers=token)
    assert refused.status_code == 403 and "disabled" in refused.json()["detail"]
    assert call(gateway, "PATCH", "/api/orgs/clinic-b", json={"disabled": False}).status_code == 200
    assert httpx.get(f"{gateway.dicomweb}/studies", headers=token).status_code == 200


def test_a_revoked_token_is_refused_at_once(gateway: Gateway) -> None:
    first, second = gateway.token("hosp-a"), gateway.token("hosp-a")
    for token in (first, second):
        assert httpx.get(f"{gateway.dicomweb}/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with gateway.archive.db.write() as session:
        revoke_tokens(session, token_id=jwt.decode(first, options={"verify_signature": False})["jti"], by="test")
    r = httpx.get(f"{gateway.dicomweb}/studies", headers={"Authorization": f"Bearer {first}"})
    assert r.status_code == 401 and "revoked" in r.headers["www-authenticate"]
    assert httpx.get(f"{gateway.dicomweb}/studies", headers={"Authorization": f"Bearer {second}"}).status_code == 200
    with gateway.archive.db.write() as session:
        revoke_tokens(session, sub="clinician@hosp-a", by="test")  # every token of the subject until now
    assert httpx.get(f"{gateway.dicomweb}/studies", headers={"Authorization": f"Bearer {second}"}).status_code == 401


def test_organizations_and_aes_over_the_api(gateway: Gateway) -> None:
    made = call(
        gateway,
        "POST",
        "/api/orgs",
        json={"id": "cabinet-d", "name": "Cabinet D", "aes": [{"ae_title": "US-D", "allowed_from": "10.4.0.0/16"}]},
    )
    assert made.status_code == 201, made.text
    assert made.json()["aes"] == [
        {
            "ae_title": "US-D",
            "host": None,
            "port": None,
            "allowed_from": "10.4.0.0/16",
            "tls_subject": None,
            "bound": True,
        }
    ]
    taken = call(gateway, "POST", "/api/orgs/cabinet-d/aes", json={"ae_title": "CT1"})
    assert taken.status_code == 400 and "hosp-a" in taken.json()["detail"]
    assert (
        call(
            gateway, "POST", "/api/orgs/cabinet-d/aes", json={"ae_title": "WS-D", "host": "10.4.0.9", "port": 104}
        ).status_code
        == 201
    )
    assert {a["ae_title"] for a in call(gateway, "GET", "/api/orgs/cabinet-d/aes").json()} == {"US-D", "WS-D"}
    assert call(gateway, "DELETE", "/api/orgs/cabinet-d/aes/WS-D").status_code == 204
    assert call(gateway, "DELETE", "/api/orgs/cabinet-d/aes/WS-D").status_code == 404
    nat = call(gateway, "PATCH", "/api/orgs/cabinet-d", json={"check_ae_address": False})
    assert nat.json()["check_ae_address"] is False
    assert call(gateway, "GET", "/api/orgs/nowhere").status_code == 404
    assert call(gateway, "POST", "/api/orgs", json={"id": "bad id!", "name": "x"}).status_code == 400


def test_every_request_leaves_one_record_with_its_fields(gateway: Gateway) -> None:
    stored = seed(gateway.archive, f.ct_dataset(patient_id="P-AUD", patient_name="AUDIT^ANA"), as_=US_B)[0]
    study = str(stored.study_uid)
    assert call(gateway, "GET", f"/dicomweb/studies/{study}/metadata", DR_A).status_code == 404
    assert call(gateway, "GET", f"/dicomweb/studies/{study}/metadata", DR_B).status_code == 200
    assert httpx.get(f"{gateway.dicomweb}/studies/{study}/metadata").status_code == 401
    records = call(gateway, "GET", "/api/audit", params={"study": study}).json()
    by_outcome = {r["outcome"]: r for r in records}
    assert set(by_outcome) == {"ok", "not-found", "denied"}, records
    ok = by_outcome["ok"]
    assert ok["actor"] == "clinician@clinic-b" and ok["org"] == "clinic-b" and ok["owner_org"] is None
    assert ok["patient"] == "P-AUD" and ok["channel"] == "dicomweb" and ok["source"] == "127.0.0.1"
    assert ok["action"] == "GET /dicomweb/studies/{study}/metadata" and len(ok["hash"]) == 64
    hidden = by_outcome["not-found"]
    assert hidden["actor"] == "clinician@hosp-a" and hidden["org"] == "hosp-a"
    assert by_outcome["denied"]["actor"] == ""
    assert call(gateway, "GET", "/api/audit", DR_A).status_code == 403
    for method in ("PUT", "PATCH", "DELETE"):  # no route changes or deletes a record
        assert call(gateway, method, "/api/audit").status_code == 405


def test_a_stow_request_records_the_studies_it_wrote(gateway: Gateway) -> None:
    data = f.to_bytes(f.ct_dataset(patient_id="P-STOW"))
    study = f.uids_of(data)[0]
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    r = httpx.post(
        f"{gateway.dicomweb}/studies", content=body, headers={**gateway.headers(**DR_A), "Content-Type": content_type}
    )
    assert r.status_code == 200, r.text
    records = call(gateway, "GET", "/api/audit", params={"study": study, "action": "POST /dicomweb/studies"}).json()
    assert len(records) == 1 and records[0]["patient"] == "P-STOW" and records[0]["outcome"] == "ok"


def test_no_record_no_answer(gateway: Gateway) -> None:
    """When the record cannot be committed, the client gets 503, not the data."""
    study = str(seed(gateway.archive, f.ct_dataset(), as_=CT_A)[0].study_uid)
    gateway.archive.audit.close()
    r = call(gateway, "GET", f"/dicomweb/studies/{study}/metadata", DR_A)
    assert r.status_code == 503 and b"PAT-1" not in r.content


def test_audit_verify_names_an_altered_record(gateway: Gateway) -> None:
    for _ in range(3):
        call(gateway, "GET", "/dicomweb/studies", DR_A)
    data_dir = str(gateway.settings.data_dir)
    env = {"PACS_DATABASE_URL": gateway.settings.database_url}
    intact = _pacs("audit", "verify", "--data-dir", data_dir, env=env)
    assert intact.returncode == 0 and "intact" in intact.stdout, intact.stdout + intact.stderr
    with gateway.archive.db.engine.begin() as conn:
        victim = conn.execute(text("SELECT id FROM audit_records ORDER BY id LIMIT 1 OFFSET 1")).scalar_one()
        conn.execute(text("UPDATE audit_records SET actor = 'somebody-else' WHERE id = :id"), {"id": victim})
    broken = _pacs("audit", "verify", "--data-dir", data_dir, env=env)
    assert broken.returncode == 1 and f"record {victim} " in broken.stdout and "altered" in broken.stdout
    with gateway.archive.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_records WHERE id = :id"), {"id": victim})
    missing = _pacs("audit", "verify", "--data-dir", data_dir, env=env)
    assert missing.returncode == 1 and "missing" in missing.stdout


def _pacs(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [pacs_executable(), *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=60
    )


def test_disabled_org_in_storage_is_seen_by_the_next_request(gateway: Gateway) -> None:
    token = gateway.headers(**DR_A)
    with gateway.archive.db.write() as session:
        update_org(session, "hosp-a", disabled=True)
    assert httpx.get(f"{gateway.dicomweb}/studies", headers=token).status_code == 403


def test_a_search_records_once_though_its_record_starts_early(gateway: Gateway) -> None:
    """QIDO-RS starts committing its record once its rows are read (`gateway.audit.record_early`):
    still one record a request, and none lost when the answer ends otherwise."""
    seed(gateway.archive, f.ct_dataset(patient_id="P-EARLY"), as_=CT_A)
    r = call(gateway, "GET", "/dicomweb/studies", DR_A, params={"PatientID": "P-EARLY"})
    assert r.status_code == 200 and len(r.json()) == 1
    records = call(
        gateway, "GET", "/api/audit", params={"patient": "P-EARLY", "action": "GET /dicomweb/studies"}
    ).json()
    assert [(x["outcome"], x["actor"]) for x in records] == [("ok", "clinician@hosp-a")], records


def test_an_early_record_that_the_answer_contradicts_is_followed_by_the_true_one(gateway: Gateway) -> None:
    """A route recorded early as answering 200 that then fails: the trail holds both records, the
    read and then the failed answer, and the client gets the failure."""
    app = Starlette(routes=[Route("/api/early-then-fail", _early_then_fail)])
    app.state.archive = gateway.archive
    assert asyncio.run(_get(AuditMiddleware(app), "/api/early-then-fail")).status_code == 500
    records = call(gateway, "GET", "/api/audit", params={"action": "GET /api/early-then-fail"}).json()
    assert sorted(x["outcome"] for x in records) == ["error", "ok"], records


async def _get(app: AuditMiddleware, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        return await client.get(path)


def _early_then_fail(request: Request) -> Response:
    record_early(request)
    return Response(status_code=500)


def test_no_record_no_answer_for_a_search_recorded_early(gateway: Gateway) -> None:
    seed(gateway.archive, f.ct_dataset(patient_id="P-EARLY-503"), as_=CT_A)
    gateway.archive.audit.close()
    r = call(gateway, "GET", "/dicomweb/studies", DR_A, params={"PatientID": "P-EARLY-503"})
    assert r.status_code == 503 and b"P-EARLY-503" not in r.content
