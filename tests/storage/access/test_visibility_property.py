"""Property: for random organizations, studies, owners, shares, linked persons, consents and
worklist steps, what a search returns equals what DESIGN.md's rule allows, on both backends.

The searches are the ones the edges answer with: `search` (QIDO-RS, pages), `search_all`
(C-FIND, every level it serves here: PATIENT and STUDY) and `find_worklist` (the Modality
Worklist). The rule is written here again, in Python, independently of `visible_to`'s SQL: an
admin sees every study; an organization the studies it owns and those shared with it that are
neither revoked nor expired, and, with the care relationship on, every owned study of a person
of whom it owns a study or has an open worklist step, unless that person opted out; nobody else
anything; a worklist step is its performing organization's. A query naming a patient with its
issuer finds the person's other visible studies when the caller sees one of that identity's.
Each example is written into one transaction that is rolled back after it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

from storage.access.context import Channel, Context
from storage.access.principal import Principal, Role
from storage.archive import Archive
from storage.index.models import (
    Organization,
    PatientIdentity,
    Person,
    ScheduledProcedureStep,
    Share,
    Study,
    StudyOwner,
)
from storage.query.keys import PATIENT, STUDY
from storage.query.search import Query, search, search_all
from storage.workflow.mwl import find_worklist
from tests.kit.backends import BACKENDS, module_archive

ORGS = ["org-0", "org-1", "org-2", "org-3"]
NOW = datetime.now(UTC)


@dataclass(frozen=True)
class ShareSpec:
    study: int
    to_org: str
    state: str  # active, revoked, expired, later (expires in the future)


@dataclass(frozen=True)
class StepSpec:
    org: str  # the performing organization
    study: int | None  # the study whose patient it is for, or None for a patient of its own
    status: str


@dataclass(frozen=True)
class World:
    owners: list[frozenset[str]]  # per study
    dates: list[str]  # per study: StudyDate, often equal (the order then falls back on arrival)
    shares: list[ShareSpec]
    steps: list[StepSpec]
    caller: str | None  # an organization, or None for an admin
    persons: list[int | None]  # per study: the person its identity is linked to (None: not yet linked)
    opted_out: frozenset[int]  # persons who opted out of cross-organization sharing
    care: bool  # PACS_CARE_RELATIONSHIP


@st.composite
def worlds(draw: st.DrawFn) -> World:
    n = draw(st.integers(1, 8))
    owners = [frozenset(draw(st.sets(st.sampled_from(ORGS), max_size=2))) for _ in range(n)]
    dates = [draw(st.sampled_from(["", "20240101", "20250615", "20261207"])) for _ in range(n)]
    shares = draw(
        st.lists(
            st.builds(
                ShareSpec,
                st.integers(0, n - 1),
                st.sampled_from(ORGS),
                st.sampled_from(["active", "revoked", "expired", "later"]),
            ),
            max_size=6,
        )
    )
    steps = draw(
        st.lists(
            st.builds(
                StepSpec,
                st.sampled_from(ORGS),
                st.one_of(st.none(), st.integers(0, n - 1)),
                st.sampled_from(["SCHEDULED", "STARTED", "COMPLETED", "DISCONTINUED"]),
            ),
            max_size=5,
        )
    )
    caller = draw(st.one_of(st.none(), st.sampled_from(ORGS)))
    persons = [draw(st.one_of(st.none(), st.integers(0, 2))) for _ in range(n)]
    opted_out = frozenset(draw(st.sets(st.integers(0, 2), max_size=2)))
    return World(owners, dates, shares, steps, caller, persons, opted_out, draw(st.booleans()))


def allowed_studies(w: World) -> set[int]:
    """The rule, in Python."""
    if w.caller is None:
        return set(range(len(w.owners)))
    shared = {s.study for s in w.shares if s.to_org == w.caller and s.state in ("active", "later")}
    owned = {i for i, owners in enumerate(w.owners) if w.caller in owners}
    if not w.care:
        return owned | shared
    cared = {w.persons[i] for i in owned} | {
        w.persons[s.study]
        for s in w.steps
        if s.org == w.caller and s.study is not None and s.status in ("SCHEDULED", "STARTED")
    }
    reached = {
        i
        for i, person in enumerate(w.persons)
        if person is not None and person in cared and person not in w.opted_out and w.owners[i]
    }
    return owned | shared | reached


def across_links(w: World, named: int) -> set[int]:
    """What a query naming study `named`'s patient ID and issuer finds, in Python."""
    allowed = allowed_studies(w)
    person = w.persons[named]
    if named not in allowed or person is None:
        return allowed & {named}
    return {i for i in allowed if w.persons[i] == person}


@pytest.fixture(scope="module", params=BACKENDS)
def archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    with module_archive(request, tmp_path_factory.mktemp("visibility")) as (_settings, arch):
        with arch.db.write() as session:
            for org in ORGS:
                session.add(Organization(id=org, name=org))
        yield arch


def newest_first(w: World, uids: list[str], allowed: set[int]) -> list[str]:
    """The order of a study search, in Python: newest StudyDate first, then latest arrival."""
    return [uids[i] for i in sorted(allowed, key=lambda i: (w.dates[i], i), reverse=True)]


def _write(session: Session, w: World) -> list[str]:
    """The world's rows (studies in index order, so arrival order); the study UIDs by index."""
    uids = []
    person_ids = {}
    for p in sorted({p for p in w.persons if p is not None}):
        person = Person(created_at=NOW, cross_org_sharing="opt-out" if p in w.opted_out else "opt-in")
        session.add(person)
        session.flush()
        person_ids[p] = person.id
    for i, owners in enumerate(w.owners):
        person_id = None if w.persons[i] is None else person_ids[w.persons[i]]
        identity = PatientIdentity(
            issuer_kind="dicom", issuer="x", patient_id=f"P{i}", patient_name=f"N{i}", person_id=person_id
        )
        session.add(identity)
        session.flush()
        attrs = {"0020000D": {"vr": "UI", "Value": [f"1.2.3.{i}"]}, "00100020": {"vr": "LO", "Value": [f"P{i}"]}}
        study = Study(
            study_uid=f"1.2.3.{i}",
            identity_id=identity.id,
            patient_id=f"P{i}",
            patient_name=f"N{i}",
            study_date=w.dates[i],
            attrs_json=json.dumps(attrs),
        )
        session.add(study)
        session.flush()
        session.add_all(
            StudyOwner(study_id=study.id, org_id=org, study_date=study.study_date, person_id=person_id, created_at=NOW)
            for org in owners
        )
        uids.append((study.id, study.study_uid))
    for s in w.shares:
        expires = {"expired": NOW - timedelta(hours=1), "later": NOW + timedelta(hours=1)}.get(s.state)
        session.add(
            Share(
                study_id=uids[s.study][0],
                from_org=None,
                to_org=s.to_org,
                reason="r",
                created_by="t",
                created_at=NOW,
                expires_at=expires,
                revoked_at=NOW if s.state == "revoked" else None,
            )
        )
    for j, step in enumerate(w.steps):
        session.add(
            ScheduledProcedureStep(
                org_id=step.org,
                patient_name=f"W{j}",
                patient_id=f"W{j}" if step.study is None else f"P{step.study}",
                issuer_of_patient_id="x",
                study_instance_uid=f"1.2.4.{j}",
                modality="CT",
                scheduled_procedure_step_start_date="20261207",
                status=step.status,
            )
        )
    session.flush()
    return [uid for _, uid in uids]


def _ctx(caller: str | None, care: bool = True) -> Context:
    if caller is None:
        return Context(Principal("admin", None, frozenset({Role.ADMIN})), Channel.DICOMWEB, care_relationship=care)
    principal = Principal(f"dr@{caller}", caller, frozenset({Role.CLINICIAN}))
    return Context(principal, Channel.DICOMWEB, care_relationship=care)


def _node(caller: str | None, care: bool = True) -> Context:
    """The same organization as a DICOM node (C-FIND and the worklist); an admin stays an admin."""
    if caller is None:
        return _ctx(None, care)
    return Context(Principal.dicom_node("AE", caller), Channel.DIMSE, care_relationship=care)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(w=worlds())
def test_searches_return_what_the_rule_allows(archive: Archive, w: World) -> None:
    with archive.db.engine.connect() as conn:
        outer = conn.begin()
        session = Session(bind=conn, join_transaction_mode="create_savepoint")
        try:
            uids = _write(session, w)
            want = {uids[i] for i in allowed_studies(w)}

            qido = search(Query(STUDY), _ctx(w.caller, w.care), session=session, limit=100)
            assert {m["0020000D"]["Value"][0] for m in qido.matches} == want

            # pages of 3, with no condition (an organization's keys from `visible_by_date`) and
            # with one (from `studies` under `visible_to`): the rule's studies, in the rule's order
            order = newest_first(w, uids, allowed_studies(w))
            for query in (Query(STUDY), Query(STUDY, {"00100020": "P*"})):
                paged = [
                    m["0020000D"]["Value"][0]
                    for offset in range(0, len(order) + 3, 3)
                    for m in search(query, _ctx(w.caller, w.care), session=session, limit=3, offset=offset).matches
                ]
                assert paged == order, query

            cfind = search_all(Query(STUDY, {"0020000D": ""}), _node(w.caller, w.care), session=session)
            assert {m["0020000D"]["Value"][0] for m in cfind.matches} == want

            patients = search_all(Query(PATIENT, {"00100020": ""}), _node(w.caller, w.care), session=session)
            got_patients = {m["00100020"]["Value"][0] for m in patients.matches}
            assert got_patients == {f"P{i}" for i in allowed_studies(w)}

            for named in range(len(uids)):  # across links: QIDO at STUDY level, C-FIND at PATIENT level
                keys = {"00100020": f"P{named}", "00100021": "x"}
                linked = search(Query(STUDY, keys), _ctx(w.caller, w.care), session=session, limit=100)
                assert {m["0020000D"]["Value"][0] for m in linked.matches} == {
                    uids[i] for i in across_links(w, named)
                }, named
                linked_patients = search_all(Query(PATIENT, keys), _node(w.caller, w.care), session=session)
                assert {m["00100020"]["Value"][0] for m in linked_patients.matches} == {
                    f"P{i}" for i in across_links(w, named)
                }, named

            identifier = Dataset()
            identifier.PatientID = ""
            steps = find_worklist(identifier, _node(w.caller, w.care), session=session)
            expected_steps = {
                f"W{j}" if s.study is None else f"P{s.study}"
                for j, s in enumerate(w.steps)
                if (w.caller is None or s.org == w.caller) and s.status == "SCHEDULED"
            }
            assert {str(d.PatientID) for d in steps} == expected_steps
        finally:
            session.close()
            outer.rollback()
