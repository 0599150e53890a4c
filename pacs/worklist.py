"""Modality Worklist SCP (PS3.4 K.4, K.6.1): C-FIND on the scheduled procedure steps of storage.workflow.worklist.

pacs.find routes Modality Worklist Information Find requests here. A registered AE gets its
organization's SCHEDULED steps; an unregistered one is refused (0x0124, DESIGN.md "DICOM
surface"). Every answer is built before the first is sent, so no database connection stays
open while a slow modality reads its pending responses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from pacs.policy import audit, context_for, keys_named, limit
from pacs.status import SUCCESS, failure
from pacs.wire.pacing import PACE_EVERY, keep_pace
from storage.access.policy import require_read
from storage.archive import Archive
from storage.errors import StorageError
from storage.logs import event as log_event
from storage.query.matching import InvalidQuery
from storage.workflow.mwl import find_worklist

log = logging.getLogger(__name__)
PENDING = 0xFF00
CANCEL = 0xFE00


def find(event: Event, archive: Archive) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """Answer one worklist query.

    Yields
    ------
    (status, identifier)
        0xFF00 with each matching worklist item; 0xFE00 once the modality sends C-CANCEL;
        or a failure status with its Error Comment (0x0124 unregistered AE, 0xA900 bad identifier).
        pynetdicom sends the final 0x0000 itself.
    """
    started = time.perf_counter()
    ctx = context_for(event.assoc, archive)
    matches, status, detail = 0, SUCCESS, None
    try:
        require_read(ctx, "C-FIND")
        limit(ctx, archive, "C-FIND")
        identifier = _identifier(event)
        with archive.db.read() as session:
            answers = find_worklist(identifier, ctx, session=session)
        patient, _ = keys_named(identifier)
        audit(ctx, "C-FIND", patient=patient, detail=f"worklist {len(answers)} items")
        matches = len(answers)
        for sent, answer in enumerate(answers):
            if sent % PACE_EVERY == 0:
                keep_pace(event.assoc)
            if event.is_cancelled:
                status = CANCEL
                yield CANCEL, None
                return
            yield PENDING, answer
    except StorageError as exc:
        status, detail = exc.status, exc.detail  # whole: the Error Comment may be cut to 64 characters
        yield failure(exc), None
    finally:
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        log_event(
            log,
            "dimse.worklist",
            calling_ae=ctx.principal.sub,
            matches=matches,
            status=f"0x{status:04X}",
            detail=detail,
            duration_ms=duration_ms,
        )


def _identifier(event: Event) -> Dataset:
    """The request identifier, parsed to the last element so a malformed one is a 0xA900 here."""
    try:
        identifier = event.identifier
        for _ in identifier.iterall():
            pass
    except Exception as exc:  # pydicom raises many types on malformed bytes; all mean a bad identifier
        raise InvalidQuery(f"the identifier does not decode ({type(exc).__name__})") from None
    return identifier
