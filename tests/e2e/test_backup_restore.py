"""Backup and restore as the README describes them, once end to end on PostgreSQL and S3.

The database first (`pg_dump -Fc`), then the objects (a copy of every object of the bucket with
its metadata, as `rclone sync` or `aws s3 sync` does; here the S3 API's own server-side copy),
while the archive keeps receiving; then everything is restored elsewhere (`pg_restore` into a
new database, a new bucket) and an archive over the copies serves what the backup held: every
study, its images byte for byte, the shares, the audit trail with its hash chains intact. An
instance stored between the dump and the object copy is an object the restored index does not
know, and nothing worse (the order the README prescribes makes sure no row names a missing
object).
"""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from minio import Minio
from minio.commonconfig import CopySource
from pydicom.dataset import Dataset
from sqlalchemy import select

from storage.access import shares
from storage.access.context import Channel, Context
from storage.archive import Archive
from storage.audit.records import verify_trail
from storage.index.models import Instance, Share
from tests.kit import dicom_factory as f
from tests.kit.backends import make_settings, migrated_archive
from tests.kit.databases import new_database
from tests.kit.principals import ADMIN, CT_A, ctx
from tests.kit.seed import seed, seed_orgs
from tests.kit.tools import require_tool

pytestmark = [pytest.mark.postgres, pytest.mark.s3]


def libpq(url: str) -> str:
    """The SQLAlchemy URL as pg_dump and pg_restore take it."""
    return url.replace("postgresql+psycopg://", "postgresql://")


def two_instances() -> list[Dataset]:
    study = f.uid()
    return [f.ct_dataset(study_uid=study, instance_number=i) for i in (1, 2)]


def test_a_backup_restores_to_an_archive_that_serves_what_it_held(
    request: pytest.FixtureRequest, tmp_path: Path, s3_settings: dict[str, str]
) -> None:
    pg_dump, pg_restore = require_tool("pg_dump", "postgresql-client"), require_tool("pg_restore", "postgresql-client")
    settings = make_settings(request, tmp_path / "live", "postgres-s3")
    with migrated_archive(settings) as live:
        seed_orgs(live)
        sender = Context(CT_A, Channel.DIMSE, "127.0.0.1", live.audit)  # audited, as the SCP's are
        studies = [two_instances() for _ in range(3)]
        for instances in studies:
            seed(live, *instances, as_=sender)
            sender.audit.record(sender.event("C-STORE", "ok", study=str(instances[0].StudyInstanceUID)))
        with live.db.write() as session:
            shares.create(
                session,
                ctx(ADMIN),
                study_uid=str(studies[0][0].StudyInstanceUID),
                to_org="clinic-b",
                reason="second opinion",
                expires=datetime.now(UTC) + timedelta(days=7),
            )
        with live.db.read() as session:
            held = {row.sop_uid: row.object_key for row in session.scalars(select(Instance))}
        originals = {sop: live.blobs.open(key).read() for sop, key in held.items()}

        # 1. the database, then 2. the objects (new instances keep arriving in between)
        dump = tmp_path / "pacs.dump"
        subprocess.run([pg_dump, "-Fc", "-f", str(dump), libpq(settings.database_url)], check=True, timeout=120)
        late = f.ct_dataset()
        seed(live, late)
        client, bucket = _client(s3_settings), settings.storage_url.split("://", 1)[1].split("?", 1)[0]
        copy = f"pacs-backup-{uuid.uuid4().hex[:10]}"
        client.make_bucket(copy)
        for item in client.list_objects(bucket, recursive=True):
            assert item.object_name is not None
            client.copy_object(copy, item.object_name, CopySource(bucket, item.object_name))  # metadata kept

    # 3. restore elsewhere: a new database from the dump, the bucket copy
    restored_url, drop = new_database(request.getfixturevalue("postgres_url"))
    try:
        subprocess.run(
            [pg_restore, "--no-owner", "-d", libpq(restored_url), str(dump)],
            check=True,
            timeout=120,
            capture_output=True,
        )
        restored = settings.model_copy(
            update={"database_url": restored_url, "storage_url": settings.storage_url.replace(bucket, copy, 1)}
        )
        archive = Archive.open(restored)
        try:
            with archive.db.read() as session:
                index = {row.sop_uid: row.object_key for row in session.scalars(select(Instance))}
                shared = session.scalars(select(Share)).all()
            assert index == held  # the dump's instances, none of the late one
            assert str(late.SOPInstanceUID) not in index
            assert {sop: archive.blobs.open(key).read() for sop, key in index.items()} == originals
            assert [s.reason for s in shared] == ["second opinion"]
            check = verify_trail(archive.db)
            assert check.records > 0 and not check.breaks
            # the object stored after the dump is in the copy, unknown to the restored index:
            # an orphan, never a row without its object
            assert sum(1 for _ in archive.blobs.keys()) == len(index) + 1
        finally:
            archive.close()
    finally:
        drop()


def _client(s3: dict[str, str]) -> Minio:
    endpoint = s3["S3_ENDPOINT"].removeprefix("http://")
    return Minio(
        endpoint, access_key=s3["S3_ACCESS_KEY"], secret_key=s3["S3_SECRET_KEY"], secure=False, region="us-east-1"
    )
