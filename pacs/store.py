"""C-STORE SCP (PS3.4 Annex B): hand the received file to the ingest pipeline, answer its status.

pynetdicom lands the data set in a temporary Part-10 file (`STORE_RECV_CHUNKED_DATASET`),
so the bytes are ingested exactly as the modality encoded them, never decoded and re-encoded.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from pacs.association import state_of
from pacs.policy import context_for
from pacs.status import SUCCESS, failure
from storage.archive import Archive
from storage.dicom.parse import Source
from storage.errors import StorageError
from storage.ingest.pipeline import Outcome, ingest


def handle(event: Event, archive: Archive) -> int | Dataset:
    ctx = context_for(event.assoc, archive)
    stats = state_of(event.assoc).stats
    try:
        result = ingest(Source(path=Path(event.dataset_path)), ctx, archive=archive)
    except StorageError as exc:
        stats.rejected += 1
        return failure(exc)
    if result.outcome is Outcome.STORED:
        stats.stored += 1
        stats.bytes += result.size
    else:
        stats.already_present += 1
    return SUCCESS
