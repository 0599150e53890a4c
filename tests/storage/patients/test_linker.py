"""The linker on a real index, both backends: what ingest queues is linked, reviewed or kept apart.

Objects go in through the ingest pipeline as two organizations' modalities send them (the
hospital's CT and the clinic's ultrasound), then `link_pending` runs as a `pacs serve`'s linker
would. Persons are read back from the tables.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import func, insert, select

from storage.archive import Archive
from storage.index.models import LinkCandidate, LinkQueueItem, PatientIdentity, Study, utcnow
from storage.patients import cnp, linker, persons
from storage.patients.linker import link_pending
from storage.patients.model import Model
from tests.kit import dicom_factory as f
from tests.kit.principals import CT_A, US_B
from tests.kit.seed import seed, seed_orgs

HOME = "Str. Lapusneanu 12, Iasi 700057"
ANA = "285031707001"  # a woman born 1985-03-17 (check digit added below)


def code(first12: str) -> str:
    return first12 + cnp.check_digit(first12)


@pytest.fixture()
def registered(archive: Archive) -> Iterator[Archive]:
    seed_orgs(archive)
    yield archive


def patient(
    patient_id: str,
    name: str,
    *,
    birth: str = "19850317",
    sex: str = "F",
    address: str = "",
    issuer: str | None = None,
    other_cnp: str | None = None,
    other_id: tuple[str, str] | None = None,
) -> Dataset:
    ds = f.ct_dataset(patient_id=patient_id, patient_name=name, issuer=issuer)
    ds.PatientBirthDate, ds.PatientSex = birth, sex
    if address:
        ds.PatientAddress = address
    if other_cnp:
        item = Dataset()
        item.PatientID, item.IssuerOfPatientID = other_cnp, "RO-CNP"
        item.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = [item]
    if other_id:
        item = Dataset()
        item.PatientID, item.IssuerOfPatientID = other_id
        ds.OtherPatientIDsSequence = [*ds.get("OtherPatientIDsSequence", []), item]
    return ds


def person_of(archive: Archive, patient_id: str) -> int | None:
    with archive.db.engine.connect() as conn:
        return conn.scalar(select(PatientIdentity.person_id).where(PatientIdentity.patient_id == patient_id))


def open_candidates(archive: Archive) -> int:
    with archive.db.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(LinkCandidate.status == "open")) or 0)


def test_ingest_queues_a_new_identity_and_the_linker_empties_the_queue(registered: Archive) -> None:
    seed(registered, patient("H-1", "POPESCU^ANA"), patient("H-1", "POPESCU^ANA"), as_=CT_A)
    with registered.db.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(LinkQueueItem)) == 1  # one identity, once
    assert link_pending(registered.db, Model()) == 1
    assert person_of(registered, "H-1") is not None
    with registered.db.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(LinkQueueItem)) == 0


def test_one_cnp_links_across_institutions_whatever_the_names(registered: Archive) -> None:
    ana = code(ANA)
    seed(registered, patient(ana, "POPESCU^ANA", issuer="RO-CNP"), as_=CT_A)
    seed(registered, patient("9-44", "IONESCU^ANA MARIA", other_cnp=ana), as_=US_B)  # married, and a CNP aside
    link_pending(registered.db, Model())
    assert person_of(registered, ana) == person_of(registered, "9-44") is not None


def test_two_valid_cnps_never_link_twins_and_nothing_is_asked(registered: Archive) -> None:
    seed(registered, patient("H-7", "POPESCU^ANA", other_cnp=code(ANA), address=HOME), as_=CT_A)
    seed(registered, patient("C-7", "POPESCU^ANA", other_cnp=code("285031707002"), address=HOME), as_=US_B)
    link_pending(registered.db, Model())
    assert person_of(registered, "H-7") != person_of(registered, "C-7")
    assert open_candidates(registered) == 0


def test_an_invalid_cnp_never_links(registered: Archive) -> None:
    wrong = code(ANA)[:12] + str((int(code(ANA)[12]) + 1) % 10)
    seed(registered, patient("H-8", "POPESCU^ANA", other_cnp=wrong), as_=CT_A)
    seed(registered, patient("C-8", "GEORGESCU^MARIA", birth="19620101", other_cnp=wrong), as_=US_B)
    link_pending(registered.db, Model())
    assert person_of(registered, "H-8") != person_of(registered, "C-8")


def test_the_score_links_reviews_or_keeps_apart(registered: Archive) -> None:
    seed(registered, patient("H-2", "POPESCU^ANA MARIA", address=HOME), as_=CT_A)
    seed(registered, patient("C-2", "Popescu^Ana-Maria", address="LAPUSNEANU 12^IASI^700057"), as_=US_B)  # link
    seed(registered, patient("H-3", "GEORGESCU^ELENA", birth="19700101"), as_=CT_A)
    seed(registered, patient("C-3", "GEORGESCU^ELENA", birth="19700101"), as_=US_B)  # no address: review
    seed(registered, patient("C-4", "GEORGESCU^ELENA", birth="19710712"), as_=US_B)  # a namesake: apart
    link_pending(registered.db, Model())
    assert person_of(registered, "H-2") == person_of(registered, "C-2")
    assert len({person_of(registered, p) for p in ("H-3", "C-3", "C-4")}) == 3
    with registered.db.read() as session:
        (candidate,) = persons.candidates(session)
    assert {candidate.a.patient_id, candidate.b.patient_id} == {"H-3", "C-3"} and candidate.score > 0
    assert {r["field"] for r in candidate.reasons} == {"family", "given", "birth_date", "sex"}


def test_a_person_never_holds_two_cnps_through_a_third_identity(registered: Archive) -> None:
    """H-5 (CNP 1) and C-5 (CNP 2) are two people; N-5, without a CNP, matches both as well as
    the model can tell: linked with the first it meets, reviewed with the other."""
    seed(registered, patient("H-5", "POPESCU^ANA", other_cnp=code(ANA), address=HOME), as_=CT_A)
    seed(registered, patient("C-5", "POPESCU^ANA", other_cnp=code("285031707002"), address=HOME), as_=US_B)
    link_pending(registered.db, Model())
    third = patient("N-5", "POPESCU^ANA", address=HOME, issuer="urn:oid:1.2.3")
    seed(registered, third, as_=US_B)
    link_pending(registered.db, Model())
    people = {person_of(registered, p) for p in ("H-5", "C-5", "N-5")}
    assert len(people) == 2
    assert open_candidates(registered) == 1


def test_a_record_that_fits_two_twins_joins_neither_to_the_other(registered: Archive) -> None:
    """Twins NICOLAE IONUT and NICOLAE CRISTIAN, one birth date, one home: reviewed, not linked.
    A third record, VASILE^NICOLAE (a form with room for one given name), scores as a link with
    each; linking it to both would make the twins one person: the merge's check of every pair
    it joins sends the second link to review instead."""
    twins = {"birth": "20180329", "sex": "M", "address": HOME}
    seed(registered, patient("H-9", "VASILE^NICOLAE IONUT", **twins), as_=CT_A)
    seed(registered, patient("C-9", "VASILE^NICOLAE CRISTIAN", **twins), as_=US_B)
    link_pending(registered.db, Model())
    assert person_of(registered, "H-9") != person_of(registered, "C-9")
    seed(registered, patient("N-9", "VASILE^NICOLAE", issuer="urn:oid:1.2.3", **twins), as_=US_B)
    link_pending(registered.db, Model())
    assert person_of(registered, "H-9") != person_of(registered, "C-9")
    assert person_of(registered, "N-9") in {person_of(registered, "H-9"), person_of(registered, "C-9")}
    with registered.db.read() as session:
        reasons = [r["level"] for c in persons.candidates(session) for r in c.reasons if r["field"] == "merge"]
    assert reasons == ["two of their identities may be twins (one birth date, other given names)"]


def test_a_later_study_that_says_more_of_its_patient_is_linked_again(registered: Archive) -> None:
    """Name, birth date and sex alone are reviewed; the hospital's next study of the patient
    carries the address the clinic has: the identity takes it, is queued again and links."""
    seed(registered, patient("H-10", "DUMITRU^ANA"), as_=CT_A)
    seed(registered, patient("C-10", "DUMITRU^ANA", address=HOME), as_=US_B)
    link_pending(registered.db, Model())
    assert person_of(registered, "H-10") != person_of(registered, "C-10")
    seed(registered, patient("H-10", "DUMITRU^ANA", address=HOME), as_=CT_A)  # a new study, the same identity
    with registered.db.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(LinkQueueItem)) == 1
        kept = conn.scalar(select(PatientIdentity.address).where(PatientIdentity.patient_id == "H-10"))
    assert kept == HOME
    link_pending(registered.db, Model())
    assert person_of(registered, "H-10") == person_of(registered, "C-10")
    seed(registered, patient("H-10", "DUMITRU^ANA"), as_=CT_A)  # says less: nothing changes, nothing queued
    with registered.db.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(LinkQueueItem)) == 0


def test_a_verdict_scored_before_the_identity_changed_is_scored_again(registered: Archive) -> None:
    """The linker scores without the write lock (`_prepare`) and applies in a short transaction;
    when a study arriving in between changed the identity, the stale verdicts are not applied:
    the identity is scored again as it now reads, which is what scoring it at once would give."""
    seed(registered, patient("C-14", "DUMITRU^ANA", address=HOME), as_=US_B)
    link_pending(registered.db, Model())
    seed(registered, patient("H-14", "DUMITRU^ANA"), as_=CT_A)
    prepared = linker._prepare(registered.db, Model())
    assert prepared is not None and prepared.row.patient_id == "H-14"
    assert [v.decision for _, v in prepared.verdicts] == ["review"]  # name, birth date, sex: asked
    seed(registered, patient("H-14", "DUMITRU^ANA", address=HOME), as_=CT_A)  # says more meanwhile
    with registered.db.write_conn() as conn:
        linker.link_identity(conn, prepared.identity_id, Model(), prepared)
    assert person_of(registered, "H-14") == person_of(registered, "C-14")
    assert open_candidates(registered) == 0


def test_a_prepared_verdict_answers_as_scoring_in_the_transaction(registered: Archive) -> None:
    """The fast path (scored before the write lock) and the main path (scored inside it) make
    the same persons and candidates from the same queue."""
    outcomes = []
    for prepared_first, names in (
        (True, ("ALBU", "BARBU", "CRISAN", "DOBRE")),
        (False, ("ENE", "FLOREA", "GROSU", "HAIDU")),
    ):
        for k, family in enumerate(names):
            name, birth = f"{family}^MARIA", f"19{70 + k + 4 * prepared_first}0101"
            seed(registered, patient(f"H-2{k}{prepared_first}", name, birth=birth, address=HOME), as_=CT_A)
            seed(
                registered,
                patient(f"C-2{k}{prepared_first}", name, birth=birth, address=HOME if k % 2 else ""),
                as_=US_B,
            )
        while True:
            prepared = linker._prepare(registered.db, Model())
            if prepared is None:
                break
            with registered.db.write_conn() as conn:
                linker.link_identity(conn, prepared.identity_id, Model(), prepared if prepared_first else None)
                conn.execute(LinkQueueItem.__table__.delete().where(LinkQueueItem.identity_id == prepared.identity_id))
        together = [
            person_of(registered, f"H-2{k}{prepared_first}") == person_of(registered, f"C-2{k}{prepared_first}")
            for k in range(4)
        ]
        outcomes.append((together, open_candidates(registered)))
    assert outcomes[0][0] == outcomes[1][0] == [False, True, False, True]
    assert outcomes[1][1] == 2 * outcomes[0][1] == 4


def test_another_identifier_in_common_links_what_the_names_alone_would_not(registered: Archive) -> None:
    """An insurance number both senders give (OtherPatientIDsSequence, issuer RO-CNAS) links a
    typed name without a birth date; a clinic that gives the hospital's own ID of the patient
    links to the hospital's identity; two numbers of one issuer that differ count against."""
    seed(registered, patient("H-11", "MUNTEANU^ELENA", other_id=("CNAS-771", "RO-CNAS")), as_=CT_A)
    seed(registered, patient("C-11", "MUNTEANU^ELNA", birth="", other_id=("CNAS-771", "RO-CNAS")), as_=US_B)
    seed(registered, patient("H-12", "RUSU^IOANA", issuer="1.2.40.0.13.1.1"), as_=CT_A)
    seed(registered, patient("C-12", "RUSU^IOANA MARIA", birth="", other_id=("H-12", "1.2.40.0.13.1.1")), as_=US_B)
    seed(registered, patient("H-13", "STAN^ANA", other_id=("CNAS-1", "RO-CNAS")), as_=CT_A)
    seed(registered, patient("C-13", "STAN^ANA", other_id=("CNAS-2", "RO-CNAS")), as_=US_B)
    link_pending(registered.db, Model())
    assert person_of(registered, "H-11") == person_of(registered, "C-11")
    assert person_of(registered, "H-12") == person_of(registered, "C-12")
    assert person_of(registered, "H-13") != person_of(registered, "C-13")
    with registered.db.read() as session:
        (candidate,) = persons.candidates(session)  # 24.7 - 4.3: reviewed, with the reason
    assert {"field": "identifier", "level": "different"}.items() <= next(
        r for r in candidate.reasons if r["field"] == "identifier"
    ).items()


def test_decisions_survive_rescoring_and_an_unlink_moves_no_study(registered: Archive) -> None:
    seed(registered, patient("H-6", "POPESCU^ANA", address=HOME), as_=CT_A)
    seed(registered, patient("C-6", "POPESCU^ANA", address=HOME), as_=US_B)
    link_pending(registered.db, Model())
    joined = person_of(registered, "H-6")
    assert joined == person_of(registered, "C-6")
    with registered.db.engine.connect() as conn:
        studies_before = conn.execute(select(Study.study_uid, Study.identity_id).order_by(Study.id)).all()
    with registered.db.write_conn() as conn:
        new = persons.unlink(conn, "admin", joined, "urn:pacs:org:clinic-b", "C-6")
    assert person_of(registered, "C-6") == new != person_of(registered, "H-6")
    with registered.db.write_conn() as conn:  # re-score both: the model would link them again
        for pid in ("H-6", "C-6"):
            identity = conn.scalar(select(PatientIdentity.id).where(PatientIdentity.patient_id == pid))
            conn.execute(insert(LinkQueueItem).values(identity_id=identity, queued_at=utcnow()))
    link_pending(registered.db, Model())
    assert person_of(registered, "C-6") != person_of(registered, "H-6")
    with registered.db.engine.connect() as conn:
        assert conn.execute(select(Study.study_uid, Study.identity_id).order_by(Study.id)).all() == studies_before


def test_a_rejected_candidate_stays_apart_and_an_accepted_one_links(registered: Archive) -> None:
    seed(registered, patient("H-9", "POPESCU^ION", birth="19600101", sex="M"), as_=CT_A)
    seed(registered, patient("C-9", "POPESCU^ION", birth="19600101", sex="M"), as_=US_B)
    seed(registered, patient("H-10", "IONESCU^DAN", birth="19700101", sex="M"), as_=CT_A)
    seed(registered, patient("C-10", "IONESCU^DAN", birth="19700101", sex="M"), as_=US_B)
    link_pending(registered.db, Model())
    with registered.db.read() as session:
        by_name = {c.a.patient_name: c.id for c in persons.candidates(session)}
    with registered.db.write_conn() as conn:
        persons.decide_candidate(conn, "admin", by_name["POPESCU^ION"], accept=False)
        linked = persons.decide_candidate(conn, "admin", by_name["IONESCU^DAN"], accept=True)
    assert person_of(registered, "H-10") == person_of(registered, "C-10") == linked
    assert person_of(registered, "H-9") != person_of(registered, "C-9")
    with registered.db.write_conn() as conn:
        conn.execute(
            insert(LinkQueueItem).values(
                identity_id=conn.scalar(select(PatientIdentity.id).where(PatientIdentity.patient_id == "C-9")),
                queued_at=utcnow(),
            )
        )
    link_pending(registered.db, Model())
    assert person_of(registered, "H-9") != person_of(registered, "C-9") and open_candidates(registered) == 0


def test_linkers_of_two_processes_link_each_identity_once(registered: Archive) -> None:
    """Two linkers at once (threads with connections of their own, as two processes would): each
    queued identity is taken by one, and the persons come out as one linker would make them."""
    for k in range(12):
        seed(registered, patient(f"H-P{k}", f"PERSOANA^NUMARUL{k}", birth=f"1990{k + 1:02d}01", address=HOME), as_=CT_A)
        seed(registered, patient(f"C-P{k}", f"PERSOANA^NUMARUL{k}", birth=f"1990{k + 1:02d}01", address=HOME), as_=US_B)
    done: list[int] = []
    threads = [threading.Thread(target=lambda: done.append(link_pending(registered.db, Model()))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(done) == 24
    for k in range(12):
        assert person_of(registered, f"H-P{k}") == person_of(registered, f"C-P{k}")
    assert len({person_of(registered, f"H-P{k}") for k in range(12)}) == 12


def test_a_large_name_block_never_crowds_out_the_same_birth_date(
    registered: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks are compared up to MAX_COMPARED identities (here 3): those born the same day come
    before the rest of a frequent family name's block."""
    monkeypatch.setattr(linker, "MAX_COMPARED", 3)
    for k, given_name in enumerate(["ION", "VASILE", "GHEORGHE", "MIHAI"]):
        seed(registered, patient(f"C-B{k}", f"POPESCU^{given_name}", birth=f"19{50 + k}0101", sex="M"), as_=US_B)
    seed(registered, patient("C-B9", "POPESCU^ANA", address=HOME), as_=US_B)  # the last of the block
    link_pending(registered.db, Model())
    seed(registered, patient("H-B9", "Popescu^Ana", address=HOME), as_=CT_A)
    link_pending(registered.db, Model())
    assert person_of(registered, "H-B9") == person_of(registered, "C-B9")
