"""The storage services of one process: the index database, the blob store and the audit
recorder, opened once and shared by every request and association of the process."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from storage.access.context import NO_AUDIT, AuditRecorder
from storage.blobs import from_settings
from storage.blobs.protocol import BlobStore
from storage.index.db import Database
from storage.settings import Settings


def process_owner() -> str:
    """Who holds a pending write: host and pid, so recovery knows a dead writer on this host."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_gone(owner: str) -> bool:
    """Whether the process named by a `process_owner` value has surely ended: it ran on this
    host and its pid is dead. Another host's process cannot be seen, so it is never gone here."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class Archive:
    settings: Settings
    db: Database
    blobs: BlobStore
    owner: str = field(default_factory=process_owner)
    #: where every request context of this process records its accesses ([6/10] fills it in)
    audit: AuditRecorder = NO_AUDIT

    @classmethod
    def open(cls, settings: Settings, *, pool_size: int = 16) -> Archive:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            settings=settings,
            db=Database.connect(settings.database_url, pool_size=pool_size),
            blobs=from_settings(settings),
        )

    @property
    def temp_dir(self) -> Path:
        """This process's folder for temporary files (received data sets, spooled STOW-RS parts,
        retrieval copies): under the data folder, so that what a killed process leaves is found
        and removed by the next start (`storage.ingest.recovery`), never in the system's /tmp."""
        folder = self.settings.run_dir / "tmp" / self.owner
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def close(self) -> None:
        self.db.dispose()
