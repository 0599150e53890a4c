"""PACS_OIDC_ISSUER against a real OpenID Provider: panva's oidc-provider (OpenID Certified).

The provider (`tests/kit/oidc.py`) issues JWT access tokens for the resource `urn:pacs` (audience
`pacs`) to confidential clients with the client_credentials grant; the gateway finds its keys
through its discovery document and JWKS. `test_auth.py` checks the same path against two
hand-made documents; here the documents, the keys and the tokens are the provider's own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from storage.access.orgs import add_org
from storage.archive import Archive
from storage.settings import Settings
from tests.kit import dicom_factory as f
from tests.kit.dicomweb import Gateway, serve_gateway
from tests.kit.oidc import OTHER_API, OidcProvider, oidc_provider, signing_key, write_keys
from tests.kit.seed import seed

# the gateway's side only: the backends are tested elsewhere
pytestmark = pytest.mark.parametrize("settings", ["sqlite-fs"], indirect=True)

DISCOVERY, JWKS = "GET /.well-known/openid-configuration", "GET /jwks"


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """One provider for the module's tests that do not restart it."""
    keys = write_keys(tmp_path_factory.mktemp("oidc") / "keys.json", signing_key("k1"))
    with oidc_provider(keys) as p:
        yield p


@pytest.fixture()
def study(archive: Archive) -> str:
    """hosp-a registered (a token's `org` must name a registered organization) with one study."""
    with archive.db.write() as session:
        add_org(session, "hosp-a", "Hospital A", [])
    uid = f.uid()
    seed(archive, f.ct_dataset(study_uid=uid))
    return uid


@contextmanager
def gateway_of(issuer: str, settings: Settings, archive: Archive) -> Iterator[Gateway]:
    """A gateway (with a new authenticator: no keys known yet) that trusts `issuer` for audience `pacs`."""
    configured = settings.model_copy(update={"oidc_issuer": issuer, "oidc_audience": "pacs"})
    with contextmanager(serve_gateway)(configured, archive) as gw:
        yield gw


def studies(gw: Gateway, token: str) -> httpx.Response:
    return httpx.get(f"{gw.dicomweb}/studies", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def study_uids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [s["0020000D"]["Value"][0] for s in r.json()]


def refused(r: httpx.Response, *words: str) -> str:
    """The 401's WWW-Authenticate header, which names the error and says what was wrong."""
    assert r.status_code == 401, r.text
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge, challenge
    for word in words:
        assert word.lower() in challenge.lower(), challenge
    return challenge


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def test_tokens_of_the_provider_are_accepted(
    provider: OidcProvider, settings: Settings, archive: Archive, study: str
) -> None:
    clinician, admin = provider.token("clin-a"), provider.token("admin")
    assert jwt.get_unverified_header(clinician) | {"kid": "k1"} == {"alg": "RS256", "typ": "at+jwt", "kid": "k1"}
    assert claims(clinician) | {"iat": 0, "exp": 0, "jti": ""} == {
        "iss": provider.issuer,
        "aud": "pacs",
        "sub": "clin-a",
        "client_id": "clin-a",
        "org": "hosp-a",
        "roles": ["clinician"],
        "iat": 0,
        "exp": 0,
        "jti": "",
    }
    assert claims(admin)["roles"] == ["admin"] and "org" not in claims(admin)
    with gateway_of(provider.issuer, settings, archive) as gw:
        assert study_uids(studies(gw, clinician)) == [study]  # the token's org sees its study
        assert study_uids(studies(gw, admin)) == [study]


def test_the_keys_are_found_through_the_providers_discovery_document(
    provider: OidcProvider, settings: Settings, archive: Archive, study: str
) -> None:
    token = provider.token()
    with gateway_of(provider.issuer, settings, archive) as gw:
        mark = len(provider.requests)
        assert studies(gw, token).status_code == 200
        assert provider.paths_since(mark, at_least=2) == [DISCOVERY, JWKS]
        assert studies(gw, provider.token()).status_code == 200
        # the keys are cached: nothing more than the new token is asked of the provider (waited for 0.5 s)
        assert provider.paths_since(mark, at_least=4, timeout=0.5) == [DISCOVERY, JWKS, "POST /token"]


def test_a_token_for_another_audience_is_refused(
    provider: OidcProvider, settings: Settings, archive: Archive, study: str
) -> None:
    token = provider.token(resource=OTHER_API)
    assert claims(token)["aud"] == "other-api" and claims(token)["iss"] == provider.issuer
    with gateway_of(provider.issuer, settings, archive) as gw:
        refused(studies(gw, token), "audience")


def test_an_expired_token_is_refused_as_expired(
    tmp_path: Path, settings: Settings, archive: Archive, study: str
) -> None:
    with (
        oidc_provider(write_keys(tmp_path / "keys.json", signing_key("k1")), token_ttl=2) as short,
        gateway_of(short.issuer, settings, archive) as gw,
    ):
        token = short.token()
        exp = claims(token)["exp"]
        assert exp - claims(token)["iat"] == 2
        assert studies(gw, token).status_code == 200
        time.sleep(max(0.0, exp - time.time()) + 0.1)
        refused(studies(gw, token), "expired")


def test_a_token_of_another_issuer_is_refused(
    provider: OidcProvider, settings: Settings, archive: Archive, study: str
) -> None:
    """A second provider with the same keys and clients: only the issuer differs, and it is not trusted."""
    with oidc_provider(provider.keys_file) as other, gateway_of(provider.issuer, settings, archive) as gw:
        token = other.token()
        assert claims(token) | {"iss": provider.issuer, "iat": 0, "exp": 0, "jti": ""} == claims(provider.token()) | {
            "iat": 0,
            "exp": 0,
            "jti": "",
        }
        assert jwt.get_unverified_header(token)["kid"] == "k1"
        refused(studies(gw, token), "issuer")
        assert studies(gw, provider.token()).status_code == 200


def test_key_rotation(tmp_path: Path, settings: Settings, archive: Archive, study: str) -> None:
    """The provider publishes a new key first and the old one second, signs with the new one, then
    drops the old one: tokens of both keys pass meanwhile, and an old-key token is refused after."""
    old, new = signing_key("k-old"), signing_key("k-new")
    with oidc_provider(write_keys(tmp_path / "old.json", old)) as p, gateway_of(p.issuer, settings, archive) as running:
        old_token = p.token()
        assert studies(running, old_token).status_code == 200

        p.restart(write_keys(tmp_path / "both.json", new, old))
        new_token = p.token()
        assert jwt.get_unverified_header(new_token)["kid"] == "k-new"
        assert studies(running, old_token).status_code == 200  # the old key stays published
        with gateway_of(p.issuer, settings, archive) as fresh:
            assert studies(fresh, new_token).status_code == 200
            assert studies(fresh, old_token).status_code == 200

        p.restart(write_keys(tmp_path / "new.json", new))
        with gateway_of(p.issuer, settings, archive) as fresh:
            assert studies(fresh, new_token).status_code == 200
            refused(studies(fresh, old_token), "k-old")


def test_a_running_gateway_takes_a_key_rotated_in_at_once(
    tmp_path: Path, settings: Settings, archive: Archive, study: str
) -> None:
    old, new = signing_key("k-old"), signing_key("k-new")
    with oidc_provider(write_keys(tmp_path / "old.json", old)) as p, gateway_of(p.issuer, settings, archive) as running:
        assert studies(running, p.token()).status_code == 200
        p.restart(write_keys(tmp_path / "both.json", new, old))
        mark = len(p.requests)
        r = studies(running, p.token())
        assert r.status_code == 200, (r.headers.get("www-authenticate"), p.paths_since(mark))
