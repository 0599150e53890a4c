"""Modality Worklist SCP (PS3.4 K.4): C-FIND on the scheduled procedure steps of storage.worklist.

STUB: to be written ([3/7]); pacs.find routes Modality Worklist Information Find here.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from storage.archive import Archive


def find(event: Event, archive: Archive) -> Iterator[tuple[int, Dataset | None]]:
    del event, archive
    yield 0xC000, None
