"""Start-up recovery: pending writes of dead writers are removed, live ones are left alone."""

from __future__ import annotations

import io
import logging
import socket
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from storage.archive import Archive
from storage.blobs.protocol import new_key
from storage.index.models import PendingBlob
from storage.index.reserved import BATCH
from storage.ingest.recovery import recover, sweep
from storage.logs import FIELDS
from tests.kit.backends import migrated_archive, settings_for
from tests.kit.inspect import blob_keys


def _pending(archive: Archive, owner: str, *, age: timedelta = timedelta(0), write_blob: bool = True) -> str:
    key = new_key()
    with archive.db.write() as s:
        s.execute(insert(PendingBlob).values(object_key=key, owner=owner, created_at=datetime.now(UTC) - age))
    if write_blob:
        archive.blobs.put(key, io.BytesIO(b"half an instance"), 16)
    return key


def test_recovery_removes_what_dead_writers_left(archive: Archive) -> None:
    host = socket.gethostname()
    dead = _pending(archive, f"{host}:999999")  # no such pid
    never_written = _pending(archive, f"{host}:999998", write_blob=False)
    stale_elsewhere = _pending(archive, "other-node:42", age=timedelta(hours=2))
    live_here = _pending(archive, archive.owner)  # this very process, still writing
    live_elsewhere = _pending(archive, "other-node:43")  # another node, recent: may still be writing

    report = recover(archive)

    assert (report.removed, report.kept) == (3, 2)
    with archive.db.read() as s:
        left = set(s.scalars(select(PendingBlob.object_key)))
    assert left == {live_here, live_elsewhere}
    keys = blob_keys(archive)
    assert dead not in keys and stale_elsewhere not in keys and never_written not in keys
    assert {live_here, live_elsewhere} <= keys


def test_a_serving_process_sweeps_what_a_failed_write_left_but_not_its_temporary_files(archive: Archive) -> None:
    """While serving, a write that failed during an outage could not clean up after itself: its
    pending row (this live process's own) is swept once older than the grace period; a fresh
    one, still being written, stays; the process's temporary files are not touched."""
    mine_old = _pending(archive, archive.owner, age=timedelta(seconds=archive.settings.recovery_grace_seconds + 5))
    mine_new = _pending(archive, archive.owner)
    in_use = archive.temp_dir / "receiving.dcm"
    in_use.write_bytes(b"a data set on its way")

    assert sweep(archive) == 1

    with archive.db.read() as s:
        assert set(s.scalars(select(PendingBlob.object_key))) == {mine_new}
    assert mine_old not in blob_keys(archive) and mine_new in blob_keys(archive)
    assert in_use.exists()


def test_recovery_removes_the_temporary_files_of_dead_processes(archive: Archive, caplog) -> None:
    """What a killed process was receiving (pynetdicom's data set file, a STOW-RS part) stays
    in its folder under the data folder; the next start removes it, not another node's."""
    root = archive.settings.run_dir / "tmp"
    host = socket.gethostname()
    for owner, name in [(f"{host}:999999", "dataset.dcm"), (f"{host}:999999", "part-1"), ("other-node:42", "x.dcm")]:
        (root / owner).mkdir(parents=True, exist_ok=True)
        (root / owner / name).write_bytes(b"half a data set")
    (archive.temp_dir / "left-by-an-earlier-process-of-this-pid").write_bytes(b"x")

    with caplog.at_level(logging.INFO):
        report = recover(archive)

    assert report.temp_files == 3
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == ["other-node:42/x.dcm"]
    removed = [getattr(r, FIELDS) for r in caplog.records if r.getMessage() == "recovery.temp_removed"]
    assert sorted((r["owner"], r["files"]) for r in removed) == sorted([(f"{host}:999999", 2), (archive.owner, 1)])


CRASHING_WRITER = """
import os, signal, sys
from pathlib import Path
import storage.ingest.pipeline as ingest_mod
from storage.access.context import Context
from storage.archive import Archive
from storage.ingest.pipeline import ingest
from storage.dicom.parse import Source
from storage.settings import Settings

archive = Archive.open(Settings(data_dir=Path(sys.argv[1]), database_url=sys.argv[2], storage_url=sys.argv[3],
                                s3_access_key=sys.argv[4], s3_secret_key=sys.argv[5]))
point = sys.argv[6]
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if point == "after-blob":      # blob durable, index not committed
    real = ingest_mod._commit
    ingest_mod._commit = die
elif point == "after-commit":  # index committed, success not yet sent
    real = ingest_mod._result
    ingest_mod._result = die
elif point == "before-settle":  # a staged blob: index committed, its folder's fsync awaited, row kept
    ingest_mod._settle = die
elif point == "after-settle":  # a staged blob settled: its row waits for the next reservation
    settle = ingest_mod._settle
    ingest_mod._settle = lambda *a, **k: (settle(*a, **k), die())
staged = point in ("before-settle", "after-settle")  # a received data set (the archive's own temporary file)
ingest(Source(path=Path(sys.argv[7]), disposable=staged), Context.console(), archive=archive)
"""


#: the keys a killed writer had reserved ahead and not used (`storage.index.reserved`)
UNUSED = BATCH - 1


def _crash_during_ingest(archive: Archive, tmp_path, point: str) -> str:
    import subprocess
    import sys

    from tests.kit import dicom_factory as f

    ds = f.ct_dataset()
    path = f.write(tmp_path / f"{point}.dcm", ds)
    s = archive.settings
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASHING_WRITER,
            str(s.data_dir),
            s.database_url,
            s.storage_url,
            s.s3_access_key,
            s.s3_secret_key.get_secret_value(),
            point,
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == -9, r.stderr  # killed where we asked, not failed elsewhere
    return str(ds.SOPInstanceUID)


def test_killed_between_blob_and_commit_leaves_nothing_visible(archive: Archive, tmp_path) -> None:
    from tests.kit.inspect import row_counts

    _crash_during_ingest(archive, tmp_path, "after-blob")
    # its instance's row, and those of the keys it had reserved ahead and not used
    assert row_counts(archive)["pending_blobs"] == UNUSED + 1 and len(blob_keys(archive)) == 1
    assert row_counts(archive)["instances"] == 0  # nothing visible
    assert recover(archive).removed == UNUSED + 1  # the writer's pid is dead
    assert row_counts(archive)["pending_blobs"] == 0 and blob_keys(archive) == set()


def test_killed_after_commit_leaves_a_complete_instance(archive: Archive, tmp_path) -> None:
    from storage.index.models import Instance
    from tests.kit.inspect import row_counts

    sop = _crash_during_ingest(archive, tmp_path, "after-commit")
    staged = archive.blobs.stages(archive.temp_dir)  # the file's copy was staged: its row waited for its folder
    assert recover(archive).removed == UNUSED + (1 if staged else 0)  # that row goes, the instance stays
    assert row_counts(archive)["pending_blobs"] == 0 and row_counts(archive)["instances"] == 1
    with archive.db.read() as s:
        key = s.scalar(select(Instance.object_key).where(Instance.sop_uid == sop))
    assert key in blob_keys(archive)


def _fs_archive(tmp_path: Path) -> AbstractContextManager[Archive]:
    """Staging is the filesystem store's (S3 takes the bytes over the network): SQLite + folder."""
    return migrated_archive(settings_for(tmp_path / "var"))


@pytest.mark.parametrize("point", ["before-settle", "after-settle"])
def test_killed_between_a_staged_blobs_index_commit_and_dropping_its_row_keeps_the_instance(
    tmp_path: Path, point: str
) -> None:
    from storage.index.models import Instance
    from tests.kit.inspect import row_counts

    with _fs_archive(tmp_path) as archive:
        sop = _crash_during_ingest(archive, tmp_path, point)
        assert row_counts(archive)["pending_blobs"] == UNUSED + 1 and row_counts(archive)["instances"] == 1
        assert recover(archive).removed == UNUSED + 1  # the row goes, the instance and its blob stay
        assert row_counts(archive)["pending_blobs"] == 0 and row_counts(archive)["instances"] == 1
        with archive.db.read() as s:
            key = s.scalar(select(Instance.object_key).where(Instance.sop_uid == sop))
        assert key in blob_keys(archive)


def test_an_indexed_instance_whose_blob_a_power_cut_lost_is_taken_out_with_its_counts(tmp_path: Path) -> None:
    """The state a power cut can leave between a staged blob's index commit and its folder's
    fsync: the index row, the pending row, no blob. Recovery takes the instance out; the other
    instance of its series stays, with the series' and study's counts right."""
    from storage.access.context import Context
    from storage.dicom.parse import Source
    from storage.index.models import Instance, Series, Study
    from storage.ingest.pipeline import ingest
    from tests.kit import dicom_factory as f

    with _fs_archive(tmp_path) as archive:
        study, series = f.uid(), f.uid()
        paths = [f.write(tmp_path / f"{i}.dcm", f.ct_dataset(study_uid=study, series_uid=series)) for i in range(2)]
        for path in paths:
            ingest(Source(path=path, disposable=True), Context.console(), archive=archive)
        with archive.db.read() as s:
            lost_key = s.scalars(select(Instance.object_key).order_by(Instance.id)).first()
        assert lost_key is not None
        dead = f"{socket.gethostname()}:999999"
        with archive.db.write() as s:
            s.execute(insert(PendingBlob).values(object_key=lost_key, owner=dead, created_at=datetime.now(UTC)))
        archive.blobs.delete(lost_key)  # its name did not survive

        assert recover(archive).removed == 1
        with archive.db.read() as s:
            keys = s.scalars(select(Instance.object_key)).all()
            counts = s.execute(select(Study.num_instances, Study.num_series)).one()
            in_series = s.scalar(select(Series.num_instances))
        assert lost_key not in keys and len(keys) == 1
        assert tuple(counts) == (1, 1) and in_series == 1
        assert not any(p.exists() for p in paths)  # staged: moved into the store, not copied


def test_a_settled_row_goes_with_the_next_index_commit_the_sweep_or_the_archives_close(tmp_path: Path) -> None:
    """A staged instance's pending row outlives its answer until the next instance's index
    commit drops it (`storage.index.settled`); the last one goes with the sweep, or when the
    process closes its archive, which also releases the keys it reserved ahead and did not use."""
    from storage.access.context import Context
    from storage.dicom.parse import Source
    from storage.ingest.pipeline import ingest
    from tests.kit import dicom_factory as f

    def pending(*archives: Archive) -> list[str]:
        """Pending rows, but for the keys these archives reserved ahead and have not used."""
        unused = set().union(*(a.reserved.unused() for a in archives))
        with archives[0].db.read() as s:
            keys = s.scalars(select(PendingBlob.object_key).order_by(PendingBlob.id)).all()
        return [key for key in keys if key not in unused]

    def receive(archive: Archive, i: int) -> None:
        path = f.write(tmp_path / f"{i}.dcm", f.ct_dataset())
        ingest(Source(path=path, disposable=True), Context.console(), archive=archive)

    with _fs_archive(tmp_path) as archive:
        receive(archive, 0)
        first = pending(archive)
        assert len(first) == 1  # answered, its row waiting
        receive(archive, 1)
        second = pending(archive)
        assert len(second) == 1 and second != first  # the first went with the second's commit
        assert archive.settled.flush(archive.db) == 1 and pending(archive) == []
        receive(archive, 2)
        assert sweep(archive) == 0 and pending(archive) == []  # no instance followed: the sweep drops it
        other = Archive.open(archive.settings)  # another process of the same archive, stopping
        receive(other, 3)
        assert len(pending(archive, other)) == 1 and len(other.reserved.unused()) == BATCH - 1
        other.close()
        assert pending(archive) == []  # its settled row and its unused keys' rows are gone
