"""The storage services of one process: the index database, the blob store and the audit
recorder, opened once and shared by every request and association of the process."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from storage.access.context import NO_AUDIT, AuditRecorder
from storage.access.limits import RateLimits
from storage.audit.trail import AuditTrail
from storage.blobs import from_settings
from storage.blobs.protocol import BlobStore
from storage.errors import OutOfResources
from storage.index.db import Database
from storage.index.reserved import Reserved
from storage.index.settled import Settled
from storage.logs import event
from storage.processes import owner_is_gone, process_owner
from storage.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["Archive", "owner_is_gone", "process_owner"]


@dataclass
class Archive:
    settings: Settings
    db: Database
    blobs: BlobStore
    owner: str = field(default_factory=process_owner)
    #: where every request context of this process records its accesses (NO_AUDIT: PACS_AUDIT=false)
    audit: AuditRecorder = NO_AUDIT
    #: request rates per caller, for both edges (PACS_HTTP_RATE_LIMIT, PACS_DICOM_RATE_LIMIT)
    rate_limits: RateLimits = field(default_factory=lambda: RateLimits.of(0, 0))
    #: pending rows of staged blobs to drop with the next index commit (`storage.index.settled`)
    settled: Settled = field(default_factory=Settled)
    #: object keys reserved ahead for ingest (`storage.index.reserved`)
    reserved: Reserved = field(default_factory=lambda: Reserved(max_age=300.0))

    @classmethod
    def open(cls, settings: Settings, *, pool_size: int = 16) -> Archive:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database.connect(settings.database_url, pool_size=pool_size)
        owner = process_owner()
        return cls(
            settings=settings,
            db=db,
            blobs=from_settings(settings),
            owner=owner,
            audit=AuditTrail(db, owner) if settings.audit else NO_AUDIT,
            rate_limits=RateLimits.of(settings.http_rate_limit, settings.dicom_rate_limit),
            reserved=Reserved(max_age=settings.recovery_grace_seconds / 2),
        )

    @classmethod
    def open_when_reachable(
        cls, settings: Settings, *, timeout: float, waiting: Callable[[str, str, float], None]
    ) -> Archive:
        """The archive, once its database and its object store answer: a process started with
        them (a host's boot, `docker compose up`, a pod beside a restarting database) waits,
        retrying after 0.5 s, doubling to 10 s, and says each time what it waits for
        (`waiting(component, reason, retry_in)`).

        Raises
        ------
        OutOfResources
            One of them still does not answer after `timeout` seconds.
        """
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        delay = 0.5
        while True:
            component = "database"
            try:
                db = Database.connect(settings.database_url, pool_size=1)
                try:
                    db.check()
                finally:
                    db.dispose()
                component = "object store"
                from_settings(settings).check()  # creates the bucket on a first start
                return cls.open(settings)
            except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the answer is to wait
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
                if time.monotonic() + delay > deadline:
                    raise OutOfResources(f"the {component} did not answer within {timeout:g} s ({reason})") from exc
                waiting(component, reason, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    @property
    def temp_dir(self) -> Path:
        """This process's folder for temporary files (received data sets, spooled STOW-RS parts,
        retrieval copies): under the data folder, so that what a killed process leaves is found
        and removed by the next start (`storage.ingest.recovery`), never in the system's /tmp."""
        folder = self.settings.run_dir / "tmp" / self.owner
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def close(self) -> None:
        try:  # the last instances' pending rows and the unused reserved keys': the next start finds none
            self.settled.flush(self.db)
            self.reserved.release(self.db)
        except Exception as exc:  # noqa: BLE001 - the database is away: start-up recovery settles them
            event(log, "archive.settle_deferred", level=logging.WARNING, error=type(exc).__name__)
        self.audit.close()
        self.db.dispose()
