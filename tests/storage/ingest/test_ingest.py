"""The ingest pipeline on both backend pairs: SQLite + folder and PostgreSQL + S3."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from sqlalchemy import Connection, select

from storage.access.context import Channel, Context
from storage.archive import Archive
from storage.dicom.parse import Source
from storage.errors import (
    BadCharset,
    InvalidUid,
    MissingUid,
    NotDicom,
    PatientMismatch,
    RejectedInput,
    StudyNotWritable,
    Truncated,
)
from storage.index.models import Instance, PatientIdentity, Series, Study, StudyOwner
from storage.index.reserved import BATCH
from storage.ingest.pipeline import Outcome, ingest
from tests.kit import dicom_factory as f
from tests.kit.inspect import blob_keys, row_counts
from tests.kit.principals import CLINIC_B, CT_A, HOSP_A, INTEGRATOR_B, UNREGISTERED, ctx
from tests.kit.seed import seed_orgs

HOSPITAL = ctx(CT_A)


def store(archive: Archive, data: bytes, context: Context = HOSPITAL) -> Outcome:
    return ingest(Source(data=data), context, archive=archive).outcome


@pytest.fixture(autouse=True)
def _hospital(archive: Archive) -> None:
    seed_orgs(archive, [HOSP_A])


def test_stored_instance_is_indexed_and_readable(archive: Archive) -> None:
    ds = f.ct_dataset(patient_name="Ştefănescu^Ioana", charset="ISO_IR 101", issuer="RO-SPITAL-A")
    data = f.to_bytes(ds)
    assert store(archive, data) is Outcome.STORED
    with archive.db.read() as s:
        inst = s.scalars(select(Instance)).one()
        study = s.scalars(select(Study)).one()
        identity = s.scalars(select(PatientIdentity)).one()
    assert inst.sop_uid == ds.SOPInstanceUID
    with archive.blobs.open(inst.object_key) as blob:
        assert blob.read() == data  # kept byte for byte as received
    assert study.org_id == "hosp-a" and study.num_instances == 1 and study.num_series == 1
    assert study.modalities == "CT"
    assert study.patient_name_folded == "STEFANESCU^IOANA"
    assert (identity.issuer_kind, identity.issuer, identity.patient_id) == ("dicom", "RO-SPITAL-A", "PAT-1")
    assert inst.dicom_json.startswith("{") and '"7FE00010":{"vr":"OW","BulkDataURI":"bulk:7FE00010"}' in inst.dicom_json
    assert inst.pixel_layout is not None and '"kind":"native"' in inst.pixel_layout


def test_pixel_layout_points_at_the_frames(archive: Archive) -> None:
    import json

    ds = f.ct_dataset(rows=8, columns=8, frames=3)
    data = f.to_bytes(ds)
    store(archive, data)
    with archive.db.read() as s:
        inst = s.scalars(select(Instance)).one()
    layout = json.loads(inst.pixel_layout)
    frame2 = archive.blobs.read_range(
        inst.object_key, layout["offset"] + layout["frame_length"], layout["frame_length"]
    )
    assert frame2 == ds.PixelData[128:256]


def test_aggregates_follow_series_and_modalities(archive: Archive) -> None:
    study = f.uid()
    ct_series, mr_series = f.uid(), f.uid()
    for _ in range(3):
        store(archive, f.to_bytes(f.ct_dataset(study_uid=study, series_uid=ct_series)))
    store(archive, f.to_bytes(f.ct_dataset(study_uid=study, series_uid=mr_series, modality="MR")))
    with archive.db.read() as s:
        st = s.scalars(select(Study)).one()
        counts = dict(s.execute(select(Series.series_uid, Series.num_instances)).all())
    assert (st.num_series, st.num_instances, st.modalities) == (2, 4, "CT\\MR")
    assert counts == {ct_series: 3, mr_series: 1}


def test_duplicate_is_acknowledged_and_stored_once(archive: Archive) -> None:
    data = f.to_bytes(f.ct_dataset())
    assert store(archive, data) is Outcome.STORED
    keys = blob_keys(archive)
    assert store(archive, data) is Outcome.ALREADY_PRESENT
    assert row_counts(archive)["instances"] == 1
    assert blob_keys(archive) == keys


def test_concurrent_duplicates_and_one_study_from_many_threads(archive: Archive) -> None:
    study, series = f.uid(), f.uid()
    datasets = [f.to_bytes(f.ct_dataset(study_uid=study, series_uid=series)) for _ in range(12)]
    work = datasets + datasets  # every instance sent twice, concurrently
    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(lambda d: store(archive, d), work))
    assert outcomes.count(Outcome.STORED) == 12
    assert outcomes.count(Outcome.ALREADY_PRESENT) == 12
    counts = row_counts(archive)
    assert counts == {"patient_identities": 1, "studies": 1, "series": 1, "instances": 12, "pending_blobs": 0}
    assert len(blob_keys(archive)) == 12
    with archive.db.read() as s:
        assert s.scalar(select(Study.num_instances)) == 12


BAD_INPUT = [
    ("not-dicom", lambda: f.NOT_DICOM, NotDicom),
    ("empty", lambda: b"", NotDicom),
    ("garbage-data-set", f.garbage_dataset, RejectedInput),
    ("missing-sop-uid", lambda: f.without("SOPInstanceUID"), MissingUid),
    ("missing-study-uid", lambda: f.without("StudyInstanceUID"), MissingUid),
    ("missing-series-uid", lambda: f.without("SeriesInstanceUID"), MissingUid),
    ("sop-uid-letters", lambda: f.with_uid("SOPInstanceUID", "1.2.abc.4"), InvalidUid),
    ("study-uid-leading-zero", lambda: f.with_uid("StudyInstanceUID", "1.02.3"), InvalidUid),
    ("series-uid-too-long", lambda: f.with_uid("SeriesInstanceUID", "1." + "2" * 70), InvalidUid),
    ("truncated-pixels", lambda: f.truncated(100), Truncated),
    ("truncated-header", lambda: f.to_bytes(f.ct_dataset())[:300], Truncated),
    ("truncated-in-a-sequence", f.cut_in_sequence, Truncated),
    ("unknown-charset", lambda: f.with_charset("ISO_IR 999", b"Popescu^Ion"), BadCharset),
    ("invalid-utf8", lambda: f.with_charset("ISO_IR 192", b"Popescu^\xc3\x28on"), BadCharset),
    ("undeclared-escape", lambda: f.with_charset("ISO_IR 100", b"\x1b$B;3ED\x1b(B^Taro"), BadCharset),
    ("nul-inside-a-name", lambda: f.with_charset("ISO_IR 100", b"Popescu\x00Ion"), BadCharset),
]


@pytest.mark.parametrize(("case", "make", "error"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_refused_and_leaves_nothing(archive: Archive, case: str, make, error) -> None:
    store(archive, f.to_bytes(f.ct_dataset()))  # something already there
    before_rows, before_keys = row_counts(archive), blob_keys(archive)
    with pytest.raises(error) as info:
        store(archive, make())
    assert isinstance(info.value, RejectedInput)
    assert info.value.detail  # says what was wrong
    assert row_counts(archive) == before_rows
    assert blob_keys(archive) == before_keys


@pytest.mark.parametrize("study_exists", [False, True])
def test_series_uid_reused_in_another_study_is_refused(archive: Archive, study_exists: bool) -> None:
    series, other_study = f.uid(), f.uid()
    store(archive, f.to_bytes(f.ct_dataset(series_uid=series)))
    if study_exists:  # the other study is there already, with a series of its own
        store(archive, f.to_bytes(f.ct_dataset(study_uid=other_study)))
    before_rows, before_keys = row_counts(archive), blob_keys(archive)
    with pytest.raises(InvalidUid):
        store(archive, f.to_bytes(f.ct_dataset(study_uid=other_study, series_uid=series)))
    assert (row_counts(archive), blob_keys(archive)) == (before_rows, before_keys)


def test_identity_namespaces(archive: Archive) -> None:
    store(archive, f.to_bytes(f.ct_dataset(patient_id="123")))  # registered AE, no issuer
    store(archive, f.to_bytes(f.ct_dataset(patient_id="123", issuer="1.2.40.0.13.1")))
    store(archive, f.to_bytes(f.ct_dataset(patient_id="123")), ctx(UNREGISTERED, source="10.0.0.9"))
    store(archive, f.to_bytes(f.ct_dataset(patient_id="")))
    with archive.db.read() as s:
        kinds = sorted((i.issuer_kind, i.issuer) for i in s.scalars(select(PatientIdentity)) if i.patient_id == "123")
        unassigned = s.scalars(select(Study).where(Study.org_id.is_(None))).all()
    assert kinds == [("ae", "ROGUE"), ("dicom", "1.2.40.0.13.1"), ("org", "hosp-a")]
    assert [u.source_ae for u in unassigned] == ["ROGUE"]  # an unknown AE's study is held unassigned


CHARSET_NAMES = [
    ("ISO_IR 100", "Müller^Jürgen".encode("latin-1"), "Müller^Jürgen", "MULLER^JURGEN"),
    ("ISO_IR 101", "Ştefănescu^Ioana".encode("iso8859_2"), "Ştefănescu^Ioana", "STEFANESCU^IOANA"),
    ("ISO_IR 192", "Țurcanu^Ștefan".encode(), "Țurcanu^Ștefan", "TURCANU^STEFAN"),
    ("ISO_IR 144", "Иванов^Иван".encode("iso8859_5"), "Иванов^Иван", "ИВАНОВ^ИВАН"),
    ("ISO_IR 126", "Διονυσιος".encode("iso8859_7"), "Διονυσιος", "ΔΙΟΝΥΣΙΟΣ"),
    ("GB18030", "王^小东".encode("gb18030"), "王^小东", "王^小东"),
]


@pytest.mark.parametrize(("charset", "raw", "decoded", "folded"), CHARSET_NAMES, ids=[c[0] for c in CHARSET_NAMES])
def test_names_decode_in_their_character_set(
    archive: Archive, charset: str, raw: bytes, decoded: str, folded: str
) -> None:
    store(archive, f.with_charset(charset, raw))
    with archive.db.read() as s:
        study = s.scalars(select(Study)).one()
    assert study.patient_name == decoded
    assert study.patient_name_folded == folded


def test_pydicom_charset_files(archive: Archive) -> None:
    """Every character set pydicom ships a sample of (ISO 2022 Japanese/Korean, Arabic, ...)."""
    files = [p for p in f.bundled_pydicom_files("charset_files") if p.name.startswith("chr")]
    assert len(files) >= 15
    stored = 0
    for path in files:
        expected = pydicom.dcmread(path)
        if "SOPClassUID" not in expected:
            continue  # two samples carry no SOP Class UID; refused as such elsewhere
        try:
            ingest(Source(path=path), HOSPITAL, archive=archive)
        except RejectedInput as exc:  # pragma: no cover - reported with its reason
            pytest.fail(f"{path}: {exc.reason}: {exc.detail}")
        with archive.db.read() as s:
            name = s.scalar(select(Study.patient_name).where(Study.study_uid == expected.StudyInstanceUID))
        assert name == str(expected.PatientName), path
        stored += 1
    assert stored >= 13


def test_reading_back_gives_the_same_dataset(archive: Archive) -> None:
    ds = f.ct_dataset()
    store(archive, f.to_bytes(ds))
    with archive.db.read() as s:
        key = s.scalar(select(Instance.object_key))
    with archive.blobs.open(key) as blob:
        back = pydicom.dcmread(DicomBytesIO(blob.read()))
    assert back == ds


def test_ingest_is_thread_safe_under_load(archive: Archive) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            study = f.uid()
            for _ in range(n):
                store(archive, f.to_bytes(f.ct_dataset(study_uid=study, patient_id=study[-8:])))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(8,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert row_counts(archive)["instances"] == 32


def test_file_meta_without_preamble_is_stored_as_a_conformant_file(archive: Archive) -> None:
    """What pydicom and dicomweb-client write for an in-memory dataset: no 128-byte preamble."""
    ds = f.ct_dataset()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    data = buf.getvalue()
    assert data[128:132] != b"DICM" and data.startswith(b"\x02\x00")
    assert store(archive, data) is Outcome.STORED
    with archive.db.read() as s:
        key = s.scalar(select(Instance.object_key))
    with archive.blobs.open(key) as blob:
        stored = blob.read()
    assert stored[128:132] == b"DICM" and stored[132:] == data
    assert pydicom.dcmread(io.BytesIO(stored)) == ds


def test_a_received_copy_sent_again_is_already_present_and_leaves_nothing(archive: Archive) -> None:
    """A received data set (staged where the store can) is found to be stored already by the index
    commit itself, not by a read before it: its blob, pending row and file all go, and the
    answer is the one a read would have given."""
    ds = f.ct_dataset()
    first = f.write(archive.temp_dir / "first.dcm", ds)
    assert ingest(Source(path=first, disposable=True), ctx(CT_A), archive=archive).outcome is Outcome.STORED
    before_rows, before_keys = row_counts(archive), blob_keys(archive)
    again = f.write(archive.temp_dir / "again.dcm", ds)
    result = ingest(Source(path=again, disposable=True), ctx(CT_A), archive=archive)
    assert result.outcome is Outcome.ALREADY_PRESENT and result.size == len(f.to_bytes(ds))
    assert (row_counts(archive), blob_keys(archive)) == (before_rows, before_keys)
    for received in (first, again):  # the caller's, as the SCP deletes its temporary files
        received.unlink(missing_ok=True)
    assert not any(archive.temp_dir.iterdir())


def test_a_study_a_concurrent_sender_commits_between_two_reads_is_joined(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL under read committed: the study is not there at the commit's first read and is
    there, with this series, at the next (another association committed it meanwhile). The
    instance joins that study; it is not refused as "a series of another study"."""
    study, series = f.uid(), f.uid()
    store(archive, f.to_bytes(f.ct_dataset(study_uid=study, series_uid=series)))
    reads = _first_study_read_finds_nothing(monkeypatch)
    assert store(archive, f.to_bytes(f.ct_dataset(study_uid=study, series_uid=series))) is Outcome.STORED
    assert reads
    with archive.db.read() as s:
        assert s.scalar(select(Study.num_instances).where(Study.study_uid == study)) == 2


def test_instances_received_one_after_another_share_their_folder(archive: Archive) -> None:
    """A process's reserved keys share one fan-out folder: on the filesystem store a batch of
    instances makes one new folder (a mkdir and an fsync of its parent) between them, not one
    each, as random keys did in an archive's first few hundred thousand objects."""
    for n in range(BATCH):
        assert store(archive, f.to_bytes(f.ct_dataset(sop_uid=f"1.2.826.0.1.3680043.10.1.{n + 1}"))) is Outcome.STORED
    with archive.db.read() as s:
        keys = s.scalars(select(Instance.object_key)).all()
    assert len(keys) == BATCH and len({key.rsplit("/", 1)[0] for key in keys}) == 1


def _first_study_read_finds_nothing(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Blank the commit's first read of the instance's study, as PostgreSQL under read committed
    sees it when another sender's transaction creates that study just after the read."""
    import storage.ingest.pipeline as pipeline

    place_of, nothing = pipeline._PLACE_OF, select(Study.id).where(Study.id < 0)
    original = Connection.execute
    reads: list[object] = []

    def first_read_finds_no_study(self: Connection, statement: Any, *args: Any, **kwargs: Any) -> Any:
        if statement is place_of and not reads:
            reads.append(statement)
            statement = nothing
        return original(self, statement, *args, **kwargs)

    monkeypatch.setattr(Connection, "execute", first_read_finds_no_study)
    return reads


def test_a_study_created_concurrently_by_another_patients_sender_is_still_checked(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study is created by another sender between the commit's read and its insert: the
    instance meets it at the insert, and must pass the same patient check as for a study it
    read, not join a study of another person."""
    study = f.uid()
    store(archive, f.to_bytes(f.ct_dataset(study_uid=study, patient_id="PAT-1")))
    before = (row_counts(archive), blob_keys(archive))
    reads = _first_study_read_finds_nothing(monkeypatch)
    with pytest.raises(PatientMismatch):
        store(archive, f.to_bytes(f.ct_dataset(study_uid=study, patient_id="PAT-2")))
    assert reads and (row_counts(archive), blob_keys(archive)) == before


def test_a_study_created_concurrently_by_another_organization_is_not_written_or_co_owned(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A STOW-RS of another organization racing the study's creator neither writes into the
    study nor becomes one of its owners (which would show it the study)."""
    seed_orgs(archive, [CLINIC_B])
    study = f.uid()
    store(archive, f.to_bytes(f.ct_dataset(study_uid=study)))
    reads = _first_study_read_finds_nothing(monkeypatch)
    with pytest.raises(StudyNotWritable):
        store(archive, f.to_bytes(f.ct_dataset(study_uid=study)), ctx(INTEGRATOR_B, Channel.DICOMWEB))
    assert reads
    with archive.db.read() as s:
        assert s.scalars(select(StudyOwner.org_id)).all() == ["hosp-a"]


def test_a_series_created_concurrently_in_another_study_is_refused(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The series' row is made by a concurrent sender in another study between the commit's read
    and its insert: the instance is refused as a series of another study, not filed in it."""
    import storage.ingest.pipeline as pipeline

    series = f.uid()
    store(archive, f.to_bytes(f.ct_dataset(study_uid=f.uid(), series_uid=series)))
    monkeypatch.setattr(pipeline, "_STUDY_OF_SERIES", select(Study.study_uid).where(Study.id < 0))  # not seen yet
    with pytest.raises(InvalidUid, match="already belongs to another study"):
        store(archive, f.to_bytes(f.ct_dataset(study_uid=f.uid(), series_uid=series)))
