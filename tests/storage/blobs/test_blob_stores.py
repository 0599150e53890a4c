"""Both blob stores behind one interface: filesystem and a real S3 server (Ceph RGW)."""

from __future__ import annotations

import io
import os
import re
import uuid
from pathlib import Path

import pytest

from storage.blobs import from_settings, fs
from storage.blobs.fs import FileBlobStore
from storage.blobs.protocol import BlobStore, new_key, new_keys, object_key
from storage.settings import Settings
from tests.kit.backends import s3_storage_url
from tests.kit.inspect import blob_keys


@pytest.fixture(params=["fs", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "fs":
        return from_settings(Settings(data_dir=tmp_path))
    s3 = request.getfixturevalue("s3_settings")
    return from_settings(
        Settings(
            data_dir=tmp_path,
            storage_url=s3_storage_url(s3),
            s3_access_key=s3["S3_ACCESS_KEY"],
            s3_secret_key=s3["S3_SECRET_KEY"],
        )
    )


def test_keys_are_server_made_and_fanned_out() -> None:
    u = uuid.UUID("0123456789abcdef0123456789abcdef")
    assert object_key(u) == "01/23/0123456789abcdef0123456789abcdef.dcm"
    assert new_key() != new_key()


def test_keys_made_together_share_a_folder_and_nothing_else() -> None:
    """A batch of reserved keys makes one new folder on the filesystem store, not one per key."""
    keys = new_keys(16)
    assert len(set(keys)) == 16
    folders = {key.rsplit("/", 1)[0] for key in keys}
    assert len(folders) == 1
    (folder,) = folders
    assert all(re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{32}\.dcm", key) for key in keys)
    assert all(key.rsplit("/", 1)[1].startswith(folder.replace("/", "")) for key in keys)
    assert all(uuid.UUID(key.rsplit("/", 1)[1][:32]).version == 4 for key in keys)


def test_put_read_delete(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    key = new_key()
    assert not store.exists(key)
    assert store.put(key, io.BytesIO(data), len(data)).size == len(data)
    assert store.exists(key)
    with store.open(key) as blob:
        assert blob.read() == data
    assert store.read_range(key, 1000, 5000) == data[1000:6000]
    assert b"".join(store.iter_chunks(key, 65536)) == data
    store.prefetch(key)  # a read-ahead hint: changes nothing that is read
    store.prefetch(new_key())  # nor fails for a key that is not there
    assert store.read_range(key, 0, 10) == data[:10]
    src = tmp_path / "src.bin"
    src.write_bytes(data[::-1])
    other = new_key()
    store.put_file(other, src)
    with store.open(other) as blob:
        assert blob.read() == data[::-1]
    store.delete(key)
    store.delete(key)  # idempotent
    assert not store.exists(key)
    store.check()


@pytest.mark.s3
def test_s3_large_object_goes_up_in_parts(tmp_path: Path, s3_settings: dict[str, str]) -> None:
    from storage.blobs import s3 as blob_s3

    store = from_settings(
        Settings(
            data_dir=tmp_path,
            storage_url=s3_storage_url(s3_settings),
            s3_access_key=s3_settings["S3_ACCESS_KEY"],
            s3_secret_key=s3_settings["S3_SECRET_KEY"],
        )
    )
    size = blob_s3.PART_SIZE * 2 + 12345  # a multi-frame US cine or a big CR is this large
    path = tmp_path / "big.bin"
    with open(path, "wb") as fh:
        fh.write(os.urandom(size))
    key = new_key()
    store.put_file(key, path)
    assert store.exists(key)
    tail = store.read_range(key, size - 1000, 1000)
    assert tail == path.read_bytes()[-1000:]
    stat = store.client.stat_object(store.bucket, key)  # type: ignore[attr-defined]
    assert stat.size == size


def test_failed_fs_write_leaves_no_temp_file(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "objects")

    class Boom(io.RawIOBase):
        def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
            raise OSError("disk pulled")

    with pytest.raises(OSError):
        store.put(new_key(), Boom(), 10)  # type: ignore[arg-type]
    assert not any(p.is_file() for p in (tmp_path / "objects").rglob("*"))


def test_fs_store_refuses_keys_that_escape_its_folder(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "objects")
    with pytest.raises(ValueError):
        store.open("../index.db")


def test_blob_keys_helper_sees_fs_objects(tmp_path: Path) -> None:
    class A:  # the helper only needs .blobs
        blobs = FileBlobStore(tmp_path)

    A.blobs.put("ab/cd/x.dcm", io.BytesIO(b"1"), 1)
    assert blob_keys(A) == {"ab/cd/x.dcm"}  # type: ignore[arg-type]


def test_deleting_a_key_removes_what_a_killed_writer_of_it_left(tmp_path: Path) -> None:
    """kill -9 between writing a blob's temporary file and renaming it leaves `.<name>.<x>.tmp`
    beside where the object would be; start-up recovery deletes the pending key, and must take
    that file too (found by tests/e2e/test_crash_recovery.py when the kill landed there)."""
    store = FileBlobStore(tmp_path / "objects")
    key = new_key()
    other = new_key()
    store.put(other, io.BytesIO(b"kept"), 4)
    final = tmp_path / "objects" / key
    final.parent.mkdir(parents=True, exist_ok=True)
    (final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp").write_bytes(b"half a blob")
    store.delete(key)
    root = tmp_path / "objects"
    assert {str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files} == {other}


def test_metadata_rides_with_the_object_and_keys_list_the_whole_store(store: BlobStore) -> None:
    meta = {"org": "hosp-a", "sender": "CT1", "channel": "dimse"}
    store.put("ab/cd/with.dcm", io.BytesIO(b"DICM"), 4, meta)
    store.put("ab/ce/without.dcm", io.BytesIO(b"DICM"), 4)
    assert store.meta("ab/cd/with.dcm") == meta
    assert store.meta("ab/ce/without.dcm") == {}
    assert {"ab/cd/with.dcm", "ab/ce/without.dcm"} <= set(store.keys())


def test_a_filesystem_without_extended_attributes_stores_the_object_all_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import errno

    def unsupported(*_args: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", unsupported)  # as on a filesystem that keeps none
    monkeypatch.setattr(fs, "_WARNED", False)
    store = FileBlobStore(tmp_path / "objects")
    store.put("ab/cd/x.dcm", io.BytesIO(b"DICM"), 4, {"org": "hosp-a"})
    store.put("ab/cd/y.dcm", io.BytesIO(b"DICM"), 4, {"org": "hosp-a"})
    assert store.open("ab/cd/x.dcm").read() == b"DICM" and store.meta("ab/cd/x.dcm") == {}
    assert [r.getMessage() for r in caplog.records].count("blobs.no_xattrs") == 1  # said once per process


def test_a_staged_file_is_moved_into_place_with_its_metadata_or_copied_where_it_cannot_be(
    store: BlobStore, tmp_path: Path
) -> None:
    """`stage` + `put_staged` (a received data set, `storage.ingest.pipeline`): on the filesystem
    store the caller's file becomes the object (renamed, not copied) with its metadata; a store
    that cannot take it (S3) says so, and `put_file` stores it as before."""
    received = tmp_path / "received.dcm"
    received.write_bytes(b"DICM" * 1000)
    meta = {"org": "spital-a", "channel": "dimse"}
    staging = store.stage(received, meta)
    key = new_key()
    if isinstance(store, FileBlobStore):
        assert staging is not None
        placed = store.put_staged(key, staging)
        info = placed.info
        assert placed.durable.result(timeout=10) is None  # the folder's fsync
        assert not received.exists()  # moved, not copied
    else:
        assert staging is None
        info = store.put_file(key, received, meta)
    assert info.size == 4000
    with store.open(key) as blob:
        assert blob.read() == b"DICM" * 1000
    assert store.meta(key) == meta


def test_a_file_on_another_filesystem_is_not_staged(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.fail("this test needs /dev/shm as a filesystem of its own (Linux's tmpfs)")
    store = FileBlobStore(tmp_path / "objects")
    elsewhere = shm / f"pacs-test-{new_key().replace('/', '-')}"
    elsewhere.write_bytes(b"x")
    try:
        assert store.stage(elsewhere) is None
    finally:
        elsewhere.unlink()


@pytest.mark.parametrize("how", ["put", "put_staged"])
def test_a_name_in_new_folders_is_made_durable_in_every_folder_it_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The fan-out folders of a fresh store are made on demand: each new folder's name is fsynced
    in its parent, besides the object's name in its folder, before the write counts as durable;
    a second object in the same folder fsyncs that folder only."""
    store = FileBlobStore(tmp_path / "blobs")
    synced: list[Path] = []
    real = fs._fsync
    monkeypatch.setattr(fs, "_fsync", lambda path, folder=False: (synced.append(path) if folder else None, real(path)))
    root = store.root
    for key in ("ab/cd/one.dcm", "ab/cd/two.dcm"):
        if how == "put":
            store.put(key, io.BytesIO(b"x"), 1)
        else:
            received = tmp_path / "received.dcm"
            received.write_bytes(b"x")
            staging = store.stage(received)
            assert staging is not None
            store.put_staged(key, staging).durable.result()
    assert synced == [root / "ab/cd", root / "ab", root, root / "ab/cd"]
