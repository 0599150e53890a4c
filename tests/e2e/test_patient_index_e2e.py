"""The patient index end to end, over the real protocols, on both backends.

DESIGN.md "Patients across institutions" and "Access, shares, emergency access, consent and
audit": two organizations' modalities send studies of one person under their own IDs (C-STORE
by pynetdicom as hosp-a's CT1 and clinic-b's US-B); the linker links them on a CNP
(`storage.patients.linker.link_pending`, called here so that a test knows when it has run); the
person is then found from either ID, and from the person's own ID, over QIDO-RS and C-FIND
(`storage.query.linked`); the care relationship opens the other organization's study over QIDO-RS,
WADO-RS and C-FIND, audited with its owner, and closes with an unlink, the patient's opt-out, a
discontinued worklist step, or a server started with PACS_CARE_RELATIONSHIP=false
(`storage.access.policy.care_of`). Near matches go to review, two CNPs never link.

One archive per backend for the module, served at once by the gateway and the SCP (and by a
second gateway and SCP over the same database with the care relationship off); each test uses
patients (IDs, names, birth dates) of its own, so the tests do not see each other's. They
found three defects, fixed with them: HTTP reads by care relationship recorded without their
owner, the "by care relationship" note lost behind a record's own detail, and a person's view
failing once a consent was recorded.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as SR_GET  # type: ignore[attr-defined]

from pacs.server import start
from storage.access.orgs import add_org
from storage.patients import cnp
from storage.patients.linker import link_pending
from storage.patients.model import Model
from tests.kit import dicom_factory as f
from tests.kit.backends import BACKENDS, module_archive
from tests.kit.dicomweb import Gateway, parts, serve_gateway
from tests.kit.dimse import keys, pyfind

ADMIN: dict[str, Any] = {"org": None, "roles": ("admin",)}
DR_A: dict[str, Any] = {"org": "hosp-a", "roles": ("clinician",)}
DR_B: dict[str, Any] = {"org": "clinic-b", "roles": ("clinician",)}
RIS_B: dict[str, Any] = {"org": "clinic-b", "roles": ("integrator",)}
#: an integrator of an organization that holds nothing of the tests' patients
RIS_C: dict[str, Any] = {"org": "lab-c", "roles": ("integrator",)}
HOSP_A, CLINIC_B = "urn:pacs:org:hosp-a", "urn:pacs:org:clinic-b"
PERSON = "urn:pacs:person"
SUCCESS, PENDING = 0x0000, 0xFF00
WADO_ACCEPT = 'multipart/related; type="application/dicom"'


@dataclass
class Servers:
    """One archive per backend, served by a gateway and an SCP, and by a second gateway and SCP
    over the same database and blobs whose settings turn the care relationship off."""

    gw: Gateway
    port: int
    gw_off: Gateway
    port_off: int


@pytest.fixture(scope="module", params=BACKENDS)
def servers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("patient-index")
    with module_archive(request, tmp) as (settings, archive):
        # PACS_CARE_RELATIONSHIP=false: what each channel reads is `archive.settings.care_relationship`
        off_settings = settings.model_copy(update={"care_relationship": False})
        off_archive = dataclasses.replace(archive, settings=off_settings)  # the same database, blobs, audit
        with (
            contextmanager(serve_gateway)(settings, archive) as gw,  # registers CT1 (hosp-a), US-B (clinic-b)
            contextmanager(serve_gateway)(off_settings, off_archive) as gw_off,
        ):
            with archive.db.write() as session:
                add_org(session, "lab-c", "Laborator C", [])
            scp, scp_off = start(settings, archive, port=0), start(off_settings, off_archive, port=0)
            try:
                assert settings.care_relationship and not off_archive.settings.care_relationship
                yield Servers(gw, scp.port, gw_off, scp_off.port)
            finally:
                scp.shutdown()
                scp_off.shutdown()


# ----- peers ------------------------------------------------------------------------------------

_serial = itertools.count(1)


def valid_cnp(birth_date: str, sequence: int) -> str:
    """A valid CNP of a man born `birth_date` (19YYMMDD), registered in county 22."""
    assert birth_date.startswith("19")
    first12 = f"1{birth_date[2:]}22{sequence:03d}"
    return first12 + cnp.check_digit(first12)


def patient(
    patient_id: str, name: str, birth_date: str, *, issuer: str | None = None, national_id: str = ""
) -> Dataset:
    """A CT image of a new study of a man, with a CNP in OtherPatientIDsSequence if given."""
    ds = f.ct_dataset(patient_id=patient_id, patient_name=name, issuer=issuer)
    ds.PatientBirthDate, ds.PatientSex = birth_date, "M"
    ds.StudyDate = f"2026{next(_serial) % 12 + 1:02d}15"
    if national_id:
        item = Dataset()
        item.PatientID, item.IssuerOfPatientID = national_id, cnp.ISSUER
        ds.OtherPatientIDsSequence = [item]
    return ds


def c_store(port: int, aet: str, ds: Dataset) -> str:
    """C-STORE `ds` as the modality `aet` (pynetdicom); its Study Instance UID once stored."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="MUNIPACS")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert int(status.Status) == SUCCESS, status
    return str(ds.StudyInstanceUID)


def link(s: Servers) -> None:
    """What the background linker of `pacs serve` does, now."""
    link_pending(s.gw.archive.db, Model())


def call(gw: Gateway, method: str, path: str, who: dict[str, Any] = ADMIN, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{gw.url}{path}", headers=gw.headers(**who), timeout=30, **kw)


def qido(gw: Gateway, who: dict[str, Any], **filters: str) -> set[str]:
    """The Study Instance UIDs a QIDO-RS study search (dicomweb-client) answers `who`."""
    found = gw.client(**who).search_for_studies(search_filters=filters)
    return {study["0020000D"]["Value"][0] for study in found}


def listing(gw: Gateway, who: dict[str, Any]) -> set[str]:
    """The Study Instance UIDs of `who`'s whole study list (QIDO-RS without a key: its own
    newest first, read by date from the index, `storage.access.policy.visible_by_date`)."""
    r = httpx.get(f"{gw.dicomweb}/studies", headers=gw.headers(**who), params={"limit": 1000}, timeout=30)
    assert r.status_code in (200, 204), r.text
    assert "Warning" not in r.headers
    return {study["0020000D"]["Value"][0] for study in (r.json() if r.status_code == 200 else [])}


def sees(gw: Gateway, who: dict[str, Any], *uids: str) -> set[str]:
    """Which of `uids` a QIDO-RS search by UID list answers `who`."""
    return qido(gw, who, StudyInstanceUID=",".join(uids))


def wado(gw: Gateway, who: dict[str, Any], study_uid: str) -> httpx.Response:
    """WADO-RS retrieve of the whole study."""
    headers = gw.headers(**who) | {"Accept": WADO_ACCEPT}
    return httpx.get(f"{gw.dicomweb}/studies/{study_uid}", headers=headers, timeout=30)


def c_get(port: int, aet: str, study_uid: str) -> tuple[int, list[str]]:
    """A Study Root STUDY-level C-GET (pynetdicom as `aet`): the final status, the SOP Instance
    UIDs received."""
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return SUCCESS

    ae = AE(ae_title=aet)
    ae.add_requested_context(SR_GET)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="MUNIPACS",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(keys("STUDY", StudyInstanceUID=study_uid), SR_GET))
    finally:
        assoc.release()
    return int(responses[-1][0].Status), received


def c_find(port: int, aet: str, **values: str) -> set[str]:
    """The Study Instance UIDs a Study Root STUDY-level C-FIND (pynetdicom as `aet`) answers."""
    responses = pyfind(port, keys("STUDY", **({"StudyInstanceUID": "", "PatientID": ""} | values)), aet=aet)
    assert responses[-1][0] == SUCCESS, responses[-1]
    pending = [ds for status, ds in responses if status == PENDING]
    assert all(ds is not None for ds in pending)
    return {str(ds.StudyInstanceUID) for ds in pending if ds is not None}


def identity(gw: Gateway, issuer: str, patient_id: str) -> dict[str, Any]:
    r = call(gw, "GET", "/api/identities", params={"issuer": issuer, "patient_id": patient_id})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


@dataclass
class Pair:
    """One person's two studies: hosp-a's (its own ID, no issuer) and clinic-b's (a DICOM issuer)."""

    a_id: str
    a_study: str
    b_issuer: str
    b_id: str
    b_study: str
    person_id: int


def linked_pair(s: Servers, tag: str, name: str, birth_date: str, sequence: int) -> Pair:
    """hosp-a's CT1 and clinic-b's US-B send a study each of one man, under their own IDs, with
    his CNP; linked, they are one person."""
    national_id = valid_cnp(birth_date, sequence)
    a_id, b_id, b_issuer = f"{tag}-123", f"{tag}-9-44", f"CLINICA-B-{tag}"
    a_study = c_store(s.port, "CT1", patient(a_id, name, birth_date, national_id=national_id))
    b_study = c_store(s.port, "US-B", patient(b_id, name.title(), birth_date, issuer=b_issuer, national_id=national_id))
    link(s)
    a, b = identity(s.gw, HOSP_A, a_id), identity(s.gw, b_issuer, b_id)
    assert a["person_id"] is not None and a["person_id"] == b["person_id"], (a, b)
    assert a["cnp"] == b["cnp"] == national_id
    return Pair(a_id, a_study, b_issuer, b_id, b_study, a["person_id"])


def candidate_between(gw: Gateway, one: tuple[str, str], other: tuple[str, str]) -> dict[str, Any] | None:
    """The open review candidate of the two identities (issuer, patient ID), if any."""
    queue = call(gw, "GET", "/api/link-candidates", params={"limit": 1000}).json()
    for c in queue:
        pair = {(c["a"]["issuer"], c["a"]["patient_id"]), (c["b"]["issuer"], c["b"]["patient_id"])}
        if pair == {one, other}:
            found: dict[str, Any] = c
            return found
    return None


# ----- 1. one person, found from either ID ------------------------------------------------------


def test_a_cnp_links_two_organizations_ids_and_either_id_finds_both_studies(servers: Servers) -> None:
    p = linked_pair(servers, "E1", "POPESCU^ION", "19600101", 101)
    both = {p.a_study, p.b_study}
    # QIDO-RS as hosp-a's clinician, from hosp-a's ID, clinic-b's ID, and the person's ID
    for pid, issuer in ((p.a_id, HOSP_A), (p.b_id, p.b_issuer), (str(p.person_id), PERSON)):
        assert qido(servers.gw, DR_A, PatientID=pid, IssuerOfPatientID=issuer) == both, (pid, issuer)
    # C-FIND as clinic-b's US-B, the same three ways
    for pid, issuer in ((p.a_id, HOSP_A), (p.b_id, p.b_issuer), (str(p.person_id), PERSON)):
        assert c_find(servers.port, "US-B", PatientID=pid, IssuerOfPatientID=issuer) == both, (pid, issuer)
    # without the issuer, a patient ID matches the IDs as sent: one institution's record
    assert qido(servers.gw, DR_A, PatientID=p.a_id) == {p.a_study}
    assert c_find(servers.port, "US-B", PatientID=p.b_id) == {p.b_study}
    # the person's view holds both identities and both studies
    person = call(servers.gw, "GET", f"/api/persons/{p.person_id}").json()
    assert {(i["issuer"], i["patient_id"]) for i in person["identities"]} == {(HOSP_A, p.a_id), (p.b_issuer, p.b_id)}
    assert {st["study_instance_uid"] for st in person["studies"]} == both
    assert any(e["action"] == "link" and e["rule"] == "cnp" for e in person["links"]), person["links"]


# ----- 2. a typo and no CNP: review, not a link -------------------------------------------------


def test_a_typo_without_cnp_is_a_review_candidate_not_a_link(servers: Servers) -> None:
    a_study = c_store(servers.port, "CT1", patient("E2-H", "MARINESCU^VASILE", "19550304"))
    b_study = c_store(servers.port, "US-B", patient("E2-C", "MARINESCU^VASILEE", "19550304"))
    link(servers)
    a, b = identity(servers.gw, HOSP_A, "E2-H"), identity(servers.gw, CLINIC_B, "E2-C")
    assert a["person_id"] is not None and b["person_id"] is not None
    assert a["person_id"] != b["person_id"]
    found = candidate_between(servers.gw, (HOSP_A, "E2-H"), (CLINIC_B, "E2-C"))
    assert found is not None, "the near match is not in the review queue"
    sides = {found["a"]["patient_name"], found["b"]["patient_name"]}
    assert sides == {"MARINESCU^VASILE", "MARINESCU^VASILEE"}
    assert {found["a"]["birth_date"], found["b"]["birth_date"]} == {"19550304"}
    assert found["status"] == "open" and found["reasons"]
    assert {r["field"] for r in found["reasons"]} >= {"family", "given", "birth_date"}
    assert 12 <= found["score"] < 25
    # not one person: neither organization reaches the other's study
    assert sees(servers.gw, DR_B, a_study, b_study) == {b_study}
    assert sees(servers.gw, DR_A, a_study, b_study) == {a_study}
    assert qido(servers.gw, DR_A, PatientID="E2-H", IssuerOfPatientID=HOSP_A) == {a_study}


# ----- 3. namesakes with two CNPs: never one person ----------------------------------------------


def test_two_different_cnps_never_link_not_even_by_hand(servers: Servers) -> None:
    name, born = "STANCIU^GHEORGHE", "19710512"
    one, two = valid_cnp(born, 301), valid_cnp(born, 302)
    a_study = c_store(servers.port, "CT1", patient("E3-H", name, born, national_id=one))
    b_study = c_store(servers.port, "US-B", patient("E3-C", name, born, national_id=two))
    # a third record, of the same name, birth date and sex and no CNP: a candidate with each
    c_store(servers.port, "CT1", patient("E3-L", name, born, issuer="E3-LAB"))
    link(servers)
    a, b = identity(servers.gw, HOSP_A, "E3-H"), identity(servers.gw, CLINIC_B, "E3-C")
    assert (a["cnp"], b["cnp"]) == (one, two)
    assert a["person_id"] != b["person_id"]
    assert candidate_between(servers.gw, (HOSP_A, "E3-H"), (CLINIC_B, "E3-C")) is None
    ab = {"a": {"issuer": HOSP_A, "patient_id": "E3-H"}, "b": {"issuer": CLINIC_B, "patient_id": "E3-C"}}
    refused = call(servers.gw, "POST", "/api/links", json=ab)
    assert refused.status_code == 409 and "CNP" in refused.json()["detail"], refused.text
    # the third record may join one of them, never both
    with_a = candidate_between(servers.gw, ("E3-LAB", "E3-L"), (HOSP_A, "E3-H"))
    with_b = candidate_between(servers.gw, ("E3-LAB", "E3-L"), (CLINIC_B, "E3-C"))
    assert with_a is not None and with_b is not None
    accepted = call(servers.gw, "POST", f"/api/link-candidates/{with_a['id']}/accept")
    assert accepted.status_code == 200, accepted.text
    conflict = call(servers.gw, "POST", f"/api/link-candidates/{with_b['id']}/accept")
    assert conflict.status_code == 409, conflict.text
    a, b = identity(servers.gw, HOSP_A, "E3-H"), identity(servers.gw, CLINIC_B, "E3-C")
    assert a["person_id"] != b["person_id"]
    assert identity(servers.gw, "E3-LAB", "E3-L")["person_id"] == a["person_id"]
    assert sees(servers.gw, DR_B, a_study, b_study) == {b_study}
    assert qido(servers.gw, DR_B, PatientID="E3-C", IssuerOfPatientID=CLINIC_B) == {b_study}


# ----- 4. an unlink gives each organization back its own ------------------------------------------


def test_unlink_splits_the_person_and_each_org_sees_only_its_own_again(servers: Servers) -> None:
    p = linked_pair(servers, "E4", "DUMITRESCU^RADU", "19620707", 401)
    both = {p.a_study, p.b_study}
    assert sees(servers.gw, DR_B, *both) == both and sees(servers.gw, DR_A, *both) == both
    assert both <= listing(servers.gw, DR_B) and both <= listing(servers.gw, DR_A)
    split = call(
        servers.gw, "POST", f"/api/persons/{p.person_id}/unlink", json={"issuer": p.b_issuer, "patient_id": p.b_id}
    )
    assert split.status_code == 200, split.text
    assert split.json()["person_id"] != p.person_id
    assert identity(servers.gw, HOSP_A, p.a_id)["person_id"] == p.person_id
    assert identity(servers.gw, p.b_issuer, p.b_id)["person_id"] == split.json()["person_id"]
    link(servers)  # the linker does not join them again
    assert identity(servers.gw, p.b_issuer, p.b_id)["person_id"] == split.json()["person_id"]
    assert sees(servers.gw, DR_B, *both) == {p.b_study}
    assert sees(servers.gw, DR_A, *both) == {p.a_study}
    assert both & listing(servers.gw, DR_B) == {p.b_study} and both & listing(servers.gw, DR_A) == {p.a_study}
    assert qido(servers.gw, DR_A, PatientID=p.a_id, IssuerOfPatientID=HOSP_A) == {p.a_study}
    assert qido(servers.gw, DR_B, PatientID=p.b_id, IssuerOfPatientID=p.b_issuer) == {p.b_study}
    assert c_find(servers.port, "US-B", PatientID=p.a_id, IssuerOfPatientID=HOSP_A) == set()
    assert wado(servers.gw, DR_B, p.a_study).status_code == 404
    # nothing was deleted: an admin finds both
    assert sees(servers.gw, ADMIN, *both) == both


# ----- 5. the care relationship, audited; off by configuration -------------------------------------


def test_care_relationship_opens_the_other_orgs_study_audited_and_off_it_is_404(servers: Servers) -> None:
    p = linked_pair(servers, "E5", "CONSTANTINESCU^PAUL", "19480229", 501)
    assert sees(servers.gw, DR_B, p.a_study) == {p.a_study}
    retrieved = wado(servers.gw, DR_B, p.a_study)
    assert retrieved.status_code == 200, retrieved.text
    assert retrieved.headers["content-type"].startswith("multipart/related")
    assert len(parts(retrieved)) == 1
    status, got = c_get(servers.port, "US-B", p.a_study)
    assert (status, len(got)) == (SUCCESS, 1)
    # the DIMSE retrieve's audit record names the study's organization, and why it was readable
    records = call(servers.gw, "GET", "/api/audit", params={"org": "clinic-b", "study": p.a_study}).json()
    dimse = [r for r in records if r["channel"] == "dimse" and r["outcome"] == "ok"]
    assert dimse, records
    for r in dimse:
        assert (r["actor"], r["owner_org"], r["patient"]) == ("US-B", "hosp-a", p.a_id), r
    assert any(r["channel"] == "dicomweb" and r["action"] == "GET /dicomweb/studies/{study}" for r in records)
    # clinic-b's own study is no cross-organization read
    assert wado(servers.gw, DR_B, p.b_study).status_code == 200
    own = call(servers.gw, "GET", "/api/audit", params={"org": "clinic-b", "study": p.b_study}).json()
    assert own and all(r["owner_org"] is None for r in own), own
    # a server started with PACS_CARE_RELATIONSHIP=false: its own and shares only, on every channel
    assert wado(servers.gw_off, DR_B, p.a_study).status_code == 404
    assert sees(servers.gw_off, DR_B, p.a_study, p.b_study) == {p.b_study}
    assert {p.a_study, p.b_study} & listing(servers.gw_off, DR_B) == {p.b_study}
    assert qido(servers.gw_off, DR_B, PatientID=p.b_id, IssuerOfPatientID=p.b_issuer) == {p.b_study}
    assert c_find(servers.port_off, "US-B", PatientID=p.b_id, IssuerOfPatientID=p.b_issuer) == {p.b_study}
    assert c_get(servers.port_off, "US-B", p.a_study)[1] == []
    assert wado(servers.gw_off, DR_B, p.b_study).status_code == 200
    assert sees(servers.gw_off, DR_A, p.a_study, p.b_study) == {p.a_study}
    # ...while the server with it on still opens it
    assert wado(servers.gw, DR_B, p.a_study).status_code == 200
    assert {p.a_study, p.b_study} <= listing(servers.gw, DR_B)


def test_an_http_read_by_care_relationship_is_audited_with_its_owner(servers: Servers) -> None:
    p = linked_pair(servers, "E5X", "CONSTANTINESCU^PETRE", "19490330", 502)
    assert wado(servers.gw, DR_B, p.a_study).status_code == 200
    records = call(servers.gw, "GET", "/api/audit", params={"org": "clinic-b", "study": p.a_study}).json()
    reads = [r for r in records if r["channel"] == "dicomweb" and r["action"] == "GET /dicomweb/studies/{study}"]
    assert len(reads) == 1, records
    assert (reads[0]["owner_org"], reads[0]["patient"]) == ("hosp-a", p.a_id), reads[0]


def test_a_dimse_read_by_care_relationship_says_so_in_its_record(servers: Servers) -> None:
    p = linked_pair(servers, "E5Y", "CONSTANTINESCU^VLAD", "19500401", 503)
    status, got = c_get(servers.port, "US-B", p.a_study)
    assert (status, len(got)) == (SUCCESS, 1)
    records = call(servers.gw, "GET", "/api/audit", params={"org": "clinic-b", "study": p.a_study}).json()
    dimse = [r for r in records if r["channel"] == "dimse" and r["outcome"] == "ok"]
    assert dimse and all(r["owner_org"] == "hosp-a" for r in dimse), records
    assert all("by care relationship" in r["detail"] for r in dimse), [r["detail"] for r in dimse]


# ----- 6. the patient's opt-out, on every channel at once -------------------------------------------


def test_opt_out_hides_the_other_orgs_study_on_every_channel_and_opt_in_restores(servers: Servers) -> None:
    p = linked_pair(servers, "E6", "VASILESCU^ANDREI", "19830918", 601)
    both = {p.a_study, p.b_study}

    def clinic_b_sees() -> tuple[set[str], set[str], set[str], int]:
        return (
            qido(servers.gw, DR_B, PatientID=p.b_id, IssuerOfPatientID=p.b_issuer),
            listing(servers.gw, DR_B) & both,
            c_find(servers.port, "US-B", PatientID=p.b_id, IssuerOfPatientID=p.b_issuer),
            wado(servers.gw, DR_B, p.a_study).status_code,
        )

    assert clinic_b_sees() == (both, both, both, 200)
    consent = f"/api/persons/{p.person_id}/consent"
    out = call(servers.gw, "PUT", consent, json={"cross_org_sharing": "opt-out", "recorded_by": "front desk"})
    assert out.status_code == 200, out.text
    assert out.json()["cross_org_sharing"] == "opt-out" and out.json()["person_id"] == p.person_id
    assert clinic_b_sees() == ({p.b_study}, {p.b_study}, {p.b_study}, 404)
    assert sees(servers.gw, DR_B, *both) == {p.b_study}
    assert c_find(servers.port, "US-B", PatientID=p.a_id, IssuerOfPatientID=HOSP_A) == set()
    assert wado(servers.gw, DR_B, p.b_study).status_code == 200  # its own, still
    assert sees(servers.gw, DR_A, *both) == {p.a_study}  # both ways
    assert sees(servers.gw, ADMIN, *both) == both
    # who may record the choice
    opt_in = {"cross_org_sharing": "opt-in", "recorded_by": "Dr. Ionescu, clinic-b", "note": "asked again"}
    assert call(servers.gw, "PUT", consent, RIS_C, json=opt_in).status_code == 404
    assert call(servers.gw, "PUT", consent, DR_B, json=opt_in).status_code == 403
    assert clinic_b_sees() == ({p.b_study}, {p.b_study}, {p.b_study}, 404)  # neither of those changed anything
    again = call(servers.gw, "PUT", consent, RIS_B, json=opt_in)
    assert again.status_code == 200, again.text
    assert again.json()["cross_org_sharing"] == "opt-in"
    assert clinic_b_sees() == (both, both, both, 200)


def test_the_persons_view_lists_its_consents_oldest_first(servers: Servers) -> None:
    p = linked_pair(servers, "E6X", "VASILESCU^MIHAIL", "19840919", 602)
    consent = f"/api/persons/{p.person_id}/consent"
    out = call(servers.gw, "PUT", consent, json={"cross_org_sharing": "opt-out", "recorded_by": "front desk"})
    assert out.status_code == 200, out.text
    opt_in = {"cross_org_sharing": "opt-in", "recorded_by": "Dr. Ionescu, clinic-b", "note": "asked again"}
    assert call(servers.gw, "PUT", consent, RIS_B, json=opt_in).status_code == 200
    r = call(servers.gw, "GET", f"/api/persons/{p.person_id}")
    assert r.status_code == 200, r.text
    person = r.json()
    assert person["cross_org_sharing"] == "opt-in"
    assert [(c["cross_org_sharing"], c["recorded_by"], c["note"]) for c in person["consents"]] == [
        ("opt-out", "front desk", None),
        ("opt-in", "Dr. Ionescu, clinic-b", "asked again"),
    ]
    assert person["consents"][0]["recorded_at"] <= person["consents"][1]["recorded_at"]


# ----- 7. a worklist step makes a care relationship -------------------------------------------------


def test_an_open_worklist_step_makes_a_care_relationship_until_discontinued(servers: Servers) -> None:
    issuer, pid, name, born = "SPITAL-A-E7", "E7-77", "NICOLAE^MARIN", "19770214"
    a_study = c_store(servers.port, "CT1", patient(pid, name, born, issuer=issuer))
    link(servers)
    assert identity(servers.gw, issuer, pid)["person_id"] is not None
    assert sees(servers.gw, DR_B, a_study) == set()
    assert a_study not in listing(servers.gw, DR_B)
    step = {
        "patient_name": name,
        "patient_id": pid,
        "issuer_of_patient_id": issuer,
        "patient_birth_date": born,
        "patient_sex": "M",
        "modality": "US",
        "scheduled_station_ae_title": "US-B",
        "scheduled_procedure_step_start_date": "20261201",
    }
    created = call(servers.gw, "POST", "/api/worklist", RIS_B, json=step)
    assert created.status_code == 201, created.text
    assert created.json()["org"] == "clinic-b"
    link(servers)
    assert sees(servers.gw, DR_B, a_study) == {a_study}
    assert a_study in listing(servers.gw, DR_B)
    assert qido(servers.gw, DR_B, PatientID=pid, IssuerOfPatientID=issuer) == {a_study}
    assert c_find(servers.port, "US-B", PatientID=pid, IssuerOfPatientID=issuer) == {a_study}
    assert wado(servers.gw, DR_B, a_study).status_code == 200
    ended = call(servers.gw, "PATCH", f"/api/worklist/{created.json()['id']}", RIS_B, json={"status": "DISCONTINUED"})
    assert ended.status_code == 200, ended.text
    assert sees(servers.gw, DR_B, a_study) == set()
    assert a_study not in listing(servers.gw, DR_B)
    assert c_find(servers.port, "US-B", PatientID=pid, IssuerOfPatientID=issuer) == set()
    assert wado(servers.gw, DR_B, a_study).status_code == 404
    # once clinic-b holds a study of the person, it cares for the person without a step
    b_study = c_store(servers.port, "US-B", patient(pid, name, born, issuer=issuer))
    link(servers)
    assert sees(servers.gw, DR_B, a_study, b_study) == {a_study, b_study}
    assert wado(servers.gw, DR_B, a_study).status_code == 200
