"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION, then N-EVENT-REPORT.

STUB: to be written ([3/7]).
"""

from __future__ import annotations

from typing import Any

from pynetdicom.events import Event

from storage.archive import Archive


def handle(event: Event, archive: Archive) -> tuple[int, Any]:
    del event, archive
    return 0x0110, None
