"""C-STORE SCP (PS3.4 Annex B): hand the received file to the ingest pipeline, answer its status.

The data set arrives in a temporary Part-10 file, written by `pacs.wire.direct_store` (a plain
C-STORE-RQ on a plain-TCP association) or by pynetdicom (`STORE_RECV_CHUNKED_DATASET`, the
rest), so the bytes are ingested exactly as the modality encoded them, never decoded and
re-encoded. Both paths call `receive`.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.events import Event

from pacs.association import state_of
from pacs.policy import audit, context_for
from pacs.status import SUCCESS, failure
from storage.archive import Archive
from storage.dicom.parse import Source
from storage.errors import NotAuthorized, OutOfResources, PatientMismatch, StorageError
from storage.ingest.pipeline import Outcome, ingest
from storage.logs import event as log_event
from storage.outages import outage

log = logging.getLogger(__name__)


def handle(event: Event, archive: Archive) -> int | Dataset:
    """EVT_C_STORE: pynetdicom's path, for what `pacs.wire.direct_store` leaves to it."""
    return receive(event.assoc, Path(event.dataset_path), archive)


def receiver(archive: Archive) -> Callable[[Association, Path], int | Dataset]:
    """The store `pacs.wire.direct_store` calls for each instance it receives."""
    return functools.partial(receive, archive=archive)


def receive(assoc: Association, path: Path, archive: Archive) -> int | Dataset:
    """Ingest the data set received in `path` (a Part-10 file the caller deletes afterwards);
    the status to answer, a failure with its Error Comment."""
    ctx = context_for(assoc, archive)
    stats = state_of(assoc).stats
    try:
        result = ingest(Source(path=path, disposable=True), ctx, archive=archive)
    except (PatientMismatch, NotAuthorized) as exc:  # refusals a data-protection officer asks about
        stats.rejected += 1
        try:
            ctx.audit.record(ctx.event("C-STORE", "refused", detail=exc.detail[:500]))
        except StorageError as audit_failure:
            return failure(audit_failure)
        return failure(exc)
    except StorageError as exc:
        stats.rejected += 1
        return failure(exc)
    except Exception as exc:  # noqa: BLE001 - this edge's last-resort guard (STYLE 17), see below
        # pynetdicom's own guard would answer 0xC211 without a comment and keep its temporary
        # file of the data set: it deletes that file only when the handler returns.
        stats.rejected += 1
        backend = outage(exc)
        if backend is not None:  # a restart or an outage: the modality retries later
            log_event(
                log, "dimse.store.unavailable", level=logging.WARNING, calling_ae=ctx.principal.sub, backend=backend
            )
            return failure(OutOfResources(f"the {backend} is unavailable; send again later"))
        # the type and where it was raised: its message may quote a value of the data set
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f"{Path(where.filename).name}:{where.lineno}" if where else None
        log_event(
            log,
            "dimse.store.failed",
            level=logging.ERROR,
            calling_ae=ctx.principal.sub,
            error=type(exc).__name__,
            at=at,
        )
        return failure(OutOfResources(f"could not store the instance: {type(exc).__name__}"))
    state = state_of(assoc)
    if result.study_uid not in state.audited_studies:  # one record per study and association
        try:
            audit(ctx, "C-STORE", study=result.study_uid, detail=f"SOP {result.sop_uid}")
        except StorageError as exc:
            return failure(exc)
        state.audited_studies.add(result.study_uid)
    if result.outcome is Outcome.STORED:
        stats.stored += 1
        stats.bytes += result.size
    else:
        stats.already_present += 1
    return SUCCESS
