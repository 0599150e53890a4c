"""`pacs reindex`: an index rebuilt from the object store alone equals the one that was lost, on
both backends: studies, series, instances, their DICOM JSON, counts and modalities, patient
identities, and the owners that visibility follows.

The archive receives studies as a hospital's CT (hosp-a), a clinic's ultrasound (clinic-b), a
hospital clinician's STOW-RS and an AE nobody registered send them, one study from two
organizations (co-owned); then its database is replaced by an empty one over the same store.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from storage.access.context import Channel
from storage.archive import Archive
from storage.errors import Conflict
from storage.index.models import Instance, PatientIdentity, Series, Study, StudyOwner
from storage.ingest.reindex import reindex
from storage.query import imaging
from storage.query.search import Query
from storage.settings import Settings
from tests.kit import dicom_factory as f
from tests.kit.backends import migrated_archive
from tests.kit.databases import new_database
from tests.kit.principals import ADMIN, CLINICIAN_A, CLINICIAN_B, CT_A, UNREGISTERED, US_B, ctx
from tests.kit.seed import seed, seed_orgs


def study(patient_id: str, *, modality: str = "CT", count: int = 2, issuer: str = "") -> list[Dataset]:
    study_uid, series_uid = f.uid(), f.uid()
    found = []
    for number in range(1, count + 1):
        ds = f.ct_dataset(
            study_uid=study_uid,
            series_uid=series_uid,
            patient_id=patient_id,
            modality=modality,
            instance_number=number,
        )
        if issuer:
            ds.IssuerOfPatientID = issuer
        found.append(ds)
    return found


def snapshot(archive: Archive) -> dict[str, Any]:
    """What the index says of every object, without its row ids and times."""
    with archive.db.read() as s:
        owners: dict[int, list[str]] = {}
        for study_id, org in s.execute(select(StudyOwner.study_id, StudyOwner.org_id)):
            owners.setdefault(study_id, []).append(org)
        identity = {
            r.id: (r.issuer_kind, r.issuer, r.patient_id, r.patient_name, r.birth_date, r.sex, r.cnp)
            for r in s.scalars(select(PatientIdentity))
        }
        studies = {
            r.study_uid: (
                identity[r.identity_id],
                r.org_id,
                r.source_ae,
                r.patient_name,
                r.study_date,
                r.accession_number,
                r.modalities,
                r.num_series,
                r.num_instances,
                r.attrs_json,
                sorted(owners.get(r.id, [])),
            )
            for r in s.scalars(select(Study))
        }
        study_uid = {row[0]: row[1] for row in s.execute(select(Study.id, Study.study_uid)).all()}
        series = {
            r.series_uid: (study_uid[r.study_id], r.modality, r.series_number, r.num_instances, r.attrs_json)
            for r in s.scalars(select(Series))
        }
        series_uid = {row[0]: row[1] for row in s.execute(select(Series.id, Series.series_uid)).all()}
        instances = {
            r.sop_uid: (
                series_uid[r.series_id],
                r.sop_class_uid,
                r.instance_number,
                r.transfer_syntax_uid,
                r.object_key,
                r.size,
                r.rows,
                r.columns,
                r.number_of_frames,
                r.pixel_layout,
                r.dicom_json,
                r.attrs_json,
                r.source_ae,
            )
            for r in s.scalars(select(Instance))
        }
    return {"studies": studies, "series": series, "instances": instances}


@contextmanager
def empty_index_over_the_same_store(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Any
) -> Iterator[Archive]:
    """A new, empty database beside the archive's object store: what is left when the index is lost."""
    if settings.database_url.startswith("sqlite"):
        url, drop = f"sqlite:///{tmp_path}/rebuilt.db", (lambda: None)
    else:
        url, drop = new_database(request.getfixturevalue("postgres_url"))
    try:
        with migrated_archive(settings.model_copy(update={"database_url": url})) as rebuilt:
            yield rebuilt
    finally:
        drop()


def test_the_index_rebuilt_from_the_store_alone_equals_the_lost_one(
    request: pytest.FixtureRequest, archive: Archive, settings: Settings, tmp_path: Any
) -> None:
    seed_orgs(archive)
    hospital = study("H-1", count=3)
    seed(archive, *hospital, as_=CT_A)
    seed(archive, *study("C-1", modality="US"), as_=US_B)
    shared = study("SHARED-1", issuer="CITY")  # one patient's study, sent by both organizations
    seed(archive, shared[0], as_=CT_A)
    seed(archive, shared[1], as_=US_B)
    seed(archive, *study("H-2"), as_=ctx(CLINICIAN_A, Channel.DICOMWEB))  # STOW-RS with a token
    seed(archive, *study("ROGUE-1"), as_=UNREGISTERED)  # an AE nobody registered: unassigned
    before = snapshot(archive)
    # a second object of an instance already stored (a retried write that had crashed), and an
    # object of an older version, stored without its sender
    first = before["instances"][str(hospital[0].SOPInstanceUID)][4]
    with archive.blobs.open(first) as body:
        again = body.read()
    archive.blobs.put("ff/ff/second-copy.dcm", io.BytesIO(again), len(again), archive.blobs.meta(first))
    orphan = study("OLD-1", count=1)[0]
    orphan_bytes = f.to_bytes(orphan)
    archive.blobs.put("ff/fe/no-provenance.dcm", io.BytesIO(orphan_bytes), len(orphan_bytes))

    with empty_index_over_the_same_store(request, settings, tmp_path) as rebuilt:
        report = reindex(rebuilt)
        after = snapshot(rebuilt)

        assert (report.objects, report.duplicates, report.unattributed, report.unreadable) == (13, 1, 1, 0)
        assert report.indexed == 12 and report.organizations == 2
        old = str(orphan.StudyInstanceUID)
        assert after["studies"].pop(old)[1] is None  # unassigned: admins only
        del after["instances"][str(orphan.SOPInstanceUID)], after["series"][str(orphan.SeriesInstanceUID)]
        assert after == before
        # visibility came back with the owners: each organization sees what it saw
        with rebuilt.db.read() as s:
            seen_b = {
                r.study_uid for r in imaging.page(Query("STUDY", {}), ctx(CLINICIAN_B), session=s, limit=100).studies
            }
            seen_admin = imaging.count(Query("STUDY", {}), ctx(ADMIN), session=s)
        assert str(shared[0].StudyInstanceUID) in seen_b and str(hospital[0].StudyInstanceUID) not in seen_b
        assert seen_admin == 6
        with pytest.raises(Conflict):  # never over an index that holds studies
            reindex(rebuilt)
