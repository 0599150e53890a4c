"""The SCP running in-process on an ephemeral port, over each backend pair."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pacs.server import RunningScp, start
from storage.access.orgs import AeSpec, add_org
from storage.archive import Archive
from storage.settings import Settings


@pytest.fixture()
def scp(settings: Settings, archive: Archive) -> Iterator[RunningScp]:
    with archive.db.write() as s:
        add_org(s, "hosp-a", "Spitalul Județean A", [AeSpec("CT1"), AeSpec("STORESCU")])
    running = start(settings, archive, port=0)
    try:
        yield running
    finally:
        running.shutdown()
