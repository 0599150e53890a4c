"""Per-organization access over DIMSE, with pynetdicom as a real peer on real sockets.

DESIGN.md "DICOM surface" and "Access, shares, emergency access, consent and audit": a registered
AE queries and retrieves what its organization may see, and what it may not see is answered
exactly as what does not exist (`storage.access.policy.visible_to`); shares open a study to
another organization until revoked; an AE is held to its registered address and to its
organization being enabled, checked at every association (`pacs.policy.on_requested`); a
modality's organization co-owns a study it adds to, of the same patient only; and every DIMSE
operation on patient data leaves one audit record. hosp-a's CT1 and clinic-b's US-B are the
kit's nodes (`tests.kit.principals`); each test seeds its own studies into a fresh archive.
Defects these tests found are kept at the end as strict expected failures, each naming its defect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import func, select

from pacs.server import RunningScp
from storage.access import shares
from storage.access.orgs import AeSpec, add_org, update_org
from storage.access.principal import Principal
from storage.archive import Archive
from storage.index.models import AuditRecord, Instance, Study, StudyOwner
from tests.kit import dicom_factory as f
from tests.kit.access import CommitmentRequest, Destination, identifier_bytes, shape
from tests.kit.dimse import keys, register
from tests.kit.principals import ADMIN, CLINIC_B, CT_A, HOSP_A, US_B, ctx
from tests.kit.seed import seed

PR_FIND, SR_FIND = PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind
PR_GET, SR_GET = PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet
PR_MOVE, SR_MOVE = PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove
CT, MR = str(CTImageStorage), str(MRImageStorage)
NO_SUCH_OBJECT_INSTANCE = 0x0112  # PS3.4 J.3.3.1.2 Failure Reason
#: A-ASSOCIATE-RJ: rejected-permanent, service user, calling AE title not recognized (PS3.8 9.3.4)
CALLING_AE_NOT_RECOGNIZED = (1, 1, 3)
#: the return keys of every C-FIND below, per level: the ones that could carry another organization's data
RETURN_KEYS = {
    "PATIENT": ("PatientName", "PatientID", "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances"),
    "STUDY": ("PatientName", "PatientID", "StudyInstanceUID", "NumberOfStudyRelatedInstances"),
    "SERIES": ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"),
    "IMAGE": ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}
MODELS = {PR_FIND: ("PATIENT", "STUDY", "SERIES", "IMAGE"), SR_FIND: ("STUDY", "SERIES", "IMAGE")}
#: the unique key of each level and the levels below it, where it may be a matching key
UNIQUE = {"StudyInstanceUID": "STUDY", "SeriesInstanceUID": "SERIES", "SOPInstanceUID": "IMAGE"}
LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


@pytest.fixture(autouse=True)
def _policy_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pacs.admission")


# ----- what the archive holds -----------------------------------------------------------------


@dataclass
class Patient:
    """One organization's study of one patient: what must never reach the other organization."""

    patient_id: str
    name: str
    study: str
    series: str
    sops: list[str]

    @property
    def uids(self) -> dict[str, str]:
        return {"StudyInstanceUID": self.study, "SeriesInstanceUID": self.series, "SOPInstanceUID": self.sops[0]}

    def tokens(self) -> list[bytes]:
        """Every value that identifies this study or patient, as bytes on the wire."""
        return [v.encode() for v in (self.patient_id, self.name, self.study, self.series, *self.sops) if v]

    @classmethod
    def of(cls, objects: list[Dataset]) -> Patient:
        first = objects[0]
        return cls(
            str(first.PatientID),
            str(first.PatientName),
            first.StudyInstanceUID,
            first.SeriesInstanceUID,
            [o.SOPInstanceUID for o in objects],
        )


def datasets(patient_id: str, name: str, n: int = 2, *, study: str | None = None) -> list[Dataset]:
    """`n` CT slices of one series of one study of `patient_id`."""
    study, series = study or f.uid(), f.uid()
    return [
        f.ct_dataset(study_uid=study, series_uid=series, patient_id=patient_id, patient_name=name) for _ in range(n)
    ]


def stored(archive: Archive, patient_id: str, name: str, sender: Principal) -> Patient:
    """A study of two instances sent by `sender` (a DICOM node of the kit)."""
    objects = datasets(patient_id, name)
    seed(archive, *objects, as_=sender)
    return Patient.of(objects)


def hosp_a_and_clinic_b(archive: Archive) -> tuple[Patient, Patient]:
    """One study of hosp-a's patient (sent by CT1), one of clinic-b's (sent by US-B); nothing in common."""
    return (
        stored(archive, "HA-1001", "Albu^Ana", CT_A),
        stored(archive, "CB-7007", "Barbu^Bogdan", US_B),
    )


def missing() -> Patient:
    """A study that does not exist: what an invisible one must be indistinguishable from."""
    return Patient("NX-0000", "Nimeni^Nicu", f.uid(), f.uid(), [f.uid()])


def study_instances(archive: Archive, study_uid: str) -> int:
    with archive.db.read() as s:
        return int(
            s.scalar(
                select(func.count(Instance.id))
                .join(Study, Study.id == Instance.study_id)
                .where(Study.study_uid == study_uid)
            )
            or 0
        )


def owners(archive: Archive, study_uid: str) -> set[str]:
    with archive.db.read() as s:
        return set(
            s.scalars(
                select(StudyOwner.org_id)
                .join(Study, Study.id == StudyOwner.study_id)
                .where(Study.study_uid == study_uid)
            )
        )


def audit_rows(archive: Archive, **where: Any) -> list[dict[str, Any]]:
    columns = ("actor", "org", "source", "channel", "action", "patient", "study", "outcome", "owner_org", "detail")
    with archive.db.read() as s:
        query = select(AuditRecord).order_by(AuditRecord.id)
        for name, value in where.items():
            query = query.where(getattr(AuditRecord, name) == value)
        return [{c: getattr(r, c) for c in columns} for r in s.scalars(query)]


def wait_for_audit(archive: Archive, timeout: float = 2.0, **where: Any) -> list[dict[str, Any]]:
    """The matching records, waiting up to `timeout` for the first (an association's refusal is
    recorded without being waited for)."""
    deadline = time.monotonic() + timeout
    while not (rows := audit_rows(archive, **where)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return rows


# ----- the peer -----------------------------------------------------------------------------


class Peer:
    """One association of a calling AE that finds, gets, moves and stores; what C-GET brought back."""

    def __init__(self, assoc: Association, received: list[str]) -> None:
        self.assoc = assoc
        self.received = received

    def find(self, model: str, level: str, **values: object) -> list[tuple[int, Dataset | None]]:
        query = keys(level, **dict.fromkeys(RETURN_KEYS[level], ""))
        for keyword, value in values.items():
            setattr(query, keyword, value)
        return [(int(status.Status), ident) for status, ident in self.assoc.send_c_find(query, model)]

    def found(self, model: str, level: str, keyword: str, **values: object) -> list[str]:
        """The values of `keyword` in the pending answers; asserts the query succeeded."""
        responses = self.find(model, level, **values)
        assert responses[-1][0] == 0x0000, responses[-1]
        return [str(ident.get(keyword)) for status, ident in responses[:-1] if ident is not None]

    def get(self, model: str, identifier: Dataset) -> tuple[list[tuple[Dataset, Dataset | None]], list[str]]:
        """Every response of a C-GET, and the SOP Instance UIDs it brought."""
        before = len(self.received)
        responses = list(self.assoc.send_c_get(identifier, model))
        return responses, self.received[before:]

    def move(self, model: str, identifier: Dataset, destination: str = "DEST") -> list[tuple[Dataset, Dataset | None]]:
        return list(self.assoc.send_c_move(identifier, destination, model))

    def store(self, ds: Dataset) -> Dataset:
        return self.assoc.send_c_store(ds)


def requested(ae_title: str) -> AE:
    ae = AE(ae_title=ae_title)
    for sop_class in (PR_FIND, SR_FIND, PR_GET, SR_GET, PR_MOVE, SR_MOVE, Verification):
        ae.add_requested_context(sop_class)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae


@contextmanager
def peer(scp: RunningScp, ae_title: str) -> Iterator[Peer]:
    """An established association of `ae_title`, storage SCP and SCU for CT (C-GET and C-STORE)."""
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    assoc = requested(ae_title).associate(
        "127.0.0.1",
        scp.port,
        ae_title="MUNIPACS",
        ext_neg=[build_role(CTImageStorage, scu_role=True, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established, f"{ae_title} was not accepted"
    try:
        yield Peer(assoc, received)
    finally:
        assoc.release()


def try_association(scp: RunningScp, ae_title: str) -> Association:
    """Ask for an association and C-ECHO on it when accepted; the association (released)."""
    assoc = requested(ae_title).associate("127.0.0.1", scp.port, ae_title="MUNIPACS")
    if assoc.is_established:
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    else:
        assert assoc.is_rejected, f"{ae_title}: neither accepted nor rejected"
    return assoc


def admitted(scp: RunningScp, ae_title: str) -> bool:
    """Whether an association of `ae_title` is accepted (and echoes) rather than rejected."""
    return not try_association(scp, ae_title).is_rejected


def rejection(assoc: Association) -> tuple[int, int, int]:
    """Result, source and reason of the A-ASSOCIATE-RJ the requester received."""
    primitive = assoc.acceptor.primitive
    assert primitive is not None
    return int(primitive.result), int(primitive.result_source), int(primitive.diagnostic)


def rejected_lines(caplog: pytest.LogCaptureFixture, calling_ae: str, timeout: float = 2.0) -> list[dict[str, Any]]:
    """The `dimse.assoc.rejected` lines of `calling_ae`, waiting up to `timeout` for the first (the
    SCP logs once the rejection has left, so the requester may hold it first)."""
    deadline = time.monotonic() + timeout
    while not (lines := _rejected_lines(caplog, calling_ae)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return lines


def _rejected_lines(caplog: pytest.LogCaptureFixture, calling_ae: str) -> list[dict[str, Any]]:
    return [
        r.pacs_fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "pacs.admission"
        and r.getMessage() == "dimse.assoc.rejected"
        and r.pacs_fields["calling_ae"] == calling_ae  # type: ignore[attr-defined]
    ]


def completed(responses: list[tuple[Dataset, Dataset | None]]) -> tuple[int, int, int]:
    final = responses[-1][0]
    return int(final.Status), int(final.NumberOfCompletedSuboperations), int(final.NumberOfFailedSuboperations)


def assert_no_leak(responses: list[tuple[int, Dataset | None]], other: Patient, what: str) -> None:
    for _, ident in responses:
        raw = identifier_bytes(ident)
        for token in other.tokens():
            assert token not in raw, f"{what}: {token!r} of the other organization in {ident}"


def retrieve_identifiers(p: Patient) -> list[tuple[str, str, Dataset]]:
    """(name, information model, identifier) of a study, a patient and one instance of `p`."""
    return [
        ("study", "study", keys("STUDY", StudyInstanceUID=p.study)),
        ("patient", "patient", keys("PATIENT", PatientID=p.patient_id)),
        (
            "image",
            "study",
            keys("IMAGE", StudyInstanceUID=p.study, SeriesInstanceUID=p.series, SOPInstanceUID=p.sops[0]),
        ),
    ]


GET = {"study": SR_GET, "patient": PR_GET}
MOVE = {"study": SR_MOVE, "patient": PR_MOVE}


# ----- 1. another organization's study is as absent as a missing one ---------------------------


def assert_finds_only_its_own(node: Peer, own: Patient, other: Patient, nothing: Patient) -> None:
    """Every level of both models: universal keys answer `own` only, with no byte of `other`;
    `other`'s keys answer exactly what the keys of a study that does not exist answer."""
    for model, levels in MODELS.items():
        for level in levels:
            universal = node.find(model, level)
            answers = [ident for _, ident in universal[:-1]]
            assert universal[-1][0] == 0x0000, (model, level, universal[-1])
            assert len(answers) == (len(own.sops) if level == "IMAGE" else 1), (model, level, answers)
            assert_no_leak(universal, other, f"{level} universal")
            for answer in answers:
                assert answer is not None and answer.PatientID == own.patient_id
                for keyword, value in own.uids.items():
                    if keyword != "SOPInstanceUID" and LEVELS.index(UNIQUE[keyword]) <= LEVELS.index(level):
                        assert answer.get(keyword) == value, (model, level, keyword)
            probes = [
                ("PatientID", other.patient_id, nothing.patient_id),
                ("PatientName", other.name, nothing.name),
                ("PatientName", other.name[:3] + "*", nothing.name[:3] + "*"),
                *[
                    (k, other.uids[k], nothing.uids[k])
                    for k in UNIQUE
                    if LEVELS.index(UNIQUE[k]) <= LEVELS.index(level)
                ],
            ]
            for keyword, theirs, absent in probes:
                got = node.find(model, level, **{keyword: theirs})
                assert got == node.find(model, level, **{keyword: absent}) == [(0x0000, None)], (model, level, keyword)


def assert_retrieves_nothing_of(node: Peer, other: Patient, nothing: Patient, destination: Destination) -> None:
    """C-GET and C-MOVE of `other`'s study, patient and instance answer as those of `nothing`:
    the same responses, nothing sent, not even an association opened to the destination."""
    for (name, model, theirs_id), (_, _, absent_id) in zip(
        retrieve_identifiers(other), retrieve_identifiers(nothing), strict=True
    ):
        theirs, brought = node.get(GET[model], theirs_id)
        absent, brought_absent = node.get(GET[model], absent_id)
        assert shape(theirs) == shape(absent), name
        assert completed(theirs) == (0x0000, 0, 0) and brought == brought_absent == [], name
        before = destination.associations
        theirs = node.move(MOVE[model], theirs_id, destination.ae_title)
        opened_for_theirs = destination.associations - before
        absent = node.move(MOVE[model], absent_id, destination.ae_title)
        opened_for_absent = destination.associations - before - opened_for_theirs
        assert shape(theirs) == shape(absent), name
        assert opened_for_theirs == opened_for_absent, name
        assert completed(theirs) == (0x0000, 0, 0) and destination.received == [], name


def test_another_organizations_study_is_as_absent_as_a_missing_one(scp: RunningScp, archive: Archive) -> None:
    a, b = hosp_a_and_clinic_b(archive)
    nothing = missing()
    # storage commitment asked first: its requester is a process of its own, and reports a second later
    commitment = CommitmentRequest(
        scp.port,
        "CT1",
        [(CT, a.sops[0]), (CT, b.sops[0]), (CT, nothing.sops[0]), (MR, b.sops[0]), (MR, nothing.sops[0])],
        f.uid(),
    )
    destination, theirs_too = Destination("DEST"), Destination("DEST-B")
    register(archive, HOSP_A, "DEST", destination.start())
    register(archive, CLINIC_B, "DEST-B", theirs_too.start())
    try:
        with peer(scp, "CT1") as ct1:
            assert_finds_only_its_own(ct1, a, b, nothing)
            assert_retrieves_nothing_of(ct1, b, nothing, destination)
            # control: the own study is found, got and moved
            assert ct1.found(SR_FIND, "STUDY", "StudyInstanceUID", StudyInstanceUID=a.study) == [a.study]
            responses, brought = ct1.get(SR_GET, keys("STUDY", StudyInstanceUID=a.study))
            assert completed(responses) == (0x0000, 2, 0) and sorted(brought) == sorted(a.sops)
            assert completed(ct1.move(SR_MOVE, keys("STUDY", StudyInstanceUID=a.study))) == (0x0000, 2, 0)
            assert sorted(destination.received) == sorted(a.sops)

        with peer(scp, "US-B") as us_b:  # the mirror image, from clinic-b's node
            assert_finds_only_its_own(us_b, b, a, nothing)
            assert_retrieves_nothing_of(us_b, a, nothing, theirs_too)
            responses, brought = us_b.get(SR_GET, keys("STUDY", StudyInstanceUID=b.study))
            assert completed(responses) == (0x0000, 2, 0) and sorted(brought) == sorted(b.sops)
    finally:
        destination.stop()
        theirs_too.stop()

    # storage commitment: B's instance fails exactly as one that does not exist, under either class
    result = commitment.result()
    assert result["action_status"] == 0x0000, result
    report = result["report"]
    assert report is not None, result
    assert report["committed"] == [(a.sops[0], CT)]
    assert report["failed"] == [
        (b.sops[0], CT, NO_SUCH_OBJECT_INSTANCE),
        (nothing.sops[0], CT, NO_SUCH_OBJECT_INSTANCE),
        (b.sops[0], MR, NO_SUCH_OBJECT_INSTANCE),  # not 0x0119 Class/Instance conflict: that would tell
        (nothing.sops[0], MR, NO_SUCH_OBJECT_INSTANCE),
    ]


def test_a_patient_both_organizations_hold_shows_each_only_its_own_studies(scp: RunningScp, archive: Archive) -> None:
    """Both send studies of PatientID SH-9 issued by ISS-X, with the same demographics: one patient
    identity with studies of two organizations, whose counts and retrieves stay per organization."""
    theirs, mine = datasets("SH-9", "Comun^Cornel", 3), datasets("SH-9", "Comun^Cornel", 1)
    for ds in (*theirs, *mine):
        ds.IssuerOfPatientID = "ISS-X"
    seed(archive, *theirs, as_=US_B)
    seed(archive, *mine, as_=CT_A)
    # the patient is the same person in both: what of clinic-b's hosp-a must not get is its study
    b = Patient.of(theirs)
    b_uids = Patient("", "", b.study, b.series, b.sops)
    for calling, own in (("CT1", mine), ("US-B", theirs)):
        with peer(scp, calling) as node:
            responses = node.find(PR_FIND, "PATIENT", PatientID="SH-9", IssuerOfPatientID="")
            ((_, patient), final) = responses
            assert final == (0x0000, None) and patient is not None
            counts = (patient.NumberOfPatientRelatedStudies, patient.NumberOfPatientRelatedInstances)
            assert counts == ("1", str(len(own))), calling
            assert node.found(PR_FIND, "STUDY", "StudyInstanceUID", PatientID="SH-9") == [own[0].StudyInstanceUID]
            images = node.find(PR_FIND, "IMAGE", PatientID="SH-9")
            assert sorted(str(i.SOPInstanceUID) for _, i in images[:-1]) == sorted(d.SOPInstanceUID for d in own)
            responses, brought = node.get(PR_GET, keys("PATIENT", PatientID="SH-9"))
            assert completed(responses) == (0x0000, len(own), 0) and sorted(brought) == sorted(
                d.SOPInstanceUID for d in own
            )
            if calling == "CT1":
                assert_no_leak(images, b_uids, "hosp-a IMAGE of SH-9")


# ----- 2. shares -------------------------------------------------------------------------------


def test_a_share_opens_a_study_to_clinic_b_until_revoked(scp: RunningScp, archive: Archive) -> None:
    a, b = hosp_a_and_clinic_b(archive)
    with peer(scp, "US-B") as us_b:
        assert us_b.found(SR_FIND, "STUDY", "StudyInstanceUID") == [b.study]
    with archive.db.write() as s:
        share = shares.create(s, ctx(ADMIN), study_uid=a.study, to_org=CLINIC_B, reason="referral", expires=None)

    with peer(scp, "US-B") as us_b:
        assert sorted(us_b.found(SR_FIND, "STUDY", "StudyInstanceUID")) == sorted([a.study, b.study])
        assert us_b.found(PR_FIND, "STUDY", "PatientID", StudyInstanceUID=a.study) == [a.patient_id]
        responses, brought = us_b.get(SR_GET, keys("STUDY", StudyInstanceUID=a.study))
        assert completed(responses) == (0x0000, 2, 0) and sorted(brought) == sorted(a.sops)
    (record,) = audit_rows(archive, action="C-GET", actor="US-B")
    assert (record["org"], record["study"], record["owner_org"]) == (CLINIC_B, a.study, HOSP_A)  # a cross-org read
    with peer(scp, "CT1") as ct1:  # the share goes one way: hosp-a still does not see clinic-b's study
        assert ct1.found(SR_FIND, "STUDY", "StudyInstanceUID") == [a.study]

    with archive.db.write() as s:
        assert not shares.revoke(s, ctx(ADMIN), share.id).active
    with peer(scp, "US-B") as us_b:
        assert us_b.found(SR_FIND, "STUDY", "StudyInstanceUID") == [b.study]
        assert us_b.find(SR_FIND, "STUDY", StudyInstanceUID=a.study) == [(0x0000, None)]
        theirs, brought = us_b.get(SR_GET, keys("STUDY", StudyInstanceUID=a.study))
        absent, _ = us_b.get(SR_GET, keys("STUDY", StudyInstanceUID=f.uid()))
        assert shape(theirs) == shape(absent) and completed(theirs) == (0x0000, 0, 0) and brought == []


# ----- 3, 4. an AE's address and its organization's standing, at every association -------------


def test_an_ae_is_held_to_its_address_and_its_organization(
    scp: RunningScp, archive: Archive, caplog: pytest.LogCaptureFixture
) -> None:
    with archive.db.write() as s:
        add_org(
            s,
            HOSP_A,
            None,
            [
                AeSpec("BOUND", allowed_from="10.9.9.0/24"),
                AeSpec("HOSTED", "10.1.2.3", 104),  # an IP address as host binds too
                AeSpec("NAMED", "modality.example", 104),  # a host name binds nothing (DNS proves no origin)
            ],
        )
    assoc = try_association(scp, "BOUND")
    assert assoc.is_rejected and not assoc.is_established
    assert rejection(assoc) == CALLING_AE_NOT_RECOGNIZED
    (line,) = rejected_lines(caplog, "BOUND")
    assert "10.9.9.0/24" in line["reason"] and "127.0.0.1" in line["reason"], line
    assert line["called_ae"] == "MUNIPACS" and line["peer"].startswith("127.0.0.1:")
    (record,) = wait_for_audit(archive, actor="BOUND")
    assert (record["action"], record["outcome"], record["org"]) == ("association", "refused", HOSP_A)
    assert (record["channel"], record["source"]) == ("dimse", "127.0.0.1")
    assert "10.9.9.0/24" in record["detail"]
    assert rejection(try_association(scp, "HOSTED")) == CALLING_AE_NOT_RECOGNIZED
    assert admitted(scp, "NAMED")

    with archive.db.write() as s:
        add_org(s, HOSP_A, None, [AeSpec("BOUND", allowed_from="127.0.0.0/8")])
    assert admitted(scp, "BOUND")
    with archive.db.write() as s:  # bound elsewhere again, but the organization checks no address (NAT)
        add_org(s, HOSP_A, None, [AeSpec("BOUND", allowed_from="10.9.9.0/24")])
        update_org(s, HOSP_A, check_ae_address=False)
    assert admitted(scp, "BOUND")
    assert admitted(scp, "HOSTED")
    with archive.db.write() as s:
        update_org(s, HOSP_A, check_ae_address=True)
    assert not admitted(scp, "BOUND")

    # a disabled organization: its nodes are rejected from the next association, the others go on
    with archive.db.write() as s:
        update_org(s, HOSP_A, disabled=True)
    assoc = try_association(scp, "CT1")
    assert assoc.is_rejected and rejection(assoc) == CALLING_AE_NOT_RECOGNIZED
    assert "organization hosp-a is disabled" in rejected_lines(caplog, "CT1")[0]["reason"]
    assert not admitted(scp, "STORESCU")
    assert admitted(scp, "US-B")
    (record,) = wait_for_audit(archive, actor="CT1")
    assert (record["action"], record["outcome"], record["org"]) == ("association", "refused", HOSP_A)
    with archive.db.write() as s:
        update_org(s, HOSP_A, disabled=False)
    assert admitted(scp, "CT1")
    assert len(rejected_lines(caplog, "CT1")) == 1


# ----- 5. writes into another organization's study -------------------------------------------


def test_a_node_adds_to_a_study_of_the_same_patient_only(scp: RunningScp, archive: Archive) -> None:
    a = stored(archive, "HA-1001", "Albu^Ana", CT_A)
    with peer(scp, "US-B") as us_b:
        status = us_b.store(datasets(a.patient_id, a.name, 1, study=a.study)[0])  # the same patient, no issuer
        assert status.Status == 0x0000, status
        assert us_b.found(SR_FIND, "STUDY", "StudyInstanceUID") == [a.study]  # a co-owner now
    assert owners(archive, a.study) == {HOSP_A, CLINIC_B}
    assert study_instances(archive, a.study) == 3

    for calling in ("CT1", "US-B"):
        with peer(scp, calling) as node:
            status = node.store(datasets("OTHER-42", "Altul^Alt", 1, study=a.study)[0])
            assert status.Status == 0xA900, (calling, status)
            assert "patient" in status.ErrorComment and "OTHER-42" in status.ErrorComment
            assert a.patient_id not in status.ErrorComment  # the study's own patient is not told
            counts = node.found(SR_FIND, "STUDY", "NumberOfStudyRelatedInstances", StudyInstanceUID=a.study)
            assert counts == ["3"], calling
    assert study_instances(archive, a.study) == 3
    refused = audit_rows(archive, action="C-STORE", outcome="refused")  # each refusal is on record
    assert sorted(r["actor"] for r in refused) == ["CT1", "US-B"] and all("OTHER-42" in r["detail"] for r in refused)


# ----- 6. one audit record per DIMSE operation ------------------------------------------------


def test_every_dimse_operation_leaves_one_audit_record(scp: RunningScp, archive: Archive) -> None:
    a = stored(archive, "HA-1001", "Albu^Ana", CT_A)  # stored by the kit: no audit record
    commitment = CommitmentRequest(scp.port, "CT1", [(CT, a.sops[0])], f.uid())
    destination = Destination()
    register(archive, HOSP_A, "DEST", destination.start())
    new = datasets("HA-1002", "Albu^Bianca")
    try:
        with peer(scp, "CT1") as ct1:
            assert ct1.found(SR_FIND, "STUDY", "StudyInstanceUID", StudyInstanceUID=a.study) == [a.study]
            assert completed(ct1.get(SR_GET, keys("STUDY", StudyInstanceUID=a.study))[0]) == (0x0000, 2, 0)
            assert completed(ct1.move(SR_MOVE, keys("STUDY", StudyInstanceUID=a.study))) == (0x0000, 2, 0)
            assert [ct1.store(ds).Status for ds in new] == [0x0000, 0x0000]
    finally:
        destination.stop()
    result = commitment.result()
    assert result["action_status"] == 0x0000 and result["report"]["committed"] == [(a.sops[0], CT)], result

    records = audit_rows(archive)
    assert sorted(r["action"] for r in records) == ["C-FIND", "C-GET", "C-MOVE", "C-STORE", "N-ACTION"], records
    for r in records:
        assert (r["actor"], r["org"], r["channel"], r["source"], r["outcome"]) == (
            "CT1",
            HOSP_A,
            "dimse",
            "127.0.0.1",
            "ok",
        ), r
        assert r["owner_org"] is None  # its own organization's studies
    by_action = {r["action"]: r for r in records}
    for action in ("C-FIND", "C-GET", "C-MOVE"):
        assert (by_action[action]["study"], by_action[action]["patient"]) == (a.study, a.patient_id), action
    assert (by_action["C-STORE"]["study"], by_action["C-STORE"]["patient"]) == (new[0].StudyInstanceUID, "HA-1002")
    assert by_action["N-ACTION"]["study"] is None

    # an unregistered AE may not query: refused, and that is recorded too
    with peer(scp, "ROGUE") as rogue:
        responses = rogue.find(SR_FIND, "STUDY")
    assert [status for status, _ in responses] == [0x0124] and responses[0][1] is None
    (refused,) = audit_rows(archive, actor="ROGUE")
    assert (refused["action"], refused["outcome"], refused["org"]) == ("C-FIND", "refused", None)
    assert (refused["channel"], refused["source"]) == ("dimse", "127.0.0.1")

    # an unregistered AE may not retrieve either
    with peer(scp, "ROGUE") as rogue:
        responses, brought = rogue.get(SR_GET, keys("STUDY", StudyInstanceUID=a.study))
    assert int(responses[-1][0].Status) == 0x0124 and brought == []
    assert [r["action"] for r in audit_rows(archive, actor="ROGUE", outcome="refused")] == ["C-FIND", "C-GET"]


# ----- defects found while writing these tests, fixed since ------------------------------------


def test_a_shared_issuer_shows_no_other_organizations_demographics(scp: RunningScp, archive: Archive) -> None:
    """clinic-b, then hosp-a, send a study of PatientID SH-9 issued by ISS-X, each with its own
    record of the patient: hosp-a must be answered with its own, never with clinic-b's."""
    theirs = datasets("SH-9", "Barbu^Bogdan", 1)
    theirs[0].IssuerOfPatientID, theirs[0].PatientBirthDate, theirs[0].PatientSex = "ISS-X", "19700707", "F"
    seed(archive, *theirs, as_=US_B)
    mine = datasets("SH-9", "Albu^Ana", 1)
    mine[0].IssuerOfPatientID = "ISS-X"
    seed(archive, *mine, as_=CT_A)
    with peer(scp, "CT1") as ct1:
        assert ct1.found(PR_FIND, "STUDY", "PatientName", PatientID="SH-9") == ["Albu^Ana"]  # its own study
        responses = ct1.find(PR_FIND, "PATIENT", PatientID="SH-9", PatientBirthDate="", PatientSex="")
        answers = [(str(i.PatientName), i.PatientBirthDate, i.PatientSex) for _, i in responses[:-1] if i]
        assert answers == [("Albu^Ana", "19800101", "M")]
        assert ct1.find(PR_FIND, "PATIENT", PatientName="Barbu*") == [(0x0000, None)]


def test_a_query_naming_an_invisible_study_is_not_recorded_as_a_read_of_it(scp: RunningScp, archive: Archive) -> None:
    _, b = hosp_a_and_clinic_b(archive)
    with peer(scp, "CT1") as ct1:
        assert ct1.find(SR_FIND, "STUDY", StudyInstanceUID=b.study) == [(0x0000, None)]
    (record,) = audit_rows(archive, action="C-FIND")
    assert (record["actor"], record["org"], record["outcome"]) == ("CT1", HOSP_A, "ok")
    assert record["owner_org"] is None and record["patient"] != b.patient_id, record
