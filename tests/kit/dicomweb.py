"""The gateway served by uvicorn on an ephemeral port, and the HTTP clients that ask it.

`serve_gateway` runs the real app in a thread over an archive; `Gateway` hands out bearer
tokens of the kit's principals and dicomweb-client sessions; the helpers read raw answers
(problem details, multipart bodies) where a client library would hide what is checked.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import uvicorn
from dicomweb_client import DICOMwebClient

from gateway.app import create_app
from storage.access.principal import Principal
from storage.access.tokens import issue
from storage.archive import Archive
from storage.settings import Settings
from tests.kit import dicom_factory as f
from tests.kit.principals import CLINICIAN_A
from tests.kit.seed import seed, seed_orgs


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

    def token_of(self, principal: Principal = CLINICIAN_A, ttl: int = 600) -> str:
        """A token for one of `tests.kit.principals`."""
        return issue(self.settings, sub=principal.sub, org=principal.org, roles=list(principal.roles), ttl_seconds=ttl)

    def headers(self, **kw: object) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(**kw)}"}  # type: ignore[arg-type]

    def client(self, **kw: object) -> DICOMwebClient:
        """A dicomweb-client session authenticated as a clinician of hosp-a (or as asked)."""
        return DICOMwebClient(url=self.dicomweb, headers=self.headers(**kw))


def serve_gateway(settings: Settings, archive: Archive) -> Iterator[Gateway]:
    """uvicorn in a thread on an ephemeral port, with the kit's organizations registered."""
    seed_orgs(archive)
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


def instance_url(gw: Gateway, data: bytes, suffix: str = "") -> str:
    """The WADO-RS URL of the instance `data` (Part-10 bytes)."""
    st, se, sop = f.uids_of(data)
    return f"{gw.dicomweb}/studies/{st}/series/{se}/instances/{sop}{suffix}"


def get(gw: Gateway, path: str, accept: str | None = None, **headers: str) -> httpx.Response:
    """GET a DICOMweb path (or a whole URL) as a clinician of hosp-a."""
    h = gw.headers() | headers
    if accept is not None:
        h["Accept"] = accept
    return httpx.get(path if path.startswith("http") else gw.dicomweb + path, headers=h, timeout=30)


def parts(r: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related body into (headers, body) pairs."""
    boundary = r.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    out = []
    for chunk in r.content.split(f"--{boundary}".encode())[1:-1]:
        head, _, body = chunk[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        out.append(({k.lower(): v for k, v in headers.items()}, body[:-2]))
    return out


def assert_problem(r: httpx.Response, status: int) -> None:
    """`r` is an RFC 9457 problem with `status` and a detail saying what was wrong."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["detail"]


def store(gw: Gateway, data: bytes) -> bytes:
    """Store Part-10 bytes as hosp-a's CT through the ingest pipeline; the same bytes, to compare."""
    seed(gw.archive, data)
    return data
