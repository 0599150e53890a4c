"""The blob store: where the bytes of every instance live, as received.

A small interface with two implementations (`storage.blobs.fs`, `storage.blobs.s3`), chosen
by the scheme of `PACS_STORAGE_URL` (`storage.blobs.from_settings`). Keys are made by the
server (`object_key`), never from UIDs or file names, so a sender cannot steer where data
lands and two objects never collide.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int


#: what an object carries besides its bytes: what the DICOM cannot tell of it (its owning
#: organization, its sender, the channel, when it was received), so that `pacs reindex` can
#: rebuild the index, visibility included, from the store alone. Names are lower-case ASCII
#: words; values short printable ASCII (`storage.ingest.reindex` quotes what is not).
Meta = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Staging:
    """A file on its way into the store before its key is known (`BlobStore.stage`): `synced`
    completes once its bytes are durable, while the caller parses and reserves the key."""

    path: Path
    size: int
    meta: Meta | None
    synced: Future[None]


@dataclass(frozen=True, slots=True)
class Placed:
    """A staged file in place under its key (`BlobStore.put_staged`): readable now, `durable` once
    its name survives a power cut too (the folder's fsync), which the caller may await while it
    commits the index row, the pending row keeping the key until then."""

    info: BlobInfo
    durable: Future[None]


class BlobStore(Protocol):
    """What the archive needs from an object store.

    `put_file` and `put` return only once the object is durable: that is what lets ingest
    acknowledge an instance right after the index commit.
    """

    def put_file(self, key: str, path: Path, meta: Meta | None = None) -> BlobInfo: ...

    def put(self, key: str, data: BinaryIO, size: int, meta: Meta | None = None) -> BlobInfo: ...

    def stage(self, path: Path, meta: Meta | None = None) -> Staging | None:
        """Start making the caller's disposable file at `path` durable where it lies, before its
        key is known, so that the wait overlaps the parse and the key's reservation; None when
        this store cannot take the file as it is (a remote store, another filesystem): the caller
        then uses `put_file`. The file becomes the store's only in `put_staged`."""
        ...

    def stages(self, folder: Path) -> bool:
        """Whether `stage` takes a file in `folder` as it is (this store, on that filesystem):
        worth copying an operator's file there first (`pacs import`), rather than copying it
        into the store with `put_file` after the parse."""
        ...

    def put_staged(self, key: str, staging: Staging) -> Placed:
        """Store a staged file under `key` (moved, not copied): its bytes durable and readable on
        return, its name durable once `Placed.durable` completes."""
        ...

    def open(self, key: str) -> BinaryIO: ...

    def read_range(self, key: str, start: int, length: int) -> bytes: ...

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]: ...

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def keys(self) -> Iterator[str]:
        """Every object's key (`pacs reindex`): the whole store, once."""
        ...

    def meta(self, key: str) -> dict[str, str]:
        """What `put` was given as `meta` for the object (empty for an object stored without)."""
        ...

    def prefetch(self, key: str) -> None:
        """Hint that `key` will be read soon, so a cold read overlaps the sending of the one before.

        Best effort: a store that cannot read ahead, or a key that is gone, is ignored.
        """

    def local_path(self, key: str) -> Path | None:
        """The object as a file on this host, or None for a remote store.

        Lets a sender hand the stored file to the network layer as it is (C-MOVE/C-GET
        sub-operations) instead of copying it through memory.
        """
        ...

    def check(self) -> None:
        """Raise if the store cannot be reached (readiness probe)."""
        ...


def new_key() -> str:
    """A fresh server-made object key."""
    return object_key(uuid.uuid4())


def new_keys(count: int) -> list[str]:
    """`count` fresh keys in one folder, for keys used one after another (a batch of reserved
    keys, `storage.index.reserved`).

    On the filesystem store a new folder costs a mkdir and an fsync of its parent folder. Random
    keys spread over 65,536 folders, so until an archive holds a few hundred thousand objects
    almost every instance made its own folder. Keys of a batch in one folder make it once per
    batch. The folder is as random as a single key's, so folders still fill evenly, and a key's
    folder is still the first four hex digits of its name.
    """
    folder = uuid.uuid4().hex[:4]
    return [object_key(uuid.UUID(folder + uuid.uuid4().hex[4:])) for _ in range(count)]


def object_key(u: uuid.UUID) -> str:
    """Fan the key out over two directory levels so no folder grows past ~65k entries."""
    h = u.hex
    return f"{h[0:2]}/{h[2:4]}/{h}.dcm"
