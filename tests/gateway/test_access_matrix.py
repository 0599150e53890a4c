"""Every route of the gateway × every kind of caller: the status each cell must get, and no byte of
organization B's patient data in any answer given to organization A.

The routes come from the app's own OpenAPI description (`gateway.openapi.describe`), so a route
added later is in the matrix at once: one this module cannot classify fails the test. Each
route is asked about clinic-b's data (its study, series, instance, worklist step, share, AE).
The cells (DESIGN.md "HTTP surface" and "Access, shares, emergency access, consent and audit"):

* no token, a wrong signature, an expired token, a token for another audience: 401;
* a token of a disabled or unknown organization, or with no role: 403;
* an admin: allowed everywhere;
* hosp-a's clinician and integrator: B's objects answer as objects that do not exist (the same
  status as the same route with UIDs nobody stored), admin routes 403, a write into B's study
  refused; clinic-b's clinician: its own objects;
* hosp-a's clinician with `PACS-Emergency-Access`: reads B's images, writes nothing.

"Allowed" means the access rule let the request through: not 401, 403 or 404, and never 5xx.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import delete, func, insert, select

from gateway.openapi import describe
from storage.access import shares
from storage.access.orgs import AeSpec, add_org, update_org
from storage.access.tokens import ALGORITHM, ISSUER, signing_key
from storage.archive import Archive
from storage.index.models import ConsentRecord, LinkCandidate, PatientIdentity
from storage.patients import consent, persons
from storage.patients.linker import link_pending
from storage.patients.model import Model
from storage.settings import Settings
from storage.workflow import subscriptions
from tests.kit import dicom_factory as f
from tests.kit.backends import BACKENDS, module_archive
from tests.kit.dicomweb import Gateway, serve_gateway
from tests.kit.principals import ADMIN, CLINIC_B, CLINICIAN_B, CT_A, HOSP_A, INTEGRATOR_B, US_B, ctx
from tests.kit.seed import seed

THIRD, CLOSED = "third-d", "closed-c"
PATIENT_A, PATIENT_B = ("POPESCU^ION", "PA-1"), ("IONESCU^MARIA", "PB-7")

DENIED, FORBIDDEN, HIDDEN, ALLOWED, WRITE_REFUSED = "401", "403", "as-missing", "allowed", "409"


@dataclass
class World:
    """What the archive holds: A's study, B's study, B's disposable study (for deletes), B's step and share."""

    gateway: Gateway
    study_a: str
    study_b: tuple[str, str, str]  # study, series, SOP
    spare_b: tuple[str, str, str]
    spare_b_bytes: list[bytes]
    step_b: int
    share_b: int
    pixels_b: bytes
    stow_b: Callable[[], bytes]  # a new instance of B's study and patient, for STOW-RS

    def leaks(self) -> list[bytes]:
        """What hosp-a must never read: B's patient, UIDs and a slice of its pixel data."""
        study, series, sop = self.study_b
        values = [*PATIENT_B, "IONESCU", study, series, sop, *self.spare_b]
        return [v.encode() for v in values] + [self.pixels_b]


@pytest.fixture(scope="module", params=BACKENDS[:1])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with module_archive(request, tmp_path_factory.mktemp("matrix")) as (settings, archive):
        gen = serve_gateway(settings, archive)
        gateway = next(gen)
        try:
            yield _populate(gateway, archive)
        finally:
            gen.close()


def _populate(gateway: Gateway, archive: Archive) -> World:
    with archive.db.write() as session:
        add_org(session, THIRD, "Cabinet D", [])
        add_org(session, CLOSED, "Clinica închisă", [])
        add_org(session, CLINIC_B, None, [AeSpec("SPARE-B")])
        update_org(session, CLOSED, disabled=True)
    a = f.ct_dataset(patient_name=PATIENT_A[0], patient_id=PATIENT_A[1])
    seed(archive, a, as_=CT_A)
    b = f.ct_dataset(patient_name=PATIENT_B[0], patient_id=PATIENT_B[1])
    b.PixelData = os.urandom(len(b.PixelData))  # pixels no other answer can hold by chance
    seed(archive, b, as_=US_B)
    spare = [f.to_bytes(f.ct_dataset(patient_name=PATIENT_B[0], patient_id=PATIENT_B[1]))]
    seed(archive, *spare, as_=US_B)
    headers_b = {"Authorization": f"Bearer {gateway.token(CLINIC_B, ('integrator',))}"}
    step = httpx.post(f"{gateway.url}/api/worklist", json=_step_body(), headers=headers_b)
    assert step.status_code == 201, step.text
    with archive.db.write() as session:
        share = shares.create(
            session,
            ctx(CLINICIAN_B),
            study_uid=str(b.StudyInstanceUID),
            to_org=THIRD,
            reason="second opinion",
            expires=None,
        )
    study_b = (str(b.StudyInstanceUID), str(b.SeriesInstanceUID), str(b.SOPInstanceUID))

    def stow_b() -> bytes:
        return f.to_bytes(f.ct_dataset(study_uid=study_b[0], patient_name=PATIENT_B[0], patient_id=PATIENT_B[1]))

    link_pending(archive.db, Model())  # every identity in a person of its own
    return World(
        gateway=gateway,
        study_a=str(a.StudyInstanceUID),
        study_b=study_b,
        spare_b=f.uids_of(spare[0]),
        spare_b_bytes=spare,
        step_b=int(step.json()["id"]),
        share_b=share.id,
        pixels_b=bytes(b.PixelData[:32]),
        stow_b=stow_b,
    )


def _step_body() -> dict[str, Any]:
    return {
        "org": CLINIC_B,
        "patient_name": PATIENT_B[0],
        "patient_id": PATIENT_B[1],
        "modality": "US",
        "scheduled_procedure_step_start_date": "20261207",
    }


# ----- callers -----------------------------------------------------------------------------


def _claims(sub: str, org: str | None, roles: list[str], **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "sub": sub, "org": org, "roles": roles, "iat": now, "exp": now + 600, **extra}


def callers(settings: Settings) -> dict[str, dict[str, str]]:
    """Caller kind -> the headers it sends."""
    key = signing_key(settings)

    def bearer(claims: dict[str, Any], secret: str = key) -> dict[str, str]:
        return {"Authorization": f"Bearer {jwt.encode(claims, secret, algorithm=ALGORITHM)}"}

    clinician_a = bearer(_claims("dr@hosp-a", HOSP_A, ["clinician"]))
    return {
        "no-token": {},
        "bad-signature": bearer(_claims("dr@hosp-a", HOSP_A, ["clinician"]), "not-the-key-" + "x" * 40),
        "expired": bearer(_claims("dr@hosp-a", HOSP_A, ["clinician"], exp=int(time.time()) - 5)),
        "wrong-audience": bearer(_claims("dr@hosp-a", HOSP_A, ["clinician"], aud="another-api")),
        "disabled-org": bearer(_claims("dr@closed-c", CLOSED, ["clinician"])),
        "unknown-org": bearer(_claims("dr@nowhere", "nowhere", ["clinician"])),
        "no-role": bearer(_claims("dr@hosp-a", HOSP_A, [])),
        "clinician-a": clinician_a,
        "integrator-a": bearer(_claims("ris@hosp-a", HOSP_A, ["integrator"])),
        "clinician-b": bearer(_claims("dr@clinic-b", CLINIC_B, ["clinician"])),
        "admin": bearer(_claims("admin", None, ["admin"])),
        "emergency-a": {**clinician_a, "PACS-Emergency-Access": "unconscious patient, ED bay 3"},
    }


#: the callers whose answers must carry nothing of clinic-b's
ORG_A = frozenset({"clinician-a", "integrator-a"})


# ----- expectations ------------------------------------------------------------------------


def expected(method: str, path: str, caller: str) -> str:
    """The cell: what `caller` must get from `method path` on clinic-b's data."""
    if path == "/fhir/metadata":
        return ALLOWED  # the one open FHIR path: what the server serves, no patient's data
    if caller in ("no-token", "bad-signature", "expired", "wrong-audience"):
        return DENIED
    if caller in ("disabled-org", "unknown-org", "no-role"):
        return FORBIDDEN
    if caller == "admin":
        return ALLOWED
    org_a, emergency = caller in ORG_A or caller == "emergency-a", caller == "emergency-a"
    if path in ("/metrics", "/dicomweb", "/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances"):
        if method == "GET":
            return ALLOWED  # searches: what they answer is checked for leaks
    if path.startswith("/fhir/AuditEvent"):
        return FORBIDDEN  # the audit trail: admins only
    if path.startswith("/fhir/Subscription"):  # an organization's own; integrators manage them
        manager = caller == "integrator-a"
        if method == "GET":
            return ALLOWED if path == "/fhir/Subscription" or caller == "clinician-b" else HIDDEN
        if path == "/fhir/Subscription":
            return ALLOWED if manager else FORBIDDEN  # a POST makes the caller's own
        return HIDDEN if manager else FORBIDDEN
    if path.startswith("/fhir/"):  # reads only; searches are checked for leaks
        if path in (
            "/fhir/Patient/{patient_id}",
            "/fhir/ImagingStudy/{study}",
            "/fhir/Patient/$ihe-pix",
            "/fhir/Consent/{consent_id}",
        ):
            return HIDDEN if org_a and not emergency else ALLOWED
        return ALLOWED  # searches, the DICOMweb Endpoint, the providers' directory
    if path.startswith(("/dicomweb", "/wado")):
        if method == "DELETE":
            return FORBIDDEN
        if method == "POST":
            return WRITE_REFUSED if org_a else ALLOWED
        return HIDDEN if org_a and not emergency else ALLOWED
    if path == "/api/persons/{person_id}/consent":  # an integrator, for a person its organization cares for
        return HIDDEN if caller == "integrator-a" else FORBIDDEN
    if path.startswith(("/api/orgs", "/api/audit", "/api/identities", "/api/persons", "/api/links", "/api/link-")):
        return FORBIDDEN
    if path.startswith("/api/worklist"):
        integrator = caller == "integrator-a"
        if not integrator:
            return FORBIDDEN
        if path == "/api/worklist":
            return ALLOWED if method == "GET" else FORBIDDEN  # scheduling for clinic-b
        return HIDDEN
    if path.startswith("/api/shares"):
        if path == "/api/shares" and method == "GET":
            return ALLOWED
        return HIDDEN if org_a else ALLOWED
    raise AssertionError(f"{method} {path}: a route the access matrix does not know; add its cells")


# ----- requests ----------------------------------------------------------------------------


def _request(world: World, method: str, path: str, headers: dict[str, str], *, missing: bool) -> httpx.Response:
    """`method path` about clinic-b's data (or, `missing`, about objects nobody stored)."""
    w = world
    study, series, sop = (f.uid(), f.uid(), f.uid()) if missing else w.study_b
    if method == "DELETE" and path.startswith("/dicomweb"):
        study, series, sop = (study, series, sop) if missing else w.spare_b
        seed(w.gateway.archive, *w.spare_b_bytes, as_=US_B)  # back after an admin's delete
    values = {
        "study": study,
        "series": series,
        "sop": sop,
        "frames": "1",
        "path": "7FE00010",
        "step_id": str(987654321 if missing else w.step_b),
        "share_id": str(987654321 if missing else w.share_b),
        "org_id": "no-such-org" if missing else CLINIC_B,
        "ae_title": "NO-SUCH-AE" if missing else "SPARE-B",
        "person_id": str(987654321 if missing else _person_of(w, PATIENT_B[1])),
        "patient_id": str(987654321 if missing else _identity_of(w, PATIENT_B[1])),
        "endpoint_id": "dicomweb",
        "event_id": "1",
        "consent_id": str(987654321 if missing else _consent_of(w, PATIENT_B[1])),
        "subscription_id": str(987654321 if missing or "{subscription_id}" not in path else _subscription_of(w)),
        "candidate_id": str(987654321 if missing or "{candidate_id}" not in path else _fresh_candidate(w)),
    }
    url = w.gateway.url + re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
    params: dict[str, str] = {}
    if path == "/wado":
        params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    if path == "/fhir/Consent":
        params = {"patient": f"Patient/{987654321 if missing else _identity_of(w, PATIENT_B[1])}"}
    if path == "/fhir/Patient/$ihe-pix":
        params = {"sourceIdentifier": f"urn:pacs:org:{CLINIC_B}|{'nobody' if missing else PATIENT_B[1]}"}
    if path == "/api/identities":
        params = {"issuer": f"urn:pacs:org:{CLINIC_B}", "patient_id": "nobody" if missing else PATIENT_B[1]}
    body: dict[str, Any] = {}
    if method == "POST" and path.startswith("/dicomweb"):
        boundary = uuid.uuid4().hex
        part = w.stow_b() if not missing else f.to_bytes(f.ct_dataset(study_uid=study))
        content = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + part
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {**headers, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
        body = {"content": content}
    elif path == "/fhir/Subscription/{subscription_id}" and method == "PUT":
        body = {"json": {**_subscription_body(), "id": values["subscription_id"]}}
    elif method in ("POST", "PATCH", "PUT"):
        body = {"json": _json_body(method, path, study)}
    response = httpx.request(method, url, params=params, headers=headers, timeout=30, **body)
    if method == "DELETE" and path == "/api/orgs/{org_id}/aes/{ae_title}" and response.status_code == 204:
        with w.gateway.archive.db.write() as session:
            add_org(session, CLINIC_B, None, [AeSpec("SPARE-B")])
    return response


def _json_body(method: str, path: str, study: str) -> dict[str, Any]:
    if path == "/api/worklist":
        return _step_body()
    if path == "/api/worklist/{step_id}":
        return {"status": "SCHEDULED"}
    if path == "/api/orgs":
        return {"id": CLINIC_B, "name": "Clinica B"}
    if path == "/api/orgs/{org_id}":
        return {"name": "Clinica B"}
    if path == "/api/orgs/{org_id}/aes":
        return {"ae_title": "SPARE-B"}
    if path == "/api/shares":
        return {"study_instance_uid": study, "to_org": THIRD, "reason": "referral"}
    if path == "/api/links":
        return {"a": _ref(HOSP_A, PATIENT_A[1]), "b": _ref(CLINIC_B, PATIENT_B[1])}
    if path == "/api/persons/{person_id}/unlink":
        return _ref(CLINIC_B, PATIENT_B[1])
    if path.startswith("/api/link-candidates/"):
        return {}
    if path == "/api/persons/{person_id}/consent":
        return {"cross_org_sharing": "opt-in", "recorded_by": "front desk"}
    if path == "/fhir/Patient/$match":  # B's patient, by name and birth date
        family, given = PATIENT_B[0].split("^")
        patient = {"resourceType": "Patient", "name": [{"family": family, "given": [given]}], "birthDate": "1980-01-01"}
        return {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient}]}
    if path == "/fhir/Subscription":
        return _subscription_body()
    raise AssertionError(f"{method} {path}: no request body for it in the access matrix")


def _subscription_body() -> dict[str, Any]:
    """A Subscription to nowhere, switched off (the matrix's gateway would otherwise send)."""
    return {
        "resourceType": "Subscription",
        "status": "off",
        "reason": "new studies",
        "criteria": "ImagingStudy?modality=US",
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"},
    }


def _subscription_of(world: World) -> int:
    """A live Subscription of clinic-b (an admin's delete in an earlier cell ended the last one)."""
    with world.gateway.archive.db.write() as session:
        live = subscriptions.search(session, ctx(INTEGRATOR_B), limit=1)
        if live:
            return live[0].id
        spec = subscriptions.Spec(criteria="ImagingStudy", endpoint="http://127.0.0.1:9/hook", status="off")
        return subscriptions.create(session, ctx(INTEGRATOR_B), spec).id


def _ref(org: str, patient_id: str) -> dict[str, str]:
    return {"issuer": f"urn:pacs:org:{org}", "patient_id": patient_id}


def _person_of(world: World, patient_id: str) -> int:
    """The person an identity is in now (an admin's link or unlink in an earlier cell moves it)."""
    with world.gateway.archive.db.engine.connect() as conn:
        person = conn.scalar(select(PatientIdentity.person_id).where(PatientIdentity.patient_id == patient_id))
    assert person is not None
    return int(person)


def _identity_of(world: World, patient_id: str) -> int:
    """The FHIR Patient id of an identity."""
    with world.gateway.archive.db.engine.connect() as conn:
        identity = conn.scalar(select(PatientIdentity.id).where(PatientIdentity.patient_id == patient_id))
    assert identity is not None
    return int(identity)


def _consent_of(world: World, patient_id: str) -> int:
    """A recorded consent of the identity's person (opt-in: nobody's view changes)."""
    with world.gateway.archive.db.write_conn() as conn:
        view = consent.record(conn, ctx(ADMIN), _person_of(world, patient_id), "opt-in", "front desk")
        recorded = conn.scalar(select(func.max(ConsentRecord.id)).where(ConsentRecord.person_id == view.person_id))
    assert recorded is not None
    return int(recorded)


def _apart(world: World) -> None:
    """A's and B's patients as two persons again: the matrix's admin cells link them (and, by care
    relationship, each organization would then see the other's study of that person)."""
    person = _person_of(world, PATIENT_B[1])
    if person == _person_of(world, PATIENT_A[1]):
        with world.gateway.archive.db.write_conn() as conn:
            persons.unlink(conn, "test", person, f"urn:pacs:org:{CLINIC_B}", PATIENT_B[1])


def _fresh_candidate(world: World) -> int:
    """An open review candidate between A's and B's patients (an admin's accept or reject in an
    earlier cell decided the last one)."""
    with world.gateway.archive.db.write_conn() as conn:
        a, b = (
            conn.scalar(select(PatientIdentity.id).where(PatientIdentity.patient_id == pid))
            for pid in (PATIENT_A[1], PATIENT_B[1])
        )
        conn.execute(delete(LinkCandidate))
        made = conn.execute(
            insert(LinkCandidate)
            .values(identity_a=min(a, b), identity_b=max(a, b), score=13.0, reasons="[]", status="open")
            .returning(LinkCandidate.id)
        )
        return int(made.scalar_one())


def _routes(app_description: dict[str, Any]) -> list[tuple[str, str]]:
    skip = {"/healthz", "/readyz"}  # no token, no patient data (tested in test_auth)
    return [(m.upper(), p) for p, ops in app_description["paths"].items() if p not in skip for m in ops]


def _check(world: World, method: str, path: str, caller: str, headers: dict[str, str]) -> str | None:
    """None when the cell holds, else what went wrong."""
    want = expected(method, path, caller)
    r = _request(world, method, path, headers, missing=False)
    got = r.status_code
    if got >= 500:
        return f"{got} {r.text[:200]}"
    if want == DENIED and got != 401:
        return f"{got}, expected 401"
    if want == FORBIDDEN and got != 403:
        return f"{got}, expected 403"
    if want == WRITE_REFUSED and got != 409:
        return f"{got}, expected 409 (nothing stored): {r.text[:200]}"
    if want == ALLOWED and got in (401, 403, 404):
        return f"{got}, expected to be allowed: {r.text[:200]}"
    if want == HIDDEN and not (caller == "integrator-a" and path.startswith(("/dicomweb", "/wado"))):
        # (an integrator's DICOMweb reads follow the clinician's rule: its twin is the clinician's)
        twin = _request(world, method, path, headers, missing=True)
        if got != twin.status_code:
            return f"{got}, while the same request about objects nobody stored gets {twin.status_code}"
    if caller in ORG_A:
        asked = str(r.request.url).encode() + r.request.content  # what the caller itself sent
        leaked = [v for v in world.leaks() if v in r.content and v not in asked]
        if leaked:
            return f"{got}: the answer carries clinic-b's {leaked[0][:40]!r}"
    return None


def test_every_route_for_every_caller(world: World) -> None:
    gateway = world.gateway
    routes = _routes(describe(_app_of(gateway)))
    assert len(routes) >= 40, routes  # the whole surface, not a part of it
    heads = callers(gateway.settings)
    failures = []
    for method, path in routes:
        _apart(world)  # an admin's link in an earlier cell would open B's study to A by care relationship
        for caller, headers in heads.items():
            problem = _check(world, method, path, caller, headers)
            if problem:
                failures.append(f"{caller:>14} {method:6} {path}: {problem}")
    assert not failures, "\n".join(failures)


def _app_of(gateway: Gateway) -> Any:
    from gateway.app import create_app

    return create_app(gateway.settings, gateway.archive)


def test_the_matrix_reaches_every_cell_kind(world: World) -> None:
    """A matrix whose cells were all 'allowed' would prove nothing: each kind of cell occurs."""
    routes = _routes(describe(_app_of(world.gateway)))
    kinds = {expected(m, p, c) for m, p in routes for c in callers(world.gateway.settings)}
    assert kinds == {DENIED, FORBIDDEN, HIDDEN, ALLOWED, WRITE_REFUSED}


def test_what_hosp_a_searches_holds_only_its_own(world: World) -> None:
    """QIDO-RS at every level, as hosp-a's clinician: its study, nothing of clinic-b's."""
    _apart(world)
    heads = callers(world.gateway.settings)["clinician-a"]
    found = httpx.get(f"{world.gateway.dicomweb}/studies", headers=heads).json()
    uids = {s["0020000D"]["Value"][0] for s in found}
    assert world.study_a in uids and world.study_b[0] not in uids
    for level in ("series", "instances"):
        body = httpx.get(f"{world.gateway.dicomweb}/{level}", headers=heads).content
        assert not [v for v in world.leaks() if v in body]


def test_an_emergency_access_is_recorded_with_its_reason(world: World) -> None:
    heads = callers(world.gateway.settings)
    study = world.study_b[0]
    r = httpx.get(f"{world.gateway.dicomweb}/studies/{study}/metadata", headers=heads["emergency-a"])
    assert r.status_code == 200
    found = httpx.get(
        f"{world.gateway.url}/api/audit", params={"action": "emergency", "study": study}, headers=heads["admin"]
    ).json()
    assert found and found[0]["reason"] == "unconscious patient, ED bay 3"
    assert found[0]["actor"] == "dr@hosp-a" and found[0]["owner_org"] == CLINIC_B
    assert found[0]["patient"] == PATIENT_B[1]
    metrics = httpx.get(f"{world.gateway.url}/metrics", headers=heads["admin"]).text
    counted = re.search(r"^pacs_emergency_access_total (\S+)$", metrics, re.M)
    assert counted and float(counted.group(1)) >= 1


@pytest.mark.parametrize(
    ("value", "status"),
    [("", 400), ("x" * 201, 400), ("tab\there", 400)],
)
def test_an_emergency_access_needs_a_reason(world: World, value: str, status: int) -> None:
    heads = {**callers(world.gateway.settings)["clinician-a"], "PACS-Emergency-Access": value}
    r = httpx.get(f"{world.gateway.dicomweb}/studies/{world.study_b[0]}/metadata", headers=heads)
    assert r.status_code == status, r.text


def test_an_emergency_access_is_for_clinicians(world: World) -> None:
    heads = {**callers(world.gateway.settings)["integrator-a"], "PACS-Emergency-Access": "a reason"}
    r = httpx.get(f"{world.gateway.dicomweb}/studies/{world.study_b[0]}/metadata", headers=heads)
    assert r.status_code == 403
    assert IONESCU not in r.content


IONESCU = b"IONESCU"
