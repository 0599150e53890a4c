"""DELETE of studies and series by an admin: index rows, aggregates and blobs, checked from outside."""

from __future__ import annotations

import io
import logging

import httpx
import pydicom
import pytest
from sqlalchemy import select

from storage.index.models import Instance, PendingBlob, Study
from storage.ingest.recovery import recover
from storage.logs import FIELDS
from tests.kit import dicom_factory as f
from tests.kit.dicomweb import Gateway
from tests.kit.inspect import blob_keys, own_pending, row_counts

ADMIN = {"org": None, "roles": ("admin",)}


def store_study(gw: Gateway, *, modalities: tuple[str, ...] = ("CT",), per_series: int = 2) -> tuple[str, list[str]]:
    """A study with one series per modality, stored over STOW; its UID and series UIDs."""
    study, series = f.uid(), [f.uid() for _ in modalities]
    datasets = [
        pydicom.dcmread(io.BytesIO(f.to_bytes(f.ct_dataset(study_uid=study, series_uid=uid, modality=m))))
        for uid, m in zip(series, modalities, strict=True)
        for _ in range(per_series)
    ]
    gw.client().store_instances(datasets)
    return study, series


def keys_of(gw: Gateway, study_uid: str) -> set[str]:
    with gw.archive.db.read() as s:
        rows = s.scalars(
            select(Instance.object_key).join(Study, Study.id == Instance.study_id).where(Study.study_uid == study_uid)
        )
        return set(rows)


def study_row(gw: Gateway, study_uid: str) -> Study | None:
    with gw.archive.db.read() as s:
        return s.scalars(select(Study).where(Study.study_uid == study_uid)).one_or_none()


def test_admin_deletes_a_study_and_nothing_else(gateway: Gateway) -> None:
    doomed, _ = store_study(gateway, modalities=("CT", "MR"))
    kept, _ = store_study(gateway)
    kept_keys = keys_of(gateway, kept)
    before = row_counts(gateway.archive)

    r = httpx.delete(f"{gateway.dicomweb}/studies/{doomed}", headers=gateway.headers(**ADMIN))
    assert r.status_code == 200
    assert r.json() == {
        "study_instance_uid": doomed,
        "series_instance_uid": None,
        "studies": 1,
        "series": 2,
        "instances": 4,
        "blobs_pending": 0,
    }
    after = row_counts(gateway.archive)
    assert after == {**before, "studies": 1, "series": 1, "instances": 2}  # patient identities stay
    assert blob_keys(gateway.archive) == kept_keys
    assert study_row(gateway, doomed) is None and study_row(gateway, kept) is not None

    # the same through dicomweb-client; gone is gone
    with pytest.raises(Exception, match="404"):
        gateway.client(**ADMIN).delete_study(doomed)
    gateway.client(**ADMIN).delete_study(kept)
    assert blob_keys(gateway.archive) == set()
    assert row_counts(gateway.archive)["instances"] == 0


def test_deleting_a_series_updates_the_study(gateway: Gateway) -> None:
    study, (ct, mr, us) = store_study(gateway, modalities=("CT", "MR", "US"))
    row = study_row(gateway, study)
    assert row is not None and (row.num_series, row.num_instances, row.modalities) == (3, 6, "CT\\MR\\US")
    all_keys = keys_of(gateway, study)

    r = httpx.delete(f"{gateway.dicomweb}/studies/{study}/series/{mr}", headers=gateway.headers(**ADMIN))
    assert r.status_code == 200
    assert (r.json()["studies"], r.json()["series"], r.json()["instances"]) == (0, 1, 2)
    row = study_row(gateway, study)
    assert row is not None and (row.num_series, row.num_instances, row.modalities) == (2, 4, "CT\\US")
    remaining = keys_of(gateway, study)
    assert blob_keys(gateway.archive) == remaining and len(all_keys - remaining) == 2

    client = gateway.client(**ADMIN)
    client.delete_series(study, us)
    row = study_row(gateway, study)
    assert row is not None and (row.num_series, row.num_instances, row.modalities) == (1, 2, "CT")
    r = httpx.delete(f"{gateway.dicomweb}/studies/{study}/series/{ct}", headers=gateway.headers(**ADMIN))
    assert r.json()["studies"] == 1  # its last series: the empty study goes too
    assert study_row(gateway, study) is None
    assert blob_keys(gateway.archive) == set()
    counts = row_counts(gateway.archive)
    assert (counts["studies"], counts["series"], counts["instances"], counts["pending_blobs"]) == (0, 0, 0, 0)
    assert counts["patient_identities"] == 1


def test_only_admins_delete_and_unknown_is_404(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="storage.access.context")
    study, (series,) = store_study(gateway)
    other, _ = store_study(gateway)
    before, keys = row_counts(gateway.archive), blob_keys(gateway.archive)
    for path in (f"/studies/{study}", f"/studies/{study}/series/{series}"):
        for roles in (("clinician",), ("integrator",)):
            r = httpx.delete(gateway.dicomweb + path, headers=gateway.headers(roles=roles))
            assert r.status_code == 403, (path, roles)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "admin" in r.json()["detail"]
        assert httpx.delete(gateway.dicomweb + path).status_code == 401
    # each refusal is one access.refused line, from storage's policy, with the request's context
    refused = [getattr(r, FIELDS) for r in caplog.records if r.getMessage() == "access.refused"]
    assert [(f["channel"], f["actor"], f["source"]) for f in refused][:2] == [
        ("dicomweb", "clinician@hosp-a", "127.0.0.1"),
        ("dicomweb", "integrator@hosp-a", "127.0.0.1"),
    ]
    assert len(refused) == 4 and {f["action"] for f in refused} == {"deleting a study", "deleting a series"}
    for path in (f"/studies/{f.uid()}", f"/studies/{study}/series/{f.uid()}", f"/studies/{other}/series/{series}"):
        r = httpx.delete(gateway.dicomweb + path, headers=gateway.headers(**ADMIN))
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("application/problem+json")
    assert row_counts(gateway.archive) == before and blob_keys(gateway.archive) == keys


@pytest.mark.parametrize("settings", ["sqlite-fs"], indirect=True)  # the failure is made on the filesystem
def test_a_blob_that_cannot_be_deleted_is_left_to_recovery(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    study, _ = store_study(gateway, per_series=1)
    (key,) = keys_of(gateway, study)
    path = gateway.archive.blobs.root / key  # type: ignore[attr-defined]
    path.unlink()
    path.mkdir()  # unlink() of a folder fails: a stand-in for a blob store that refuses
    (path / "x").write_bytes(b"")
    with caplog.at_level(logging.ERROR, logger="storage.ingest.delete"):
        r = httpx.delete(f"{gateway.dicomweb}/studies/{study}", headers=gateway.headers(**ADMIN))
    assert r.status_code == 200 and r.json()["blobs_pending"] == 1
    assert any(rec.getMessage() == "delete.blob_failed" for rec in caplog.records)
    assert study_row(gateway, study) is None  # rows are gone all the same
    with gateway.archive.db.read() as s:
        pending = s.scalars(select(PendingBlob.object_key)).all()
    assert [k for k in pending if k not in own_pending(gateway.archive)] == [key]

    (path / "x").unlink()
    path.rmdir()
    path.write_bytes(b"the blob, still there")
    gateway.archive.settled.flush(gateway.archive.db)  # as a later start-up would find it: the
    gateway.archive.reserved.release(gateway.archive.db)  # process stopped, ...
    gateway.archive.settings.recovery_grace_seconds = 0  # ... long enough ago
    assert recover(gateway.archive).removed == 1
    assert row_counts(gateway.archive)["pending_blobs"] == 0 and not path.exists()
