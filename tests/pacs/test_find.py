"""The C-FIND SCP against real peers, over both backends.

dcmtk's findscu queries every level of both information models (``-P`` patient root, ``-S``
study root) and writes each answer as a file (``-X``) read back with pydicom; pynetdicom plays
the SCU where a test needs what findscu does not show: C-CANCEL after the first answer, the
statuses of every response, the Error Comment of a refusal. One synthetic archive is stored
once per backend and searched by every test (they only read).
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
)
from sqlalchemy import event

from pacs.server import start
from storage.archive import Archive
from storage.logs import FIELDS
from storage.query.keys import PATIENT, STUDY
from storage.query.search import Query, search, search_all
from tests.kit.backends import BACKENDS, module_archive
from tests.kit.dimse import STUDY_ROOT, Found, findscu, keys, last_status, pyfind
from tests.kit.principals import CT_A, ctx
from tests.kit.seed import seed, seed_orgs
from tests.kit.studies import BULK, BULK_INSTANCES
from tests.kit.studies import QUERY_ARCHIVE as ARCHIVE
from tests.kit.tools import require_tool

MODALITY = ctx(CT_A)
PATIENT_ROOT = PatientRootQueryRetrieveInformationModelFind
BY_UID = {s.uid: s.label for s in ARCHIVE.values()}


@dataclass
class Loaded:
    port: int
    archive: Archive


@pytest.fixture(scope="module", params=BACKENDS)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    """The SCP over the archive above, per backend; CT1 is an AE of hosp-a."""
    with module_archive(request, tmp_path_factory.mktemp("find")) as (settings, archive):
        seed_orgs(archive)
        for spec in ARCHIVE.values():
            seed(archive, *spec.files)
        scp = start(settings, archive, port=0)
        try:
            yield Loaded(scp.port, archive)
        finally:
            scp.shutdown()


# ----- peers ------------------------------------------------------------------------------


#: a study-level query that answers the Study Instance UID, which `labels` reads
STUDY_UIDS = ("QueryRetrieveLevel=STUDY", "StudyInstanceUID")


def labels(found: Found) -> set[str]:
    return {BY_UID[a.StudyInstanceUID] for a in found.answers}


# ----- study root -------------------------------------------------------------------------


def test_study_level_answers_exactly_the_requested_keys(loaded: Loaded) -> None:
    found = findscu(
        loaded.port,
        "QueryRetrieveLevel=STUDY",
        "PatientName=popescu*",
        "StudyInstanceUID",
        "StudyDate",
        "PatientID",
        "AccessionNumber",
    )
    assert labels(found) == {"ion", "ion-x", "maria"}
    assert "Received Final Find Response (Success)" in found.log
    for answer in found.answers:
        assert {e.keyword for e in answer} == {
            "QueryRetrieveLevel",
            "RetrieveAETitle",
            "StudyInstanceUID",
            "StudyDate",
            "PatientName",
            "PatientID",
            "AccessionNumber",
        }
        assert answer.QueryRetrieveLevel == "STUDY" and answer.RetrieveAETitle == "MUNIPACS"
        spec = ARCHIVE[BY_UID[answer.StudyInstanceUID]]
        assert answer.AccessionNumber == f"ACC-{spec.label}"
    maria = next(a for a in found.answers if a.PatientID == "P002")
    assert str(maria.PatientName) == "Popescu^Maria" and maria.StudyDate == "20251201"
    # a key the study has no value for comes back empty (PS3.4 C.4.1.1.3.2)
    answer = findscu(loaded.port, "QueryRetrieveLevel=STUDY", "PatientID=P002", "PatientWeight").answers[0]
    assert "PatientWeight" in answer and answer.PatientWeight in (None, "")


def test_romanian_names_fold_case_and_diacritics(loaded: Loaded) -> None:
    both = {"stef", "stef-mr"}
    for name in (
        "stefanescu*",
        "STEFANESCU^IOANA",
        "ştefănescu^ioana",
        "Ștefănescu*",
        "ŞTEFĂNESCU^IOANA",
        "ste?anescu*",
    ):
        found = findscu(loaded.port, "(0008,0005)=ISO_IR 192", *STUDY_UIDS, f"PatientName={name}")
        assert labels(found) == both, name
    assert labels(findscu(loaded.port, *STUDY_UIDS, "PatientName=turcanu^mihai")) == {"turcanu"}
    assert labels(findscu(loaded.port, *STUDY_UIDS, "PatientName=stefanescu")) == set()
    # answers in UTF-8 when a name is not ASCII, and findscu prints them right
    found = findscu(loaded.port, "QueryRetrieveLevel=STUDY", "PatientName=stef*", "StudyDate=20260310")
    (answer,) = found.answers
    assert answer.SpecificCharacterSet == "ISO_IR 192" and str(answer.PatientName) == "Ştefănescu^Ioana"
    tool = require_tool("findscu")
    printed = subprocess.run(
        [tool, "-S", "-aet", "CT1", "-aec", "MUNIPACS", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=tur*"]
        + ["127.0.0.1", str(loaded.port)],
        capture_output=True,
        timeout=60,
    )
    assert "Țurcanu^Mihai" in (printed.stdout + printed.stderr).decode("utf-8")
    ascii_only = findscu(loaded.port, "QueryRetrieveLevel=STUDY", "PatientID=P002", "PatientName").answers[0]
    assert "SpecificCharacterSet" not in ascii_only
    # the requester's character set decodes its values: Latin-2 (ISO_IR 101) from pynetdicom
    query = keys("STUDY", SpecificCharacterSet="ISO_IR 101", PatientName="Ştefănescu^Ioana", StudyDate="")
    responses = pyfind(loaded.port, query)
    assert last_status(responses) == 0x0000
    assert {r[1].StudyDate for r in responses[:-1] if r[1] is not None} == {"20260310", "20240101"}


def test_dates_wildcards_uid_lists_and_accession(loaded: Loaded) -> None:
    def study(*keys: str) -> set[str]:
        return labels(findscu(loaded.port, *STUDY_UIDS, *keys))

    assert study("StudyDate=20260101-20261231") == {"ion", "stef", "andrei"}
    assert study("StudyDate=20260115") == {"ion", "andrei"}
    assert study("StudyDate=-20231231", "PatientName=p*") == {"ion-x"}
    assert study("StudyDate=20260301-", "PatientID=P00?") == {"stef"}
    assert study("PatientID=*1", "PatientName=popescu^ion") == {"ion", "ion-x"}
    assert study("PatientID=p001") == set()  # case-sensitive outside person names
    uids = "\\".join((ARCHIVE["maria"].uid, ARCHIVE["turcanu"].uid))
    assert study(f"StudyInstanceUID={uids}") == {"maria", "turcanu"}
    assert study("AccessionNumber=ACC-maria") == {"maria"}
    assert study("ReferringPhysicianName=IONESCU*") == {"ion"}
    assert study("PatientSex=F", "PatientName=*") == {"maria", "stef", "stef-mr"}
    assert study("IssuerOfPatientID=SPITAL-X") == {"ion-x"}


def test_computed_study_attributes(loaded: Loaded) -> None:
    keys = ("ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
    found = findscu(loaded.port, "QueryRetrieveLevel=STUDY", "PatientID=P001", "StudyInstanceUID", *keys)
    by_label = {BY_UID[a.StudyInstanceUID]: a for a in found.answers}
    ion = by_label["ion"]
    assert list(ion.ModalitiesInStudy) == ["CT", "OT"]
    assert set(ion.SOPClassesInStudy) == {CTImageStorage, SecondaryCaptureImageStorage}
    assert (ion.NumberOfStudyRelatedSeries, ion.NumberOfStudyRelatedInstances) == (2, 4)
    assert by_label["ion-x"].ModalitiesInStudy == "CR" and by_label["ion-x"].NumberOfStudyRelatedInstances == 1
    # ModalitiesInStudy as a matching key finds a study with any series of that modality
    assert labels(findscu(loaded.port, *STUDY_UIDS, "ModalitiesInStudy=MR")) == {"maria", "stef-mr"}
    assert labels(findscu(loaded.port, *STUDY_UIDS, "ModalitiesInStudy=US\\CR")) == {
        "ion-x",
        "turcanu",
        "andrei",
    }
    # the patient's totals, asked at study level, count every visible study of that patient
    patient = ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances")
    (stef,) = findscu(loaded.port, "QueryRetrieveLevel=STUDY", "StudyDate=20260310", *patient).answers
    assert (stef.NumberOfPatientRelatedStudies, stef.NumberOfPatientRelatedSeries) == (2, 2)
    assert stef.NumberOfPatientRelatedInstances == 3


def test_series_and_image_levels_of_the_study_root(loaded: Loaded) -> None:
    maria = ARCHIVE["maria"]
    found = findscu(
        loaded.port,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={maria.uid}",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
    )
    rows = [(a.SeriesInstanceUID, a.Modality, a.SeriesNumber, a.NumberOfSeriesRelatedInstances) for a in found.answers]
    assert rows == [(maria.series[0], "MR", 1, 2), (maria.series[1], "CT", 2, 1)]
    assert all(a.QueryRetrieveLevel == "SERIES" and a.StudyInstanceUID == maria.uid for a in found.answers)
    # a series key across every study (no Study Instance UID: a relational search)
    found = findscu(loaded.port, "QueryRetrieveLevel=SERIES", "Modality=MR", "SeriesInstanceUID")
    assert {a.SeriesInstanceUID for a in found.answers} == {maria.series[0], ARCHIVE["stef-mr"].series[0]}
    # image level in one series, by instance number and by a list of SOP Instance UIDs
    ion = ARCHIVE["ion"]
    keys = ("QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={ion.uid}", f"SeriesInstanceUID={ion.series[0]}")
    found = findscu(loaded.port, *keys, "SOPInstanceUID", "InstanceNumber", "SOPClassUID")
    assert [(a.SOPInstanceUID, a.InstanceNumber) for a in found.answers] == [(ion.sops[i], i + 1) for i in range(3)]
    assert {a.SOPClassUID for a in found.answers} == {CTImageStorage}
    second = findscu(loaded.port, *keys, "InstanceNumber=2", "SOPInstanceUID").answers
    assert [a.SOPInstanceUID for a in second] == [ion.sops[1]]
    listed = findscu(loaded.port, *keys, f"SOPInstanceUID={ion.sops[0]}\\{ion.sops[2]}").answers
    assert {a.SOPInstanceUID for a in listed} == {ion.sops[0], ion.sops[2]}
    found = findscu(loaded.port, "QueryRetrieveLevel=IMAGE", "SOPClassUID=" + SecondaryCaptureImageStorage)
    assert [a.QueryRetrieveLevel for a in found.answers] == ["IMAGE"]


# ----- patient root -----------------------------------------------------------------------


def test_patient_level_with_computed_counts(loaded: Loaded) -> None:
    keys = (
        "QueryRetrieveLevel=PATIENT",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    )
    found = findscu(loaded.port, *keys, "PatientName=*escu*", model="-P")
    patients = {(str(a.PatientName), a.PatientID, a.IssuerOfPatientID or ""): a for a in found.answers}
    assert set(patients) == {
        ("Popescu^Ion", "P001", ""),
        ("Popescu^Ion", "P001", "SPITAL-X"),  # one institution's identity is one patient
        ("Popescu^Maria", "P002", ""),
        ("Ştefănescu^Ioana", "P003", ""),
        ("Ionescu^Andrei", "P005", "2.16.642.99"),
    }
    stef = patients[("Ştefănescu^Ioana", "P003", "")]
    assert (stef.NumberOfPatientRelatedStudies, stef.NumberOfPatientRelatedSeries) == (2, 2)
    assert (stef.NumberOfPatientRelatedInstances, stef.PatientSex, stef.PatientBirthDate) == (3, "F", "19800101")
    assert stef.SpecificCharacterSet == "ISO_IR 192" and stef.QueryRetrieveLevel == "PATIENT"
    masiv = findscu(loaded.port, *keys, "PatientID=P100", model="-P").answers
    assert [a.NumberOfPatientRelatedStudies for a in masiv] == [BULK]
    assert len(findscu(loaded.port, *keys, "IssuerOfPatientID=SPITAL-X", model="-P").answers) == 1
    assert len(findscu(loaded.port, *keys, "PatientSex=F", "PatientBirthDate=19800101-", model="-P").answers) == 2


def test_patient_root_study_series_and_image_levels(loaded: Loaded) -> None:
    found = findscu(loaded.port, *STUDY_UIDS, "PatientID=P003", model="-P")
    assert labels(found) == {"stef", "stef-mr"}
    stef_mr = ARCHIVE["stef-mr"]
    series = findscu(
        loaded.port,
        "QueryRetrieveLevel=SERIES",
        "PatientID=P003",
        f"StudyInstanceUID={stef_mr.uid}",
        "SeriesInstanceUID",
        "Modality",
        model="-P",
    ).answers
    assert [(a.SeriesInstanceUID, a.Modality) for a in series] == [(stef_mr.series[0], "MR")]
    images = findscu(
        loaded.port,
        "QueryRetrieveLevel=IMAGE",
        "PatientID=P003",
        f"StudyInstanceUID={stef_mr.uid}",
        f"SeriesInstanceUID={stef_mr.series[0]}",
        "SOPInstanceUID",
        model="-P",
    ).answers
    assert [a.SOPInstanceUID for a in images] == stef_mr.sops


# ----- statuses: warning, cancel, refusal, bad identifiers ---------------------------------


def test_unsupported_matching_key_answers_pending_with_warning(loaded: Loaded) -> None:
    responses = pyfind(loaded.port, keys("STUDY", PatientID="P002", PatientWeight="80", StudyInstanceUID=""))
    assert [status for status, _ in responses] == [0xFF01, 0x0000]
    supported = pyfind(loaded.port, keys("STUDY", PatientID="P002", StudyInstanceUID=""))
    assert [status for status, _ in supported] == [0xFF00, 0x0000]


def test_c_cancel_after_the_first_answer(loaded: Loaded, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pacs.find")
    ae = AE(ae_title="CT1")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate("127.0.0.1", loaded.port, ae_title="MUNIPACS")
    assert assoc.is_established
    statuses = []
    query = keys("IMAGE", PatientName="masiv^pacient", SOPInstanceUID="")
    for status, _ds in assoc.send_c_find(query, STUDY_ROOT, msg_id=7):
        statuses.append(int(status.Status))
        if len(statuses) == 1:
            assoc.send_c_cancel(7, query_model=STUDY_ROOT)
    assoc.release()
    assert statuses[0] == 0xFF00 and statuses[-1] == 0xFE00
    assert 1 <= statuses.count(0xFF00) < BULK * BULK_INSTANCES
    (line,) = [getattr(r, FIELDS) for r in caplog.records if r.getMessage() == "dimse.find"]
    assert line["cancelled"] is True and line["matches"] == statuses.count(0xFF00)


def test_unregistered_calling_ae_is_refused(loaded: Loaded, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    found = findscu(loaded.port, "QueryRetrieveLevel=STUDY", "PatientName", aet="STRANGER")
    assert found.answers == [] and "0x124" in found.log.lower()
    responses = pyfind(loaded.port, keys("STUDY", PatientName=""), aet="STRANGER")
    assert len(responses) == 1
    status, answer = responses[0]
    assert status == 0x0124 and answer is None
    # one access.refused line per refusal (storage.access.context), none of the handler's own
    refused = [getattr(r, FIELDS) for r in caplog.records if r.getMessage() == "access.refused"]
    assert [(f["actor"], f["channel"], f["action"]) for f in refused] == [("STRANGER", "dimse", "C-FIND")] * 2
    assert all(r.levelname == "WARNING" for r in caplog.records if r.getMessage() == "access.refused")
    finds = [getattr(r, FIELDS) for r in caplog.records if r.getMessage() == "dimse.find"]
    assert [f["status"] for f in finds] == ["0x0124"] * 2


def test_refusal_carries_an_error_comment(loaded: Loaded) -> None:
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate("127.0.0.1", loaded.port, ae_title="MUNIPACS")
    try:
        ((status, answer),) = list(assoc.send_c_find(keys("STUDY", PatientName=""), STUDY_ROOT))
    finally:
        assoc.release()
    assert status.Status == 0x0124 and answer is None
    assert status.ErrorComment == "calling AE STRANGER is not registered"


@pytest.mark.parametrize(
    ("model", "query", "comment"),
    [
        (STUDY_ROOT, keys("STUDY", StudyDate="20260101-20250101"), "StudyDate"),
        (STUDY_ROOT, keys("STUDY", StudyDate="2026-01"), "StudyDate"),
        (STUDY_ROOT, keys("STUDY", StudyInstanceUID="1.2.abc"), "not a valid UID"),
        (STUDY_ROOT, keys(None, PatientName="popescu*"), "QueryRetrieveLevel"),
        (STUDY_ROOT, keys("PATIENT", PatientName=""), "QueryRetrieveLevel"),
        (PATIENT_ROOT, keys("FRAME", PatientName=""), "QueryRetrieveLevel"),
        (STUDY_ROOT, keys("SERIES", StudyInstanceUID="1.2.3\\1.2.4"), "single UID"),
        (STUDY_ROOT, keys("STUDY", SpecificCharacterSet="ISO_IR 999", PatientName="x"), "Character Set"),
        (STUDY_ROOT, keys("STUDY", PatientID="P\x00001"), "NUL byte"),  # PostgreSQL refuses it in a bound value
    ],
)
def test_bad_identifiers_fail_with_a_reason(loaded: Loaded, model: str, query: Dataset, comment: str) -> None:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", loaded.port, ae_title="MUNIPACS")
    try:
        responses = list(assoc.send_c_find(query, model))
    finally:
        assoc.release()
    assert len(responses) == 1
    status, answer = responses[0]
    assert status.Status == 0xA900 and answer is None
    assert comment in status.ErrorComment


def test_bad_date_range_with_findscu(loaded: Loaded) -> None:
    found = findscu(loaded.port, "QueryRetrieveLevel=STUDY", "StudyDate=20261231-20260101")
    assert found.answers == [] and "DataSetDoesNotMatchSOPClass" in found.log


def test_one_log_line_per_find_without_patient_data(loaded: Loaded, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pacs.find")
    findscu(loaded.port, "QueryRetrieveLevel=PATIENT", "PatientName=popescu*", model="-P")
    (record,) = [r for r in caplog.records if r.getMessage() == "dimse.find"]
    fields = getattr(record, FIELDS)
    assert fields["calling_ae"] == "CT1" and fields["model"] == "PATIENT" and fields["query_level"] == "PATIENT"
    assert fields["matches"] == 3 and fields["status"] == "0x0000" and fields["cancelled"] is False
    assert fields["by_pydicom"] == 0  # every answer written from the index's JSON by pacs.wire.identifier
    assert fields["duration_ms"] >= 0
    assert "opescu" not in repr(fields).lower()


def test_every_match_is_read_batch_by_batch(loaded: Loaded) -> None:
    """C-FIND's reading of all matches: small batches, computed keys queried between fetches."""
    keys = {"00100020": "P100", "0020000D": "", "00080062": "", "00201200": "", "00201208": ""}
    query = Query(STUDY, keys, only_requested=True)
    with loaded.archive.db.read() as session:
        streamed = list(search_all(query, MODALITY, session=session, batch=4).matches)
        paged = search(query, MODALITY, session=session).matches
    assert streamed == paged and len(streamed) == BULK
    assert {m["00201200"]["Value"][0] for m in streamed} == {BULK}
    assert {m["00201208"]["Value"][0] for m in streamed} == {BULK_INSTANCES}
    assert all(m["00080062"]["Value"] == [CTImageStorage] for m in streamed)
    patients = Query(PATIENT, {"00100010": "*", "00101001": "", "00201204": ""}, only_requested=True)
    with loaded.archive.db.read() as session:
        assert list(search_all(patients, MODALITY, session=session, batch=2).matches) == (
            search(patients, MODALITY, session=session).matches
        )
    # the computed keys are queried once per batch, not once per row
    assert statements_streaming(loaded, query, batch=4) < statements_streaming(loaded, query, batch=1)


def statements_streaming(loaded: Loaded, query: Query, *, batch: int) -> int:
    """How many SQL statements reading every match of `query` takes, `batch` rows at a time."""
    engine = loaded.archive.db.engine
    count = 0

    def counted(*_: Any) -> None:
        nonlocal count
        count += 1

    event.listen(engine, "before_cursor_execute", counted)
    try:
        with loaded.archive.db.read() as session:
            assert len(list(search_all(query, MODALITY, session=session, batch=batch).matches)) == BULK
    finally:
        event.remove(engine, "before_cursor_execute", counted)
    return count


def test_patient_level_sql_searches_the_identity_indexes(loaded: Loaded) -> None:
    """The PATIENT query filters identities by index and reaches their studies by index; a name is
    matched on the caller's studies (their name index), which lead to their identities by key.

    On PostgreSQL a wild-card prefix needs a ``text_pattern_ops`` index, which the identity
    table does not have yet (the study table has): there only the exact ID is checked.
    """
    engine = loaded.archive.db.engine
    cases = [
        ("00100010", "POPESCU*", "ix_studies_name_date"),  # the name the caller's studies say
        ("00100020", "P001", "ix_patient_identities_patient_id"),
    ]
    if engine.dialect.name == "sqlite":
        cases.append(("00100020", "P*", "ix_patient_identities_patient_id"))
    for key, value, index in cases:
        plan = _plan_of_patient_search(loaded.archive, Query(PATIENT, {key: value}))
        if engine.dialect.name == "sqlite" and key == "00100010":
            # the name index, or the organization's own study ids (its owners index) when SQLite
            # judges them fewer: either way by index, never a scan of studies or identities
            assert re.search(rf"SEARCH studies USING INDEX {index} \(", plan) or (
                "SEARCH study_owners USING COVERING INDEX ix_study_owners_org_date" in plan
            ), plan
            assert "SEARCH patient_identities USING INTEGER PRIMARY KEY" in plan, plan
            assert "SCAN studies" not in plan and "SCAN patient_identities" not in plan, plan
        elif engine.dialect.name == "sqlite":
            assert re.search(rf"SEARCH patient_identities USING INDEX {index} \(", plan), plan
            assert "SEARCH studies USING INDEX ix_studies_identity_id" in plan, plan
        elif key == "00100010":
            assert re.search(r"Index Scan (using|on) ix_studies_patient_name_pattern", plan), plan
            assert "Index Scan using patient_identities_pkey" in plan, plan
        else:
            # index-only for an admin; an organization's visibility reads the row's id as well
            assert re.search(r"Index (Only )?Scan using ix_studies_identity_id on studies", plan), plan
            if key == "00100020":
                assert "Index Cond: ((patient_id)::text = 'P001'::text)" in plan, plan


def _plan_of_patient_search(archive: Archive, query: Query) -> str:
    """EXPLAIN of the statement that selects the patients (sequential scans priced out on PostgreSQL)."""
    sent: list[tuple[str, object]] = []

    def capture(_c: object, _cur: object, statement: str, parameters: object, _ctx: object, _many: bool) -> None:
        sent.append((statement, parameters))

    engine = archive.db.engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        with archive.db.read() as session:
            list(search_all(query, MODALITY, session=session).matches)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = next((st, p) for st, p in sent if "FROM patient_identities" in st)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            return " | ".join(str(r[-1]) for r in rows)
        conn.exec_driver_sql("SET enable_seqscan = off")
        rows = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)
        return " | ".join(str(r[0]) for r in rows)
