"""The SCP running in-process on an ephemeral port, over each backend pair; dcmtk receivers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.server import RunningScp, start
from storage.archive import Archive
from storage.settings import Settings
from tests.kit.backends import BACKENDS, make_settings, migrated_archive
from tests.kit.dimse import Receivers
from tests.kit.seed import seed_orgs


@pytest.fixture()
def scp(settings: Settings, archive: Archive) -> Iterator[RunningScp]:
    """The SCP over an archive with the kit's organizations (CT1 and STORESCU are hosp-a's)."""
    yield from _serving(settings, archive)


def _serving(settings: Settings, archive: Archive) -> Iterator[RunningScp]:
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


#: the bounds `limited_scp` runs with: small enough to reach in a test
LIMITS = {
    "max_associations": 6,
    "dicom_max_per_address": 3,
    "dicom_max_per_ae": 2,
    "dicom_acse_timeout": 1.0,
    "dicom_idle_timeout": 2.0,
    "dicom_max_object_size": 64 * 1024,
    "max_pdu": 16 * 1024,
}


@pytest.fixture(params=BACKENDS)
def limited_scp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningScp]:
    """The SCP with `LIMITS`, over each backend pair, with the kit's organizations."""
    settings = make_settings(request, tmp_path, request.param, **LIMITS)
    with migrated_archive(settings) as archive:
        yield from _serving(settings, archive)
