"""A real OpenID Provider for the gateway's PACS_OIDC_ISSUER path: panva's oidc-provider.

`tests/oidc/provider.mjs` runs it under Node.js (its node_modules installed with `npm ci` from
the committed lock on first use, as the OHIF test fetches its viewer). `OidcProvider` starts it
on a port of its own (issuer `http://127.0.0.1:<port>`), restarts it with other keys on the same
port (key rotation), records the HTTP requests it answered, and asks its token endpoint for
access tokens as a confidential client: client_credentials, a resource indicator (RFC 8707),
client_secret_basic. The tokens are JWTs with the gateway's claims `org` and `roles`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.kit.net import free_port
from tests.kit.tools import missing

OIDC_DIR = Path(__file__).resolve().parents[1] / "oidc"
#: resource indicators the provider knows, and the audience (`aud`) of their tokens
PACS, OTHER_API = "urn:pacs", "urn:other-api"
AUDIENCES = {PACS: "pacs", OTHER_API: "other-api"}
#: the provider's clients and the claims their tokens carry (as in provider.mjs)
CLIENTS: dict[str, dict[str, Any]] = {
    "clin-a": {"org": "hosp-a", "roles": ["clinician"]},
    "admin": {"roles": ["admin"]},
}
#: oidc-provider 9 runs on Node.js 20.19 and later (it needs require(esm) and URL.parse)
NODE_MIN = (20, 19)


@functools.cache
def node() -> str:
    """Node.js with the provider's node_modules installed; a skip (a failure in CI) without them."""
    node = shutil.which("node")
    if node is None:
        missing("node and npm (to run the OpenID Provider oidc-provider)", "nodejs npm")
        raise AssertionError("unreachable")  # missing() skips or fails
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if tuple(int(p) for p in version.lstrip("v").split(".")[:2]) < NODE_MIN:
        missing(f"Node.js {NODE_MIN[0]}.{NODE_MIN[1]} or later for oidc-provider (found {version})", "nodejs")
    wanted = json.loads((OIDC_DIR / "package.json").read_text())["dependencies"]["oidc-provider"]
    installed = OIDC_DIR / "node_modules" / "oidc-provider" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        npm = shutil.which("npm")
        if npm is None:
            missing("npm (to install oidc-provider into tests/oidc/node_modules)", "npm")
            raise AssertionError("unreachable")
        r = subprocess.run(
            [npm, "ci", "--prefix", str(OIDC_DIR), "--no-audit", "--no-fund"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if r.returncode != 0:
            missing(f"oidc-provider from the npm registry (npm ci: {r.stderr[-2000:]})", "npm")
    return node


def signing_key(kid: str) -> dict[str, Any]:
    """A new RSA private key as a JWK (RS256, `use: sig`) named `kid`, for the provider's key file."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
    return jwk | {"kid": kid, "use": "sig", "alg": "RS256"}


def write_keys(path: Path, *keys: dict[str, Any]) -> Path:
    """The provider's key file: the first key signs, all are published in its JWKS."""
    path.write_text(json.dumps({"keys": list(keys)}))
    return path


class OidcProvider:
    """One oidc-provider process on 127.0.0.1:`port`, with the keys of `keys_file`."""

    def __init__(self, keys_file: Path, *, port: int | None = None, token_ttl: int = 600) -> None:
        self.keys_file = keys_file
        self.port = port or free_port()
        self.token_ttl = token_ttl
        #: every request answered, in order, by all the runs of this provider: {"method", "path", "status"}
        self.requests: list[dict[str, Any]] = []
        self._process: subprocess.Popen[str] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with tempfile.TemporaryFile("w+") as errors:  # the child's standard error, told if it fails
            self._process = subprocess.Popen(
                [node(), "provider.mjs", str(self.port), str(self.keys_file)],
                cwd=OIDC_DIR,
                env=os.environ | {"OIDC_ACCESS_TOKEN_TTL": str(self.token_ttl)},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
            listening = threading.Event()
            threading.Thread(target=self._read, args=(self._process, listening), daemon=True).start()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self._process.poll() is None:
                if listening.wait(0.05) and self._discovery_answers():
                    return
            self.stop()
            errors.seek(0)
            raise RuntimeError(f"oidc-provider did not start on port {self.port}: {errors.read()[-3000:]}")

    def _read(self, process: subprocess.Popen[str], listening: threading.Event) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip() == "listening":
                listening.set()
            elif line.startswith("{"):
                self.requests.append(json.loads(line))

    def _discovery_answers(self) -> bool:
        try:
            return httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self, keys_file: Path | None = None) -> None:
        """Stop and start again on the same port (so the same issuer), with `keys_file` if given."""
        self.stop()
        self.keys_file = keys_file or self.keys_file
        self.start()

    def token(self, client: str = "clin-a", resource: str = PACS) -> str:
        """An access token (a JWT) from the token endpoint: client_credentials for `resource`."""
        r = httpx.post(
            f"{self.issuer}/token",
            data={"grant_type": "client_credentials", "resource": resource},
            auth=(client, f"{client}-secret"),  # client_secret_basic
            timeout=10,
        )
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["token_type"] == "Bearer"
        return str(answer["access_token"])

    def paths_since(self, mark: int, *, at_least: int = 0, timeout: float = 5.0) -> list[str]:
        """`METHOD path` of the requests answered since `len(self.requests)` was `mark`, once there
        are `at_least` of them or `timeout` has passed (its output is read by a thread)."""
        deadline = time.monotonic() + timeout
        while len(self.requests) - mark < at_least and time.monotonic() < deadline:
            time.sleep(0.02)
        return [f"{r['method']} {r['path']}" for r in self.requests[mark:]]


@contextmanager
def oidc_provider(keys_file: Path, **kw: Any) -> Iterator[OidcProvider]:
    """A started provider (see `OidcProvider`), stopped after."""
    provider = OidcProvider(keys_file, **kw)
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()
