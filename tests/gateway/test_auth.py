"""Bearer tokens: 401 for a missing, malformed, wrongly signed or expired token on every path."""

from __future__ import annotations

import http.server
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from storage.access.tokens import ISSUER, parse_ttl
from storage.archive import Archive
from storage.settings import Settings
from tests.kit.dicomweb import Gateway, serve_gateway
from tests.kit.net import http_server
from tests.kit.servers import pacs_executable

PROTECTED = [
    "/dicomweb",
    "/dicomweb/studies",
    "/dicomweb/series",
    "/dicomweb/instances",
    "/wado?requestType=WADO",
    "/metrics",
    "/openapi.json",
    "/docs",
]
#: the writes: STOW-RS and DELETE refuse before reading a byte of the body
PROTECTED_WRITES = [
    ("POST", "/dicomweb/studies"),
    ("POST", "/dicomweb/studies/1.2.3"),
    ("DELETE", "/dicomweb/studies/1.2.3"),
    ("DELETE", "/dicomweb/studies/1.2.3/series/1.2.4"),
]


def _bad_tokens(gw: Gateway) -> dict[str, str]:
    now = int(time.time())
    good_claims = {"iss": ISSUER, "sub": "x", "org": "hosp-a", "roles": ["clinician"], "iat": now, "exp": now + 60}
    return {
        "malformed": "not-a-jwt",
        "wrong-key": jwt.encode(good_claims, "some-other-key-of-enough-length-0123456789", algorithm="HS256"),
        "expired": jwt.encode({**good_claims, "exp": now - 5}, _key(gw), algorithm="HS256"),
        "alg-none": jwt.encode(good_claims, None, algorithm="none"),
    }


def _key(gw: Gateway) -> str:
    from storage.access.tokens import signing_key

    return signing_key(gw.settings)


@pytest.mark.parametrize("path", PROTECTED)
def test_every_dicomweb_path_needs_a_token(gateway: Gateway, path: str) -> None:
    r = httpx.get(gateway.url + path)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "Bearer" in r.headers["www-authenticate"]
    for name, token in _bad_tokens(gateway).items():
        r = httpx.get(gateway.url + path, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, name
        assert r.json()["detail"], name


@pytest.mark.parametrize("settings", ["sqlite-fs"], indirect=True)  # refused before storage
def test_every_write_needs_a_token(gateway: Gateway) -> None:
    headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}
    for method, path in PROTECTED_WRITES:
        for name, token in {"none": "", **_bad_tokens(gateway)}.items():
            auth = {"Authorization": f"Bearer {token}"} if token else {}
            r = httpx.request(method, gateway.url + path, content=b"--b--", headers={**headers, **auth})
            assert r.status_code == 401, (method, path, name)
            assert "Bearer" in r.headers["www-authenticate"], (method, path, name)


def test_health_needs_no_token(gateway: Gateway) -> None:
    for path in ("/healthz", "/readyz"):
        assert httpx.get(gateway.url + path).status_code == 200


def test_ttl_parsing() -> None:
    assert [parse_ttl(t) for t in ("30s", "15m", "8h", "7d")] == [30, 900, 28800, 604800]
    for bad in ("8", "0h", "1w", "-1h"):
        with pytest.raises(ValueError):
            parse_ttl(bad)


@pytest.mark.parametrize("settings", ["sqlite-fs"], indirect=True)  # the CLI reads the gateway's data dir
def test_pacs_token_cli_issues_a_token_the_gateway_accepts(gateway: Gateway, tmp_path: Path) -> None:
    data_dir = str(gateway.settings.data_dir)
    r = subprocess.run(
        [pacs_executable(), "token", "--org", "hosp-a", "--role", "clinician", "--ttl", "15m", "--data-dir", data_dir],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["org"] == "hosp-a" and claims["roles"] == ["clinician"] and claims["exp"] - claims["iat"] == 900
    assert httpx.get(f"{gateway.dicomweb}/studies", headers={"Authorization": f"Bearer {token}"}).status_code != 401
    unknown = subprocess.run(
        [pacs_executable(), "token", "--org", "nowhere", "--role", "admin", "--data-dir", data_dir],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2 and "not registered" in unknown.stderr


@pytest.fixture()
def identity_provider() -> Iterator[tuple[str, Any]]:
    """An OpenID issuer's two documents over HTTP: its discovery document and its JWKS (RS256)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())) | {"kid": "k1", "use": "sig", "alg": "RS256"}
    documents: dict[str, object] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook
            body = json.dumps(documents.get(self.path, {})).encode()
            self.send_response(200 if self.path in documents else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with http_server(Handler) as server:
        issuer = f"http://127.0.0.1:{server.server_address[1]}/realms/city"
        documents["/realms/city/.well-known/openid-configuration"] = {"issuer": issuer, "jwks_uri": f"{issuer}/certs"}
        documents["/realms/city/certs"] = {"keys": [jwk]}
        yield issuer, key


@pytest.mark.parametrize("settings", ["sqlite-fs"], indirect=True)
def test_tokens_of_an_external_identity_provider(
    identity_provider: tuple[str, Any], settings: Settings, archive: Archive
) -> None:
    """PACS_OIDC_ISSUER: the keys are found through the issuer's discovery document (fetched by the
    runtime install alone, no HTTP client of the dev extras) and its JWKS."""
    issuer, key = identity_provider
    configured = settings.model_copy(update={"oidc_issuer": issuer, "oidc_audience": "pacs"})
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": "pacs",
        "sub": "dr.popescu",
        "org": "hosp-a",
        "roles": ["clinician"],
        "exp": now + 60,
    }
    with contextmanager(serve_gateway)(configured, archive) as gw:
        good = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
        assert httpx.get(f"{gw.dicomweb}/studies", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        for name, token in {
            "other audience": jwt.encode(claims | {"aud": "other"}, key, algorithm="RS256", headers={"kid": "k1"}),
            "expired": jwt.encode(claims | {"exp": now - 5}, key, algorithm="RS256", headers={"kid": "k1"}),
            "hmac from outside": jwt.encode(claims, "x" * 32, algorithm="HS256"),
        }.items():
            r = httpx.get(f"{gw.dicomweb}/studies", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, name
