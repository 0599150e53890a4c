"""The gateway served by uvicorn on an ephemeral port, over each backend pair, with tokens."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from dicomweb_client import DICOMwebClient

from gateway.app import create_app
from storage.access.orgs import AeSpec, add_org
from storage.access.tokens import issue
from storage.archive import Archive
from storage.settings import Settings


@dataclass
class Gateway:
    url: str
    archive: Archive
    settings: Settings

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicomweb"

    def token(self, org: str | None = "hosp-a", roles: tuple[str, ...] = ("clinician",), ttl: int = 600) -> str:
        return issue(self.settings, sub=f"{roles[0]}@{org}", org=org, roles=list(roles), ttl_seconds=ttl)

    def headers(self, **kw: object) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(**kw)}"}  # type: ignore[arg-type]

    def client(self, **kw: object) -> DICOMwebClient:
        """A dicomweb-client session authenticated as a clinician of hosp-a (or as asked)."""
        return DICOMwebClient(url=self.dicomweb, headers=self.headers(**kw))


@pytest.fixture()
def gateway(settings: Settings, archive: Archive) -> Iterator[Gateway]:
    yield from serve_gateway(settings, archive)


def serve_gateway(settings: Settings, archive: Archive) -> Iterator[Gateway]:
    """uvicorn in a thread on an ephemeral port, with two organizations registered."""
    with archive.db.write() as s:
        add_org(s, "hosp-a", "Spitalul Județean A", [AeSpec("CT1")])
        add_org(s, "clinic-b", "Clinica B", [AeSpec("US-B")])
    app = create_app(settings, archive)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield Gateway(url=f"http://127.0.0.1:{port}", archive=archive, settings=settings)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


StoreFn = Callable[..., object]
