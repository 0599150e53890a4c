"""A real HTTP receiver for FHIR Subscription notifications (rest-hook), run by a test.

It keeps every POST it gets (path, headers, body) and answers each with the next status of
its path's script, 200 once the script is spent, so a test can make the archive's sends to one
path fail and then succeed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int
    #: when it came (time.monotonic)
    at: float


@dataclass
class Receiver:
    """What the listener got, and what it answers next."""

    url: str
    received: list[Received] = field(default_factory=list)
    scripts: dict[str, list[int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, *statuses: int) -> None:
        """Answer the next POSTs to `path` with these statuses, in order (then 200)."""
        with self._lock:
            self.scripts[path] = list(statuses)

    def got(self, path: str = "", status: int | None = None) -> list[Received]:
        """The POSTs to `path` (any, if empty) answered `status` (any, if None), in order."""
        with self._lock:
            return [
                r for r in self.received if (not path or r.path == path) and (status is None or r.answered == status)
            ]

    def wait_for(self, count: int, path: str = "", status: int | None = 200, timeout: float = 30.0) -> list[Received]:
        """At least `count` such POSTs, waited for up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.got(path, status)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{len(self.got(path, status))} of {count} notifications to {path!r} after {timeout}s")

    def _next(self, path: str) -> int:
        with self._lock:
            script = self.scripts.get(path)
            return script.pop(0) if script else 200

    def _keep(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)


@contextmanager
def receiver() -> Iterator[Receiver]:
    """A listener on an ephemeral local port for the duration of the block."""
    state: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status = state[0]._next(self.path)
            state[0]._keep(
                Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, status, time.monotonic())
            )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.append(Receiver(f"http://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state[0]
    finally:
        server.shutdown()
        server.server_close()
