"""The Modality Worklist in storage: scheduling rules and C-FIND matching, on both backends.

Each test runs inside an outer transaction that is rolled back (STYLE rule 20). The C-FIND
identifiers are real pydicom datasets, as the SCP hands them over, and are matched in SQL on
SQLite (GLOB) and PostgreSQL (LIKE).
"""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from pydantic import ValidationError
from pydicom.dataset import Dataset
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from storage.access.context import Channel, Context
from storage.access.orgs import AeSpec, add_org
from storage.archive import Archive
from storage.errors import NotAuthorized, NotFound
from storage.index.migrate import alembic_config, current, upgrade
from storage.query.matching import InvalidQuery
from storage.workflow import mwl
from storage.workflow import worklist as w
from tests.kit import principals as who

ADMIN = who.ctx(who.ADMIN, Channel.API)
RIS_A = who.ctx(who.INTEGRATOR_A, Channel.API)
RIS_B = who.ctx(who.INTEGRATOR_B, Channel.API)
CLINICIAN_A = who.ctx(who.CLINICIAN_A, Channel.API)
CT1 = who.ctx(who.CT_A)
UNREGISTERED = who.ctx(who.UNREGISTERED)
TODAY = "20261123"


@pytest.fixture()
def session(session: Session) -> Session:
    """The conftest's rolled-back session, with two organizations registered in it."""
    add_org(session, "hosp-a", "Spitalul Județean A", [AeSpec("CT1"), AeSpec("CT2"), AeSpec("MR1")])
    add_org(session, "clinic-b", "Clinica B", [AeSpec("US-B")])
    return session


def spec(**kw: Any) -> w.NewStep:
    fields: dict[str, Any] = {
        "patient_name": "Popescu^Ion",
        "patient_id": "P001",
        "modality": "CT",
        "scheduled_station_ae_title": "CT1",
        "scheduled_procedure_step_start_date": TODAY,
        "scheduled_procedure_step_start_time": "0800",
    }
    return w.NewStep.model_validate(fields | kw)


def schedule(session: Session, ctx: Context = ADMIN, **kw: Any) -> w.Step:
    kw.setdefault("org", ctx.principal.org or "hosp-a")
    return w.create_step(spec(**kw), ctx, session=session)


def test_a_new_step_gets_a_study_uid_its_ids_and_dicom_values(session: Session) -> None:
    step = schedule(
        session,
        patient_name="Ştefănescu^Ioana",
        patient_birth_date="1980-02-29",
        modality="ct",
        scheduled_procedure_step_start_date="2026-11-23",
        scheduled_procedure_step_start_time="08:30",
    )
    assert step.org == "hosp-a" and step.status == "SCHEDULED"
    assert step.study_instance_uid.startswith("1.2.826.0.1.3680043.8.498.")  # pydicom's generate_uid
    assert step.scheduled_procedure_step_id == step.requested_procedure_id == str(step.id)
    assert (step.modality, step.patient_birth_date) == ("CT", "19800229")
    assert (step.scheduled_procedure_step_start_date, step.scheduled_procedure_step_start_time) == (TODAY, "0830")
    given = schedule(session, study_instance_uid="1.2.3.4", scheduled_procedure_step_id="SPS7", accession_number="A1")
    assert (given.study_instance_uid, given.scheduled_procedure_step_id) == ("1.2.3.4", "SPS7")
    assert w.get_step(step.id, ADMIN, session=session).patient_name == "Ştefănescu^Ioana"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("modality", "XYZ"),
        ("modality", ""),
        ("patient_name", ""),
        ("patient_name", "A^B^C^D^E^F"),
        ("patient_id", "x" * 65),
        ("patient_id", "P\\1"),
        ("patient_birth_date", "19800230"),
        ("patient_sex", "X"),
        ("accession_number", "A" * 17),
        ("study_instance_uid", "1.2.03"),
        ("scheduled_station_ae_title", "A" * 17),
        ("scheduled_procedure_step_start_date", "23.11.2026"),
        ("scheduled_procedure_step_start_time", "2500"),
        ("scheduled_procedure_step_start_time", "10:61"),
        ("referring_physician_name", "Dr\x07Who"),
        ("station", "CT1"),  # not a field: typos are refused, not ignored
    ],
)
def test_invalid_values_are_refused_naming_the_field(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as info:
        spec(**{field: value})
    assert [e["loc"][0] for e in info.value.errors()] == [field]


def test_who_may_schedule_and_see_what(session: Session) -> None:
    a = schedule(session, RIS_A)
    b = schedule(session, RIS_B, modality="US", scheduled_station_ae_title="US-B")
    with pytest.raises(NotAuthorized):
        schedule(session, RIS_A, org="clinic-b")
    with pytest.raises(NotAuthorized):
        w.list_steps(CLINICIAN_A, session=session)
    with pytest.raises(NotAuthorized):
        w.create_step(spec(), CLINICIAN_A, session=session)
    with pytest.raises(NotFound):  # another organization's step does not exist for an integrator
        w.get_step(b.id, RIS_A, session=session)
    with pytest.raises(NotFound):
        w.set_status(b.id, "STARTED", RIS_A, session=session)
    with pytest.raises(NotFound):
        w.delete_step(b.id, RIS_A, session=session)
    assert [s.id for s in w.list_steps(RIS_A, session=session)] == [a.id]
    assert [s.id for s in w.list_steps(RIS_A, session=session, org="clinic-b")] == []
    assert {s.id for s in w.list_steps(ADMIN, session=session)} == {a.id, b.id}
    assert [s.id for s in w.list_steps(ADMIN, session=session, org="clinic-b")] == [b.id]


def test_organization_and_station_must_fit(session: Session) -> None:
    with pytest.raises(w.InvalidStep, match="org: no organization"):
        schedule(session, org="nowhere")
    with pytest.raises(w.InvalidStep, match="org: required"):
        w.create_step(spec(), ADMIN, session=session)
    with pytest.raises(w.InvalidStep, match="scheduled_station_ae_title: US-B is registered to another"):
        schedule(session, scheduled_station_ae_title="US-B")
    assert schedule(session, scheduled_station_ae_title="NEW_CT").scheduled_station_ae_title == "NEW_CT"


def test_status_moves_on_and_final_states_stay(session: Session) -> None:
    step = schedule(session)
    assert w.set_status(step.id, "STARTED", RIS_A, session=session).status == "STARTED"
    assert w.set_status(step.id, "COMPLETED", RIS_A, session=session).status == "COMPLETED"
    with pytest.raises(w.InvalidStep, match="final"):
        w.set_status(step.id, "SCHEDULED", RIS_A, session=session)
    w.delete_step(step.id, RIS_A, session=session)
    with pytest.raises(NotFound):
        w.get_step(step.id, ADMIN, session=session)


def test_list_filters_by_date_modality_station_and_status(session: Session) -> None:
    ct = schedule(session)
    mr = schedule(
        session, modality="MR", scheduled_station_ae_title="MR1", scheduled_procedure_step_start_date="20261124"
    )
    done = schedule(session, scheduled_procedure_step_start_date="20261122")
    w.set_status(done.id, "COMPLETED", ADMIN, session=session)

    def ids(**kw: str) -> list[int]:
        return [s.id for s in w.list_steps(ADMIN, session=session, **kw)]

    assert ids() == [done.id, ct.id, mr.id]  # schedule order
    assert ids(date=TODAY) == ids(date="2026-11-23") == [ct.id]
    assert ids(date="20261123-") == [ct.id, mr.id]
    assert ids(date="-20261123") == [done.id, ct.id]
    assert ids(modality="MR") == ids(station_ae="MR*") == [mr.id]
    assert ids(status="COMPLETED") == [done.id]
    assert ids(status="SCHEDULED", modality="CT") == [ct.id]
    for bad in ({"date": "20261124-20261123"}, {"date": "yesterday"}, {"status": "DONE"}):
        with pytest.raises(InvalidQuery):
            ids(**bad)


# --- C-FIND matching -------------------------------------------------------------------------


def query(top: dict[str, Any] | None = None, **item: Any) -> Dataset:
    """A worklist identifier: top-level keys, and the step item's keys as keyword arguments."""
    ds = Dataset()
    for keyword, value in (top or {}).items():
        setattr(ds, keyword, value)
    sps = Dataset()
    for keyword, value in item.items():
        setattr(sps, keyword, value)
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def found(session: Session, identifier: Dataset, ctx: Context = CT1) -> list[str]:
    """The Patient IDs answered, in order (asked for as a return key when not a matching key)."""
    if "PatientID" not in identifier:
        identifier.PatientID = ""
    return [str(a.PatientID) for a in mwl.find_worklist(identifier, ctx, session=session)]


@pytest.fixture()
def day(session: Session) -> Session:
    """A day of hosp-a's and clinic-b's worklists."""
    rows = [
        ("hosp-a", "P1", "Ştefănescu^Ioana", "CT", "CT1", TODAY, "0800", "Ţăranu^Mihai", "ACC1"),
        ("hosp-a", "P2", "Popescu^Ion", "CT", "CT1", TODAY, "1130", "", "ACC2"),
        ("hosp-a", "P3", "Ionescu^Maria", "CT", "CT2", TODAY, "0900", "", "ACC3"),
        ("hosp-a", "P4", "Stanciu^Elena", "MR", "MR1", TODAY, "1000", "", "ACC4"),
        ("hosp-a", "P5", "Stefan^Vlad", "CT", "CT1", "20261124", "0800", "", "ACC5"),
        ("clinic-b", "P6", "Ştefănescu^Ana", "CT", "", TODAY, "0800", "", "ACC6"),
    ]
    for org, pid, name, modality, station, date, time, physician, acc in rows:
        schedule(
            session,
            org=org,
            patient_id=pid,
            patient_name=name,
            modality=modality,
            scheduled_station_ae_title=station,
            scheduled_procedure_step_start_date=date,
            scheduled_procedure_step_start_time=time,
            scheduled_performing_physician_name=physician,
            accession_number=acc,
        )
    started = schedule(session, patient_id="P7", scheduled_procedure_step_start_time="0700")
    w.set_status(started.id, "STARTED", ADMIN, session=session)
    return session


def test_a_modality_gets_its_scheduled_items_of_today(day: Session) -> None:
    typical = query(
        {"PatientName": "", "PatientID": ""},
        ScheduledStationAETitle="CT1",
        ScheduledProcedureStepStartDate=TODAY,
        Modality="CT",
    )
    assert found(day, typical) == ["P1", "P2"]  # schedule order; P7 is STARTED, P6 another org's
    assert found(day, query({"PatientID": ""})) == ["P1", "P3", "P4", "P2", "P5"]
    assert found(day, query({"PatientID": ""}), ADMIN) == ["P1", "P6", "P3", "P4", "P2", "P5"]
    assert found(day, query({"PatientID": ""}), UNREGISTERED) == []


def test_worklist_keys_match_as_c_find_keys_do(day: Session) -> None:
    cases = [
        (query({"PatientName": "stefanescu*"}), ["P1"]),
        (query({"PatientName": "ŞTEFĂNESCU^IOANA"}), ["P1"]),
        (query({"PatientName": "Ștefănescu^Ioana"}), ["P1"]),  # comma-below ș
        (query({"PatientName": "ste*"}), ["P1", "P5"]),
        (query({"PatientID": "P?"}, ScheduledProcedureStepStartDate="20261124-"), ["P5"]),
        (query({"AccessionNumber": "ACC3"}), ["P3"]),
        (query(ScheduledProcedureStepStartTime="-0900", ScheduledProcedureStepStartDate=TODAY), ["P1", "P3"]),
        (query(ScheduledProcedureStepStartTime="10-12"), ["P4", "P2"]),
        (query(ScheduledStationAETitle="CT*", Modality="CT"), ["P1", "P3", "P2", "P5"]),
        (query(ScheduledPerformingPhysicianName="taranu*"), ["P1"]),
        (query(ScheduledProcedureStepStatus="SCHEDULED", Modality="MR"), ["P4"]),
        (query(ScheduledProcedureStepStatus="STARTED"), []),
        (query({"Modality": "MR"}), ["P4"]),  # top level, where some modalities put it
    ]
    for identifier, expected in cases:
        assert found(day, identifier) == expected, identifier


def test_an_answer_holds_the_keys_asked_for(day: Session) -> None:
    identifier = query(
        {
            "PatientName": "",
            "PatientID": "P1",
            "StudyInstanceUID": "",
            "AdmissionID": "",
            "ReferencedStudySequence": [],
        },
        ScheduledStationAETitle="",
        ScheduledProcedureStepStartDate="",
        ScheduledProtocolCodeSequence=[],
    )
    (answer,) = mwl.find_worklist(identifier, CT1, session=day)
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert str(answer.PatientName) == "Ştefănescu^Ioana"
    assert answer.StudyInstanceUID.startswith("1.2.826.0.1.3680043.8.498.")
    assert answer.AdmissionID in (None, "") and len(answer.ReferencedStudySequence) == 0  # not kept: zero length
    (item,) = answer.ScheduledProcedureStepSequence
    assert (item.ScheduledStationAETitle, item.ScheduledProcedureStepStartDate) == ("CT1", TODAY)
    assert len(item.ScheduledProtocolCodeSequence) == 0
    assert "Modality" not in item and "AccessionNumber" not in answer  # not asked for

    (ascii_only,) = mwl.find_worklist(query({"PatientID": "P2", "PatientName": ""}), CT1, session=day)
    assert "SpecificCharacterSet" not in ascii_only


def test_an_empty_step_sequence_asks_for_the_whole_item(day: Session) -> None:
    identifier = Dataset()
    identifier.PatientID = "P1"
    identifier.ScheduledProcedureStepSequence = []
    (answer,) = mwl.find_worklist(identifier, CT1, session=day)
    (item,) = answer.ScheduledProcedureStepSequence
    assert item.Modality == "CT" and item.ScheduledProcedureStepStatus == "SCHEDULED"
    assert str(item.ScheduledPerformingPhysicianName) == "Ţăranu^Mihai"
    assert item.ScheduledProcedureStepStartTime == "0800" and item.ScheduledProcedureStepID


def test_a_bad_identifier_is_an_invalid_query(day: Session) -> None:
    two_items = query({"PatientID": ""})
    two_items.ScheduledProcedureStepSequence.append(Dataset())
    bad = [
        two_items,
        query(ScheduledProcedureStepStartDate="2026-11-23"),
        query(ScheduledProcedureStepStartTime="25"),
        query({"StudyInstanceUID": "1.2.abc"}),
    ]
    for identifier in bad:
        with pytest.raises(InvalidQuery):
            mwl.find_worklist(identifier, CT1, session=day)


def test_the_migration_goes_down_and_up(archive: Archive) -> None:
    """0003 on the backend under test: the table and its indexes appear and go away."""
    engine = archive.db.engine
    assert current(engine) >= "0003"
    indexes = {i["name"] for i in inspect(engine).get_indexes("scheduled_procedure_steps")}
    assert {"ix_sps_station_date", "ix_sps_date_modality"} <= indexes
    cfg = alembic_config()
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
        conn.commit()
    assert "scheduled_procedure_steps" not in inspect(engine).get_table_names()
    upgrade(engine)
    assert "scheduled_procedure_steps" in inspect(engine).get_table_names()
