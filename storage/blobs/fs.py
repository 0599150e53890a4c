"""Filesystem blob store: durable by temp file, fsync, atomic rename, fsync of the folder.

An object's metadata (`protocol.Meta`) lives in its file's extended attributes (`user.pacs.*`):
written to the temporary file before its fsync, it is as durable as the bytes and appears with
them in one rename, at no extra file or fsync. Backups must keep extended attributes
(`cp -a`, `rsync -X`, `tar --xattrs`), as the README says.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from storage.blobs.protocol import BlobInfo, Meta, Placed, Staging
from storage.logs import event

log = logging.getLogger(__name__)

#: the extended attributes an object's metadata is kept in
XATTR = "user.pacs."


#: the fsyncs of staged files (`FileBlobStore.stage`): they release the interpreter lock, so they
#: run while the caller parses; a few at once per process is what concurrent associations need
_SYNCER = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-fsync")


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._device = self.root.stat().st_dev

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid object key {key!r}")
        return self.root / key

    def _commit(self, tmp: Path, final: Path, made: list[Path]) -> None:
        """Make the already-written `tmp` durable under its final name.

        The rename is atomic, so a reader sees the whole object or none; fsync of the file
        before and of the folders after (`_folders_to_sync`) makes the name survive a power
        cut, not only a kill.
        """
        _fsync(tmp)
        os.replace(tmp, final)
        _fsync_folders(_folders_to_sync(final, made))

    def _make_folders(self, folder: Path) -> list[Path]:
        """Create `folder` and its missing parents under the root; those this call found missing
        (another writer may make one at the same time: it counts as made here too)."""
        missing = []
        while folder != self.root and not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for new in reversed(missing):
            new.mkdir(exist_ok=True)
        return missing

    def _tmp_for(self, final: Path) -> tuple[Path, list[Path]]:
        made = self._make_folders(final.parent)
        return final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp", made

    def put_file(self, key: str, path: Path, meta: Meta | None = None) -> BlobInfo:
        final = self._path(key)
        tmp, made = self._tmp_for(final)
        try:
            shutil.copyfile(path, tmp)  # sendfile/copy_file_range: no copy through Python
            _set_meta(tmp, meta)
            self._commit(tmp, final, made)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return BlobInfo(key=key, size=final.stat().st_size)

    def put(self, key: str, data: BinaryIO, size: int, meta: Meta | None = None) -> BlobInfo:  # noqa: ARG002 - S3 needs the size
        final = self._path(key)
        tmp, made = self._tmp_for(final)
        try:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(data, out, 1 << 20)
            _set_meta(tmp, meta)
            self._commit(tmp, final, made)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return BlobInfo(key=key, size=final.stat().st_size)

    def stage(self, path: Path, meta: Meta | None = None) -> Staging | None:
        """The received file stays where it is (on this filesystem: the archive's temporary
        folder) and is fsynced in the background; `put_staged` renames it into place. A process
        killed in between leaves it in its temporary folder, which start-up recovery empties."""
        try:
            info = path.stat()
        except OSError:
            return None
        if info.st_dev != self._device:
            return None  # another filesystem: a rename cannot take it
        _set_meta(path, meta)  # before the fsync, as `put_file` does: as durable as the bytes
        return Staging(path, info.st_size, meta, _SYNCER.submit(_fsync, path))

    def stages(self, folder: Path) -> bool:
        try:
            return folder.stat().st_dev == self._device
        except OSError:
            return False

    def put_staged(self, key: str, staging: Staging) -> Placed:
        staging.synced.result()
        final = self._path(key)
        made: list[Path] = []
        try:
            os.replace(staging.path, final)
        except FileNotFoundError:  # the first object of its folder (in a full archive, most folders exist)
            made = self._make_folders(final.parent)
            os.replace(staging.path, final)
        # while the caller commits its index row
        durable = _SYNCER.submit(_fsync_folders, _folders_to_sync(final, made))
        return Placed(BlobInfo(key=key, size=staging.size), durable)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def read_range(self, key: str, start: int, length: int) -> bytes:
        with open(self._path(key), "rb") as f:
            return os.pread(f.fileno(), length, start)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with open(self._path(key), "rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def delete(self, key: str) -> None:
        """Remove the object, and any temporary file a writer of it left (a process killed
        between writing and renaming it): recovery deletes by key, and must leave nothing."""
        final = self._path(key)
        final.unlink(missing_ok=True)
        for leftover in final.parent.glob(f".{final.name}.*.tmp"):
            leftover.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self) -> Iterator[str]:
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.startswith("."):  # a writer's temporary file is no object
                    yield str((Path(folder) / name).relative_to(self.root))

    def meta(self, key: str) -> dict[str, str]:
        path = self._path(key)
        found = {}
        for name in os.listxattr(path):
            if name.startswith(XATTR):
                found[name.removeprefix(XATTR)] = os.getxattr(path, name).decode("ascii", "replace")
        return found

    def prefetch(self, key: str) -> None:
        """Ask the kernel to read the file into the page cache in the background (WILLNEED)."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"blob folder {self.root} is not writable")


def _fsync(path: Path, *, folder: bool = False) -> None:
    """fsync a file, or a folder (so that a name created or renamed in it is durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _folders_to_sync(final: Path, made: list[Path]) -> list[Path]:
    """What to fsync so that `final`'s name survives a power cut: its folder, and the parent of
    each folder made for it (a folder's own fsync does not make its name in its parent durable)."""
    return [final.parent, *(folder.parent for folder in made)]


def _fsync_folders(folders: list[Path]) -> None:
    for folder in folders:
        _fsync(folder, folder=True)


def _set_meta(path: Path, meta: Meta | None) -> None:
    """Keep `meta` in the file's extended attributes; on a filesystem without them (some network
    or old in-memory ones) the object is stored all the same, without (said once per process:
    `pacs reindex` would then index its objects as unassigned)."""
    global _WARNED
    try:
        for name, value in (meta or {}).items():
            os.setxattr(path, XATTR + name, value.encode("ascii"))
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        if not _WARNED:
            _WARNED = True
            event(log, "blobs.no_xattrs", level=logging.WARNING, folder=str(path.parent.parent.parent))


#: whether this process said already that its filesystem keeps no extended attributes
_WARNED = False
