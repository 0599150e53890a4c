"""The SCP running in-process on an ephemeral port, over each backend pair; dcmtk receivers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.server import RunningScp, start
from storage.archive import Archive
from storage.settings import Settings
from tests.kit.dimse import Receivers
from tests.kit.seed import seed_orgs


@pytest.fixture()
def scp(settings: Settings, archive: Archive) -> Iterator[RunningScp]:
    """The SCP over an archive with the kit's organizations (CT1 and STORESCU are hosp-a's)."""
    seed_orgs(archive)
    running = start(settings, archive, port=0)
    try:
        yield running
    finally:
        running.shutdown()


@pytest.fixture()
def storescp(tmp_path: Path) -> Iterator[Receivers]:
    """Start dcmtk storescp receivers (`storescp("+xa")`); all stopped after the test."""
    receivers = Receivers(tmp_path)
    try:
        yield receivers
    finally:
        receivers.stop()
