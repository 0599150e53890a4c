"""C-MOVE SCP (PS3.4 C.4.2).

STUB: to be written ([3/7]).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pynetdicom.events import Event

from storage.archive import Archive


def handle(event: Event, archive: Archive) -> Iterator[Any]:
    del event, archive
    yield 0xC000, None
