"""C-STORE SCP (PS3.4 Annex B): hand the received file to the ingest pipeline, answer its status.

pynetdicom lands the data set in a temporary Part-10 file (`STORE_RECV_CHUNKED_DATASET`),
so the bytes are ingested exactly as the modality encoded them, never decoded and re-encoded.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from pacs.policy import principal_for
from pacs.stats import stats_for
from pacs.status import SUCCESS, failure
from storage.archive import Archive
from storage.dicom.parse import Source
from storage.errors import StorageError
from storage.ingest.pipeline import Origin, Outcome, ingest


def handle(event: Event, archive: Archive) -> int | Dataset:
    assoc = event.assoc
    principal = principal_for(assoc, archive)
    origin = Origin.dimse(principal.sub, str(assoc.acceptor.ae_title).strip(), principal.address)
    stats = stats_for(assoc)
    try:
        result = ingest(Source(path=Path(event.dataset_path)), origin, principal, archive=archive)
    except StorageError as exc:
        stats.rejected += 1
        return failure(exc)
    if result.outcome is Outcome.STORED:
        stats.stored += 1
        stats.bytes += result.size
    else:
        stats.already_present += 1
    return SUCCESS
