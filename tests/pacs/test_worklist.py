"""Modality Worklist C-FIND against the in-process SCP, with pynetdicom and dcmtk's findscu -W as modalities.

The `scp` fixture registers hosp-a with the AEs CT1 and STORESCU; clinic-b (AE CT-B) is added
here, so every query also proves that a modality sees its own organization's worklist only.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from pacs.server import RunningScp
from storage.access.context import Context
from storage.access.orgs import AeSpec, add_org
from storage.archive import Archive
from storage.workflow.worklist import NewStep, create_step, set_status
from tests.kit.tools import require_tool

ADMIN = Context.console()
TODAY = date.today().strftime("%Y%m%d")
TOMORROW = (date.today() + timedelta(days=1)).strftime("%Y%m%d")


def schedule(archive: Archive, **kw: Any) -> int:
    fields: dict[str, Any] = {
        "org": "hosp-a",
        "patient_name": "Popescu^Ion",
        "patient_id": "P2",
        "modality": "CT",
        "scheduled_station_ae_title": "CT1",
        "scheduled_procedure_step_start_date": TODAY,
        "scheduled_procedure_step_start_time": "1000",
    }
    with archive.db.write() as s:
        return create_step(NewStep.model_validate(fields | kw), ADMIN, session=s).id


@pytest.fixture()
def worklists(scp: RunningScp) -> RunningScp:
    """hosp-a's and clinic-b's worklists: today's CT at CT1, and what must not show there."""
    archive = scp.archive
    with archive.db.write() as s:
        add_org(s, "clinic-b", "Clinica B", [AeSpec("CT-B")])
    schedule(
        archive,
        patient_name="Ştefănescu^Ioana",
        patient_id="P1",
        accession_number="ACC1",
        scheduled_procedure_step_start_time="0800",
        scheduled_performing_physician_name="Ţăranu^Mihai",
        requested_procedure_description="CT torace",
    )
    schedule(archive)
    schedule(archive, patient_id="P3", scheduled_procedure_step_start_date=TOMORROW)
    schedule(archive, patient_id="P4", modality="MR", scheduled_station_ae_title="MR1")
    started = schedule(archive, patient_id="P5")
    with archive.db.write() as s:
        set_status(started, "STARTED", ADMIN, session=s)
    schedule(archive, org="clinic-b", patient_id="B1", patient_name="Ştefănescu^Ana", scheduled_station_ae_title="CT-B")
    return scp


@pytest.fixture()
def modality(worklists: RunningScp) -> Iterator[Association]:
    yield from _associate(worklists, "CT1")


def _associate(scp: RunningScp, calling: str) -> Iterator[Association]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="MUNIPACS")
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


def identifier(top: dict[str, Any] | None = None, **item: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in {"PatientName": "", "PatientID": "", **(top or {})}.items():
        setattr(ds, keyword, value)
    sps = Dataset()
    for keyword, value in item.items():
        setattr(sps, keyword, value)
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def c_find(assoc: Association, query: Dataset) -> tuple[list[Dataset], Dataset]:
    """The pending answers, and the final status."""
    answers, final = [], None
    for status, answer in assoc.send_c_find(query, ModalityWorklistInformationFind):
        if status.Status in (0xFF00, 0xFF01):
            answers.append(answer)
        else:
            final = status
    assert final is not None
    return answers, final


def test_a_modality_fetches_todays_ct_worklist(modality: Association, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pacs.worklist")
    query = identifier(
        {"StudyInstanceUID": "", "AccessionNumber": "", "RequestedProcedureDescription": "", "AdmissionID": ""},
        ScheduledStationAETitle="CT1",
        ScheduledProcedureStepStartDate=TODAY,
        ScheduledProcedureStepStartTime="",
        Modality="CT",
        ScheduledPerformingPhysicianName="",
        ScheduledProcedureStepID="",
    )
    answers, final = c_find(modality, query)
    assert final.Status == 0x0000
    assert [a.PatientID for a in answers] == ["P1", "P2"]  # schedule order; P5 is STARTED
    first = answers[0]
    assert first.SpecificCharacterSet == "ISO_IR 192"
    assert str(first.PatientName) == "Ştefănescu^Ioana"  # diacritics intact
    assert first.AccessionNumber == "ACC1" and first.RequestedProcedureDescription == "CT torace"
    assert first.StudyInstanceUID.startswith("1.2.826.0.1.3680043.8.498.")
    assert "AdmissionID" in first and not first.AdmissionID  # asked for, not kept: zero length
    (item,) = first.ScheduledProcedureStepSequence
    assert (item.ScheduledStationAETitle, item.ScheduledProcedureStepStartDate, item.Modality) == ("CT1", TODAY, "CT")
    assert str(item.ScheduledPerformingPhysicianName) == "Ţăranu^Mihai" and item.ScheduledProcedureStepID
    assert "SpecificCharacterSet" not in answers[1]  # plain ASCII

    everything, _ = c_find(modality, identifier())
    assert {a.PatientID for a in everything} == {"P1", "P2", "P3", "P4"}  # never clinic-b's B1
    lines = [r for r in caplog.records if r.getMessage() == "dimse.worklist"]
    assert [r.pacs_fields["matches"] for r in lines] == [2, 4]  # type: ignore[attr-defined]
    assert lines[0].pacs_fields["calling_ae"] == "CT1" and "duration_ms" in lines[0].pacs_fields  # type: ignore[attr-defined]
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'pacs_fields', '')}" for r in caplog.records)
    assert "Ioana" not in logged and "P1" not in logged  # no patient data in logs


def test_names_match_folded_with_wildcards(modality: Association) -> None:
    for name in ("stefanescu*", "ŞTEFĂNESCU^IOANA", "Ștefănescu^ioana"):
        query = identifier({"PatientName": name, "SpecificCharacterSet": "ISO_IR 192"})
        answers, _ = c_find(modality, query)
        assert [str(a.PatientName) for a in answers] == ["Ştefănescu^Ioana"], name
    answers, _ = c_find(modality, identifier(ScheduledPerformingPhysicianName="taranu*"))
    assert [a.PatientID for a in answers] == ["P1"]


def test_an_unregistered_ae_is_refused(worklists: RunningScp) -> None:
    for assoc in _associate(worklists, "NOBODY"):
        answers, final = c_find(assoc, identifier())
        assert answers == [] and final.Status == 0x0124
        assert "not registered" in final.ErrorComment


def test_a_bad_identifier_is_0xa900_with_a_comment(modality: Association) -> None:
    answers, final = c_find(modality, identifier(ScheduledProcedureStepStartDate="tomorrow"))
    assert answers == [] and final.Status == 0xA900
    assert "ScheduledProcedureStepStartDate" in final.ErrorComment


def test_c_cancel_stops_the_answers(worklists: RunningScp) -> None:
    """findscu --cancel 1 sends C-CANCEL after the first answer; the SCP stops with 0xFE00.

    dcmtk runs in its own process: an in-process SCU would share the GIL with the SCP, which
    then often sends every answer before its DUL thread gets to read the cancel.
    """
    archive = worklists.archive
    with archive.db.write() as s:
        for i in range(400):
            spec = {"org": "hosp-a", "patient_name": f"Pacient^{i}", "patient_id": f"C{i}", "modality": "CT"}
            step = NewStep.model_validate(spec | {"scheduled_procedure_step_start_date": TOMORROW})
            create_step(step, ADMIN, session=s)
    findscu = require_tool("findscu")
    args = ["-v", "--cancel", "1", "-W", "-aet", "CT1", "-aec", "MUNIPACS", "-k", "PatientID=C*", "-k", "PatientName"]
    r = subprocess.run([findscu, *args, "127.0.0.1", str(worklists.port)], capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Received Final Find Response (Cancel: MatchingTerminatedDueToCancelRequest)" in out
    assert 1 <= out.count("(Pending)") < 400


def test_findscu_worklist_query(worklists: RunningScp, tmp_path: Path) -> None:
    findscu = require_tool("findscu")
    keys = [
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT1",
        f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={TODAY}",
        "ScheduledProcedureStepSequence[0].Modality=CT",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
    ]
    args = [findscu, "-W", "-aet", "CT1", "-aec", "MUNIPACS", "-X", "-od", str(tmp_path)]
    r = subprocess.run(
        [*args, *(a for k in keys for a in ("-k", k)), "127.0.0.1", str(worklists.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    answers = [pydicom.dcmread(p) for p in sorted(tmp_path.glob("rsp*.dcm"))]
    assert [str(a.PatientName) for a in answers] == ["Ştefănescu^Ioana", "Popescu^Ion"]
    assert [a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime for a in answers] == ["0800", "1000"]

    out = tmp_path / "wildcard"
    out.mkdir()
    wildcard = [*args[:-1], str(out), "-k", "PatientName=stefanescu*", "-k", "ScheduledProcedureStepSequence"]
    r = subprocess.run([*wildcard, "127.0.0.1", str(worklists.port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (answer,) = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
    assert str(answer.PatientName) == "Ştefănescu^Ioana"  # not clinic-b's Ştefănescu^Ana
    assert answer.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "SCHEDULED"


def test_findscu_unregistered_ae_is_refused(worklists: RunningScp) -> None:
    findscu = require_tool("findscu")
    r = subprocess.run(
        [
            findscu,
            "-v",
            "-W",
            "-aet",
            "NOBODY",
            "-aec",
            "MUNIPACS",
            "-k",
            "PatientName",
            "127.0.0.1",
            str(worklists.port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Received Final Find Response (Unknown Status: 0x124)" in r.stdout + r.stderr  # dcmtk's words for 0x0124
