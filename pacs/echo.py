"""C-ECHO SCP (PS3.4 Annex A): anyone may check that the archive answers."""

from __future__ import annotations

from pynetdicom.events import Event

from pacs.status import SUCCESS


def handle(event: Event) -> int:
    del event
    return SUCCESS
