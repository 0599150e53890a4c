"""The FHIR R4 API (`/fhir`) against real FHIR clients (fhirclient, fhirpy) and httpx, both backends.

Studies go in through the ingest pipeline as the hospital's CT (hosp-a) and the clinic's
ultrasound (clinic-b) send them; the patient index links the clinic's record of a patient to the
hospital's on their CNP (`link_pending`, run here so that a test knows it has). Then providers'
systems read and search Patient and ImagingStudy as their FHIR libraries do: what a token's
organization may see is what FHIR answers (the hospital's own patients, the clinic's by care
relationship, nothing of the patient who opted out), an invisible resource is a 404
OperationOutcome, searches page on their `next` links, and the CapabilityStatement lists exactly
the interactions and search parameters the server takes.

One archive per backend for the module; each test reads the module's patients (IDs of their own
prefixes), and the one test that changes something (an opt-out) uses a patient no other test reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhirclient import client as smart_client
from fhirclient.models.imagingstudy import ImagingStudy as SmartImagingStudy
from fhirclient.models.patient import Patient as SmartPatient
from fhirpy import SyncFHIRClient
from pydicom.dataset import Dataset
from sqlalchemy import select

from fhir_adapter.router import router as fhir_router
from storage.index.models import PatientIdentity
from storage.patients import cnp
from storage.patients.linker import link_pending
from storage.patients.model import Model
from tests.kit import dicom_factory as f
from tests.kit.backends import BACKENDS, module_archive
from tests.kit.dicomweb import Gateway, serve_gateway
from tests.kit.principals import CT_A, US_B
from tests.kit.seed import seed

FHIR_JSON = "application/fhir+json"
ADMIN: dict[str, Any] = {"org": None, "roles": ("admin",)}
DR_A: dict[str, Any] = {"org": "hosp-a", "roles": ("clinician",)}
DR_B: dict[str, Any] = {"org": "clinic-b", "roles": ("clinician",)}
CNP_SYSTEM = "urn:pacs:national-id:RO-CNP"


def valid_cnp(first12: str) -> str:
    return first12 + cnp.check_digit(first12)


ANA_CNP = valid_cnp("285031722001")  # a woman born 1985-03-17
OPTED_CNP = valid_cnp("290071222002")  # a woman born 1990-07-12


@dataclass
class World:
    gw: Gateway
    ids: dict[str, int]  # patient ID -> its FHIR Patient id
    studies: dict[str, list[str]]  # patient ID -> its Study Instance UIDs, as stored


def study_of(
    patient_id: str,
    name: str,
    *,
    birth: str,
    sex: str = "F",
    national_id: str = "",
    date: str = "20261120",
    modality: str = "CT",
    series: int = 1,
) -> list[Dataset]:
    """The instances of one study: `series` series of two instances each."""
    study = f.uid()
    found = []
    for _ in range(series):
        series_uid = f.uid()
        for number in (1, 2):
            ds = f.ct_dataset(
                patient_id=patient_id,
                patient_name=name,
                study_uid=study,
                series_uid=series_uid,
                charset="ISO_IR 192",
                modality=modality,
                instance_number=number,
            )
            ds.PatientBirthDate, ds.PatientSex, ds.StudyDate = birth, sex, date
            if national_id:
                item = Dataset()
                item.PatientID, item.IssuerOfPatientID = national_id, cnp.ISSUER
                ds.OtherPatientIDsSequence = [item]
            found.append(ds)
    return found


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("fhir")
    with module_archive(request, tmp) as (settings, archive), contextmanager(serve_gateway)(settings, archive) as gw:
        sent: dict[str, tuple[Any, list[list[Dataset]]]] = {
            # the hospital's Ana, three studies over two years; the clinic's record of her, linked on her CNP
            "H-ANA": (
                CT_A,
                [
                    study_of("H-ANA", "ȘTEFĂNESCU^ANA", birth="19850317", national_id=ANA_CNP, date="20250110"),
                    study_of("H-ANA", "ȘTEFĂNESCU^ANA", birth="19850317", national_id=ANA_CNP, date="20260315"),
                    study_of(
                        "H-ANA", "ȘTEFĂNESCU^ANA", birth="19850317", national_id=ANA_CNP, date="20261120", series=2
                    ),
                ],
            ),
            "9-44": (
                US_B,
                [study_of("9-44", "STEFANESCU^ANA", birth="19850317", national_id=ANA_CNP, modality="US")],
            ),
            # a man only the hospital treats
            "H-ION": (CT_A, [study_of("H-ION", "POPESCU^ION", birth="19600101", sex="M", date="20240505")]),
            # a patient of both who opts out of cross-organization sharing (the opt-out test's alone)
            "H-OPT": (CT_A, [study_of("H-OPT", "RUSU^MARIA", birth="19900712", national_id=OPTED_CNP)]),
            "C-OPT": (US_B, [study_of("C-OPT", "RUSU^MARIA", birth="19900712", national_id=OPTED_CNP)]),
        }
        studies: dict[str, list[str]] = {}
        for patient_id, (sender, its_studies) in sent.items():
            for instances in its_studies:
                seed(archive, *instances, as_=sender)
                studies.setdefault(patient_id, []).append(instances[0].StudyInstanceUID)
        link_pending(archive.db, Model())
        with archive.db.read() as session:
            ids = {r.patient_id: r.id for r in session.execute(select(PatientIdentity.patient_id, PatientIdentity.id))}
        yield World(gw, ids, studies)


def fhir(world: World, path: str, who: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
    headers = {"Accept": FHIR_JSON} | (world.gw.headers(**(who or DR_A)) if who is not False else {})
    return httpx.get(f"{world.gw.url}/fhir/{path}", headers=headers | kw.pop("headers", {}), **kw)


def fhirpy_client(world: World, who: dict[str, Any]) -> SyncFHIRClient:
    return SyncFHIRClient(f"{world.gw.url}/fhir", authorization=f"Bearer {world.gw.token(**who)}")


def smart(world: World, who: dict[str, Any]) -> smart_client.FHIRClient:
    """A fhirclient (SMART on FHIR) client with the caller's bearer token on its session."""
    app = smart_client.FHIRClient(settings={"app_id": "pacs-tests", "api_base": f"{world.gw.url}/fhir/"})
    app.server.session.headers["Authorization"] = f"Bearer {world.gw.token(**who)}"
    return app


def assert_outcome(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == code, body
    assert "/tmp" not in response.text and "Traceback" not in response.text
    return body


# ----- CapabilityStatement and the routes ---------------------------------------------------------


def test_metadata_is_open_and_lists_exactly_what_is_served(world: World) -> None:
    statement = fhir(world, "metadata", who=False)
    assert statement.status_code == 200 and statement.headers["content-type"].startswith(FHIR_JSON)
    body = statement.json()
    assert body["resourceType"] == "CapabilityStatement" and body["fhirVersion"] == "4.0.1"
    assert body["format"] == ["json"] and body["kind"] == "instance"
    served = {r["type"]: r for r in body["rest"][0]["resource"]}
    assert {t: sorted(i["code"] for i in r["interaction"]) for t, r in served.items()} == {
        "AuditEvent": ["read", "search-type"],
        "Consent": ["read", "search-type"],
        "Endpoint": ["read", "search-type"],
        "ImagingStudy": ["read", "search-type"],
        "Organization": ["read", "search-type"],
        "Patient": ["read", "search-type"],
        "Subscription": ["create", "delete", "read", "search-type", "update"],
    }
    assert served["ImagingStudy"]["searchInclude"] == ["ImagingStudy:patient"]
    assert [o["name"] for o in served["Patient"]["operation"]] == ["ihe-pix", "match"]
    # every parameter the statement lists is taken; one it does not list is refused
    for resource_type, resource in served.items():
        for param in resource.get("searchParam", []):
            value = {"date": "ge2000-01-01", "reference": "Patient/1", "token": "x"}.get(param["type"], "x")
            value = SAMPLES.get(param["name"], value)
            answer = fhir(world, resource_type, who=ADMIN, params={param["name"]: value})
            assert answer.status_code == 200, (resource_type, param["name"], answer.text)
        assert_outcome(fhir(world, resource_type, who=ADMIN, params={"not-a-param": "1"}), 400, "invalid")
    assert "security" in body["rest"][0] and "service" not in body["rest"][0]["security"]  # no external IdP here


#: a value each token parameter takes (any other token is any string)
SAMPLES = {
    "date": "ge2000-01-01",
    "patient": "Patient/1",
    "gender": "female",
    "status": "available",
    "endpoint": "Endpoint/dicomweb",
    "_lastUpdated": "ge2000-01-01",
}


def test_every_route_but_metadata_needs_a_token(world: World) -> None:
    routes = _fhir_routes()
    assert len(routes) >= 12
    for path, method in routes:
        concrete = path.replace("$ihe-pix", "$ihe-pix?sourceIdentifier=urn:pacs:org:hosp-a|H-ANA")
        for name, value in PATH_SAMPLES.items():
            concrete = concrete.replace(name, value)
        body = {"json": {"resourceType": "Subscription"}} if method in ("POST", "PUT") else {}
        answer = httpx.request(method, f"{world.gw.url}{concrete}", **body)  # type: ignore[arg-type]
        if path == "/fhir/metadata":
            assert answer.status_code == 200
        else:
            assert_outcome(answer, 401, "login")


#: a value for each path parameter of the FHIR routes
PATH_SAMPLES = {
    "{patient_id}": "1",
    "{study}": "1.2.3",
    "{endpoint_id}": "dicomweb",
    "{org_id}": "hosp-a",
    "{consent_id}": "1",
    "{event_id}": "1",
    "{subscription_id}": "1",
}


def _fhir_routes() -> list[tuple[str, str]]:
    """(path, method) of every route of the FHIR router, as mounted."""
    return sorted(
        {
            ("/fhir" + re.sub(r":\w+\}", "}", getattr(r, "path", "")), method)
            for r in fhir_router.routes
            for method in getattr(r, "methods", set())
        }
    )


def test_the_gateway_wires_what_the_fhir_router_leaves_to_its_app(world: World) -> None:
    """fhir_adapter imports no edge: its request context, archive, base URL and OAuth endpoints
    are placeholders the mounting app overrides. The gateway overrides each; an app that forgot
    one fails loudly, naming it, instead of answering without a caller or an archive."""
    import asyncio

    from fhir_adapter.router import WIRING
    from gateway.app import create_app

    assert set(WIRING) <= set(create_app(world.gw.settings, world.gw.archive).dependency_overrides)
    for placeholder in WIRING:
        with pytest.raises(NotImplementedError, match="the app that mounts the FHIR router wires"):
            asyncio.run(placeholder())


def test_errors_are_operation_outcomes_with_their_status(world: World) -> None:
    assert_outcome(fhir(world, "Observation"), 404, "not-found")
    assert_outcome(fhir(world, "Patient/999999999"), 404, "not-found")
    assert_outcome(fhir(world, "Patient/not-a-number"), 404, "not-found")
    assert_outcome(fhir(world, "Patient/%C2%84"), 404, "not-found")  # not a FHIR id: no such resource
    on_match = fhir(world, "Patient/$match")  # an operation's path, not a Patient's id
    assert_outcome(on_match, 405, "not-supported")
    assert on_match.headers["allow"] == "OPTIONS, POST"
    assert_outcome(fhir(world, "Patient", params={"birthdate": "1985-13"}), 400, "invalid")
    assert_outcome(fhir(world, "Patient", params={"_count": "many"}), 400, "invalid")
    assert_outcome(fhir(world, "ImagingStudy", params={"_cursor": "x" * 300}), 400, "invalid")
    assert_outcome(fhir(world, "ImagingStudy", params={"_sort": "modality"}), 400, "invalid")
    assert_outcome(fhir(world, "Patient", params={"_format": "xml"}), 406, "not-supported")
    assert_outcome(fhir(world, "Patient", headers={"Accept": "application/fhir+xml"}), 406, "not-supported")
    written = httpx.post(
        f"{world.gw.url}/fhir/Patient", json={"resourceType": "Patient"}, headers=world.gw.headers(**DR_A)
    )
    body = assert_outcome(written, 405, "not-supported")
    assert "GET" in written.headers["allow"] and "read-only" in body["issue"][0]["diagnostics"]
    put = httpx.put(f"{world.gw.url}/fhir/Patient/1", json={}, headers=world.gw.headers(**DR_A))
    assert_outcome(put, 405, "not-supported")
    assert_outcome(fhir(world, "Patient", headers={"Authorization": "Bearer nonsense"}), 401, "login")


# ----- Patient ----------------------------------------------------------------------------------


def test_a_provider_reads_its_patient_with_fhirclient_and_the_link_to_the_other_record(world: World) -> None:
    hospital = SmartPatient.read(str(world.ids["H-ANA"]), smart(world, DR_A).server)
    assert hospital.name[0].family == "ȘTEFĂNESCU" and hospital.name[0].given == ["ANA"]
    assert hospital.birthDate.isostring == "1985-03-17" and hospital.gender == "female"
    systems = {i.system: i.value for i in hospital.identifier}
    assert systems == {"urn:pacs:org:hosp-a": "H-ANA", CNP_SYSTEM: ANA_CNP}
    # the clinic's record is the same person: linked, and seen by care relationship
    assert [link.other.reference for link in hospital.link] == [f"Patient/{world.ids['9-44']}"]
    assert hospital.link[0].type == "seealso"


def test_patient_search_folds_diacritics_and_pages_with_fhirpy(world: World) -> None:
    client = fhirpy_client(world, DR_A)
    found = client.resources("Patient").search(family="stefanescu").fetch_all()
    assert sorted(p["identifier"][0]["value"] for p in found) == ["9-44", "H-ANA"]  # the clinic's by care
    assert client.resources("Patient").search(given="ana", birthdate="1985-03-17").count() == 2
    assert client.resources("Patient").search(birthdate="lt1970").count() == 1  # H-ION
    assert client.resources("Patient").search(gender="male").count() == 1
    by_cnp = client.resources("Patient").search(identifier=f"{CNP_SYSTEM}|{ANA_CNP}").fetch_all()
    assert len(by_cnp) == 2
    own = client.resources("Patient").search(identifier="urn:pacs:org:clinic-b|9-44").fetch_all()
    assert [p["id"] for p in own] == [str(world.ids["9-44"])]


def test_patient_search_pages_on_next_links_with_a_total(world: World) -> None:
    first = fhir(world, "Patient", who=ADMIN, params={"_count": "2"}).json()
    assert first["total"] == 5 and len(first["entry"]) == 2
    seen = [e["resource"]["id"] for e in first["entry"]]
    page = first
    while next_link := [link["url"] for link in page["link"] if link["relation"] == "next"]:
        page = httpx.get(next_link[0], headers={"Authorization": f"Bearer {world.gw.token(**ADMIN)}"}).json()
        seen += [e["resource"]["id"] for e in page["entry"]]
    assert sorted(seen) == sorted(str(i) for i in world.ids.values()) and len(seen) == len(set(seen))


def _walk(world: World, first: dict[str, Any], who: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    """The pages of a search as its `next` links give them, then as the `previous` links give
    them back from the last page (each page: its matches' ids)."""
    headers = world.gw.headers(**who)

    def ids(bundle: dict[str, Any]) -> list[str]:
        return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]

    def link(bundle: dict[str, Any], relation: str) -> str | None:
        found = [x["url"] for x in bundle["link"] if x["relation"] == relation]
        return found[0] if found else None

    assert link(first, "previous") is None  # the first page has none
    forward, page = [ids(first)], first
    while (url := link(page, "next")) is not None:
        page = httpx.get(url, headers=headers).json()
        forward.append(ids(page))
    backward = [ids(page)]
    while (url := link(page, "previous")) is not None:
        page = httpx.get(url, headers=headers).json()
        Bundle.model_validate(page)
        backward.append(ids(page))
    return forward, backward


@pytest.mark.parametrize(
    ("resource_type", "who", "params"),
    [
        ("Patient", ADMIN, {"_count": "2"}),
        ("ImagingStudy", DR_A, {"patient": "H-ANA", "_count": "1"}),
        ("AuditEvent", ADMIN, {"agent": "clinician@hosp-a", "_count": "2"}),
    ],
)
def test_previous_links_page_back_through_what_next_links_gave(
    world: World, resource_type: str, who: dict[str, Any], params: dict[str, str]
) -> None:
    if params.get("patient") == "H-ANA":
        params = {**params, "patient": f"Patient/{world.ids['H-ANA']}"}
    first = fhir(world, resource_type, who=who, params=params).json()
    forward, backward = _walk(world, first, who)
    assert len(forward) >= 3, forward  # a first, a middle and a last page
    assert backward == list(reversed(forward))
    assert_outcome(fhir(world, resource_type, who=who, params={"_cursor": "1", "_before": "1"}), 400, "invalid")


def test_a_patient_the_provider_may_not_see_is_absent(world: World) -> None:
    assert_outcome(fhir(world, f"Patient/{world.ids['H-ION']}", who=DR_B), 404, "not-found")
    names = [p["identifier"][0]["value"] for p in fhirpy_client(world, DR_B).resources("Patient").search().fetch_all()]
    assert "H-ION" not in names and "H-ANA" in names  # Ana's hospital record by care relationship


def test_pixm_cross_references_the_patients_records(world: World) -> None:
    """IHE PIXm (ITI-83): the hospital's ID of Ana gives the clinic's, her CNP and both Patients;
    PIXm's own statuses for an unknown authority, patient and target system."""
    pix = fhir(world, "Patient/$ihe-pix", params={"sourceIdentifier": "urn:pacs:org:hosp-a|H-ANA"}).json()
    assert pix["resourceType"] == "Parameters"
    identifiers = {
        (p["valueIdentifier"]["system"], p["valueIdentifier"]["value"])
        for p in pix["parameter"]
        if p["name"] == "targetIdentifier"
    }
    assert identifiers == {("urn:pacs:org:hosp-a", "H-ANA"), ("urn:pacs:org:clinic-b", "9-44"), (CNP_SYSTEM, ANA_CNP)}
    ids = {p["valueReference"]["reference"] for p in pix["parameter"] if p["name"] == "targetId"}
    assert ids == {f"Patient/{world.ids['H-ANA']}", f"Patient/{world.ids['9-44']}"}
    narrowed = fhir(
        world,
        "Patient/$ihe-pix",
        params={"sourceIdentifier": "urn:pacs:org:hosp-a|H-ANA", "targetSystem": "urn:pacs:org:clinic-b"},
    ).json()
    assert [p["valueIdentifier"]["value"] for p in narrowed["parameter"] if p["name"] == "targetIdentifier"] == ["9-44"]
    ask = {"sourceIdentifier": "urn:pacs:org:nowhere|1"}
    assert_outcome(fhir(world, "Patient/$ihe-pix", params=ask), 400, "code-invalid")
    ask = {"sourceIdentifier": "urn:pacs:org:hosp-a|NOBODY"}
    assert_outcome(fhir(world, "Patient/$ihe-pix", params=ask), 404, "not-found")
    ask = {"sourceIdentifier": "urn:pacs:org:hosp-a|H-ANA", "targetSystem": "urn:oid:9.9.9"}
    assert_outcome(fhir(world, "Patient/$ihe-pix", params=ask), 403, "code-invalid")
    # a patient the caller may not see is not found, as one that does not exist
    ask = {"sourceIdentifier": "urn:pacs:org:hosp-a|H-ION"}
    assert_outcome(fhir(world, "Patient/$ihe-pix", who=DR_B, params=ask), 404, "not-found")


def match(world: World, who: dict[str, Any], patient: dict[str, Any], **params: Any) -> httpx.Response:
    parameters = [{"name": "resource", "resource": {"resourceType": "Patient", **patient}}]
    parameters += [
        {"name": name, "valueBoolean" if isinstance(value, bool) else "valueInteger": value}
        for name, value in params.items()
    ]
    return httpx.post(
        f"{world.gw.url}/fhir/Patient/$match",
        json={"resourceType": "Parameters", "parameter": parameters},
        headers=world.gw.headers(**who) | {"Content-Type": FHIR_JSON},
    )


def test_patient_match_scores_as_the_linker_does(world: World) -> None:
    """$match: a CNP makes both of Ana's records certain; name, birth date and sex alone are
    probable (what linking would send to review); nothing the caller may not see is offered."""
    ana = {"name": [{"family": "Ștefănescu", "given": ["Ana"]}], "birthDate": "1985-03-17", "gender": "female"}
    certain = match(world, DR_A, {**ana, "identifier": [{"system": CNP_SYSTEM, "value": ANA_CNP}]}).json()
    assert certain["resourceType"] == "Bundle" and certain["total"] == 2
    graded = {
        e["resource"]["id"]: (e["search"]["score"], e["search"]["extension"][0]["valueCode"]) for e in certain["entry"]
    }
    assert graded == {str(world.ids["H-ANA"]): (1.0, "certain"), str(world.ids["9-44"]): (1.0, "certain")}
    probable = match(world, DR_A, ana).json()
    assert {e["search"]["extension"][0]["valueCode"] for e in probable["entry"]} == {"probable"}
    assert 0 < probable["entry"][0]["search"]["score"] < 1
    assert match(world, DR_A, ana, onlyCertainMatches=True).json()["total"] == 0
    assert match(world, DR_A, ana, count=1).json()["total"] == 1
    ion = {"name": [{"family": "Popescu", "given": ["Ion"]}], "birthDate": "1960-01-01", "gender": "male"}
    assert match(world, DR_A, ion).json()["total"] == 1
    assert match(world, DR_B, ion).json()["total"] == 0  # the hospital's patient: not the clinic's to see
    bad = httpx.post(
        f"{world.gw.url}/fhir/Patient/$match", json={"resourceType": "Patient"}, headers=world.gw.headers(**DR_A)
    )
    assert_outcome(bad, 400, "invalid")
    text = httpx.post(
        f"{world.gw.url}/fhir/Patient/$match",
        content=b"x" * 10,
        headers=world.gw.headers(**DR_A) | {"Content-Type": "text/plain"},
    )
    assert_outcome(text, 415, "not-supported")
    huge = httpx.post(
        f"{world.gw.url}/fhir/Patient/$match",
        content=b" " * (70 * 1024),
        headers=world.gw.headers(**DR_A) | {"Content-Type": FHIR_JSON},
    )
    assert_outcome(huge, 413, "too-costly")


# ----- ImagingStudy --------------------------------------------------------------------------------


def test_imaging_study_read_with_fhirclient_leads_to_the_pixels(world: World) -> None:
    uid = world.studies["H-ANA"][2]
    study = SmartImagingStudy.read(uid, smart(world, DR_A).server)
    assert study.numberOfSeries == 2 and study.numberOfInstances == 4
    assert len(study.series) == 2 and all(len(s.instance) == 2 for s in study.series)
    assert study.identifier[0].system == "urn:dicom:uid" and study.identifier[0].value == f"urn:oid:{uid}"
    assert study.subject.reference == f"Patient/{world.ids['H-ANA']}"
    endpoint = fhir(world, study.endpoint[0].reference).json()
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    metadata = httpx.get(
        f"{endpoint['address']}/studies/{uid}/metadata", headers=world.gw.headers(**DR_A)
    )  # from FHIR to DICOMweb
    assert metadata.status_code == 200 and len(metadata.json()) == 4


def test_imaging_study_search_by_patient_spans_the_linked_records(world: World) -> None:
    client = fhirpy_client(world, DR_A)
    studies = client.resources("ImagingStudy").search(patient=f"Patient/{world.ids['H-ANA']}").fetch_all()
    assert len(studies) == 4  # three of the hospital, one of the clinic (care relationship)
    started = [s["started"] for s in studies]
    assert started == sorted(started, reverse=True)
    clinic = client.resources("ImagingStudy").search(subject=f"Patient/{world.ids['9-44']}").fetch_all()
    assert len(clinic) == 4  # from the clinic's ID the same person
    assert client.resources("ImagingStudy").search(modality="US").count() == 1
    ranged = client.resources("ImagingStudy").search(started__ge="2026-01-01", started__lt="2026-11-01")
    assert [s["id"] for s in ranged.fetch_all()] == [world.studies["H-ANA"][1]]
    uid = world.studies["H-ION"][0]
    for identifier in (f"urn:dicom:uid|urn:oid:{uid}", f"urn:oid:{uid}"):
        assert [s["id"] for s in client.resources("ImagingStudy").search(identifier=identifier).fetch_all()] == [uid]


def test_imaging_study_pages_and_includes_the_patient(world: World) -> None:
    params = {"patient": f"Patient/{world.ids['H-ANA']}", "_count": "3", "_include": "ImagingStudy:patient"}
    first = fhir(world, "ImagingStudy", params=params).json()
    assert first["total"] == 4
    modes = [e["search"]["mode"] for e in first["entry"]]
    assert modes.count("match") == 3 and modes.count("include") >= 1
    (next_url,) = [link["url"] for link in first["link"] if link["relation"] == "next"]
    second = httpx.get(next_url, headers=world.gw.headers(**DR_A)).json()
    matches = [e["resource"]["id"] for e in first["entry"] + second["entry"] if e["search"]["mode"] == "match"]
    assert sorted(matches) == sorted(world.studies["H-ANA"] + world.studies["9-44"])
    assert not [link for link in second["link"] if link["relation"] == "next"]


def test_a_search_lists_each_study_exactly_as_its_validated_read_answers_it(world: World) -> None:
    """Searches build ImagingStudy without validating it (the fast path, `imaging_study.data`);
    a read validates it with fhir.resources (`imaging_study.resource`). Both answer the same
    resource for every study, and the searchset Bundle validates as a whole."""
    found = fhir(world, "ImagingStudy", who=ADMIN, params={"_count": "100"}).json()
    Bundle.model_validate(found)
    listed = [e["resource"] for e in found["entry"]]
    assert len(listed) == sum(len(v) for v in world.studies.values())
    for study in listed:
        ImagingStudy.model_validate(study)
        assert fhir(world, f"ImagingStudy/{study['id']}", who=ADMIN).json() == study


def test_a_summary_lists_series_without_instances_and_a_count_lists_nothing(world: World) -> None:
    params = {"patient": f"Patient/{world.ids['H-ANA']}"}
    summary = fhir(world, "ImagingStudy", params={**params, "_summary": "true"}).json()
    Bundle.model_validate(summary)
    full = fhir(world, "ImagingStudy", params=params).json()
    assert summary["total"] == full["total"] == 4
    for brief, whole in zip(summary["entry"], full["entry"], strict=True):
        study = brief["resource"]
        assert study["meta"]["tag"][0]["code"] == "SUBSETTED"
        assert all("instance" not in series for series in study["series"])
        assert [s["uid"] for s in study["series"]] == [s["uid"] for s in whole["resource"]["series"]]
        assert study["numberOfInstances"] == whole["resource"]["numberOfInstances"]
    counted = fhir(world, "ImagingStudy", params={**params, "_summary": "count"}).json()
    assert counted["total"] == 4 and not counted.get("entry")
    assert_outcome(fhir(world, "ImagingStudy", params={"_summary": "text"}), 400, "invalid")


def test_a_study_the_provider_may_not_see_is_absent(world: World) -> None:
    uid = world.studies["H-ION"][0]
    assert_outcome(fhir(world, f"ImagingStudy/{uid}", who=DR_B), 404, "not-found")
    assert fhir(world, "ImagingStudy", who=DR_B, params={"identifier": f"urn:oid:{uid}"}).json()["total"] == 0


def test_reads_carry_an_etag_and_a_known_version_is_not_sent_again(world: World) -> None:
    first = fhir(world, f"Patient/{world.ids['H-ION']}")
    assert first.headers["etag"] == f'W/"{first.json()["meta"]["versionId"]}"'
    again = fhir(world, f"Patient/{world.ids['H-ION']}", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    study = fhir(world, f"ImagingStudy/{world.studies['H-ION'][0]}")
    assert study.headers["etag"].startswith('W/"') and "lastUpdated" in study.json()["meta"]


def test_fhir_reads_and_refusals_are_audited(world: World) -> None:
    fhir(world, f"Patient/{world.ids['H-ION']}", who=DR_A)
    fhir(world, f"Patient/{world.ids['H-ION']}", who=DR_B)
    fhir(world, f"ImagingStudy/{world.studies['H-ION'][0]}", who=DR_A)
    records = httpx.get(
        f"{world.gw.url}/api/audit", params={"patient": "H-ION"}, headers=world.gw.headers(**ADMIN)
    ).json()
    fhir_records = [(r["actor"], r["outcome"]) for r in records if r["channel"] == "fhir"]
    assert ("clinician@hosp-a", "ok") in fhir_records
    refused = httpx.get(
        f"{world.gw.url}/api/audit",
        params={"patient": f"Patient/{world.ids['H-ION']}", "actor": "clinician@clinic-b"},
        headers=world.gw.headers(**ADMIN),
    ).json()
    assert refused and {(r["channel"], r["outcome"]) for r in refused} == {("fhir", "not-found")}


def test_an_opt_out_removes_the_other_organizations_records_from_fhir(world: World) -> None:
    client = fhirpy_client(world, DR_B)
    before = client.resources("ImagingStudy").search(patient=f"Patient/{world.ids['C-OPT']}").fetch_all()
    assert len(before) == 2  # the clinic's own and the hospital's, by care relationship
    person = fhir(world, f"Patient/{world.ids['C-OPT']}", who=ADMIN).json()
    assert person["link"]
    with world.gw.archive.db.read() as session:
        person_id = session.scalar(select(PatientIdentity.person_id).where(PatientIdentity.patient_id == "C-OPT"))
    consent = httpx.put(
        f"{world.gw.url}/api/persons/{person_id}/consent",
        json={"cross_org_sharing": "opt-out", "recorded_by": "front desk, clinic B"},
        headers=world.gw.headers(**ADMIN),
    )
    assert consent.status_code == 200, consent.text
    after = client.resources("ImagingStudy").search(patient=f"Patient/{world.ids['C-OPT']}").fetch_all()
    assert [s["id"] for s in after] == world.studies["C-OPT"]
    assert_outcome(fhir(world, f"Patient/{world.ids['H-OPT']}", who=DR_B), 404, "not-found")
    assert "link" not in fhir(world, f"Patient/{world.ids['C-OPT']}", who=DR_B).json()
    # the choice is a Consent, read by whoever sees a record of the person, the one in force first
    for who, record in ((DR_B, "C-OPT"), (DR_A, "H-OPT")):
        bundle = fhir(world, "Consent", who=who, params={"patient": f"Patient/{world.ids[record]}"}).json()
        (choice,) = [e["resource"] for e in bundle["entry"]]
        assert choice["status"] == "active" and choice["provision"]["type"] == "deny"
        assert choice["policyRule"]["coding"][0]["code"] == "OPTOUT"
        assert choice["patient"]["reference"] == f"Patient/{world.ids[record]}"
        assert "front desk, clinic B" in choice["sourceAttachment"]["title"]
        assert fhir(world, f"Consent/{choice['id']}", who=who).json()["id"] == choice["id"]
    hidden = fhir(world, "Consent", who=DR_B, params={"patient": f"Patient/{world.ids['H-OPT']}"}).json()
    assert hidden["total"] == 0
    assert_outcome(fhir(world, "Consent", who=DR_B), 400, "invalid")


def test_the_audit_trail_as_audit_events_for_admins_only(world: World) -> None:
    uid = world.studies["H-ION"][0]
    fhir(world, f"ImagingStudy/{uid}", who=DR_A)
    fhir(world, f"ImagingStudy/{uid}", who=DR_B)  # not found for the clinic: a refusal on record
    admin = fhirpy_client(world, ADMIN)
    events = admin.resources("AuditEvent").search(**{"entity-identifier": f"urn:dicom:uid|urn:oid:{uid}"}).fetch_all()
    reads = [
        e for e in events if e["agent"][0]["who"]["identifier"]["value"] in ("clinician@hosp-a", "clinician@clinic-b")
    ]
    outcomes = {e["agent"][0]["who"]["identifier"]["value"]: e["outcome"] for e in reads}
    assert outcomes == {"clinician@hosp-a": "0", "clinician@clinic-b": "4"}
    read = next(e for e in reads if e["outcome"] == "0")
    assert read["type"]["code"] == "110103" and read["action"] == "R" and read["source"]["site"] == "fhir"
    entities = {e["type"]["code"]: e["what"]["identifier"]["value"] for e in read["entity"]}
    assert entities == {"1": "H-ION", "2": f"urn:oid:{uid}"}  # the patient, the study
    assert fhir(world, f"AuditEvent/{read['id']}", who=ADMIN).json()["id"] == read["id"]
    today = fhir(world, "AuditEvent", who=ADMIN, params={"date": "ge2000-01-01", "_count": "2"}).json()
    assert len(today["entry"]) == 2 and [link for link in today["link"] if link["relation"] == "next"]
    assert_outcome(fhir(world, "AuditEvent", who=DR_A), 403, "forbidden")
    assert_outcome(fhir(world, f"AuditEvent/{read['id']}", who=DR_A), 403, "forbidden")
    assert_outcome(fhir(world, "AuditEvent/999999999", who=ADMIN), 404, "not-found")


def test_endpoint_and_organizations(world: World) -> None:
    orgs = fhirpy_client(world, DR_A).resources("Organization").search().fetch_all()
    assert {o["id"] for o in orgs} >= {"hosp-a", "clinic-b"}
    assert fhir(world, "Organization/hosp-a").json()["name"] == "Spitalul Județean A"
    assert_outcome(fhir(world, "Organization/nobody"), 404, "not-found")
    assert fhir(world, "Endpoint").json()["total"] == 1
    assert_outcome(fhir(world, "Endpoint/other"), 404, "not-found")
