"""The gateway served by uvicorn on an ephemeral port, over each backend pair, with tokens."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from storage.archive import Archive
from storage.settings import Settings
from tests.kit.dicomweb import Gateway, serve_gateway


@pytest.fixture()
def gateway(settings: Settings, archive: Archive) -> Iterator[Gateway]:
    yield from serve_gateway(settings, archive)
