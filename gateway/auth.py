"""The HTTP side's answer to "who is asking": a bearer token -> Principal.

Local tokens (HS256, `pacs token`) are verified with the local key; when
`PACS_OIDC_ISSUER` is set, tokens signed by that identity provider are verified against
its JWKS (keys found through its OpenID discovery document) and `PACS_OIDC_AUDIENCE`.
Every failure is a 401 with a `WWW-Authenticate` header saying what was wrong.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from functools import cached_property
from typing import Any, NoReturn

import jwt
from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from storage.access.limits import RateLimited
from storage.access.principal import Principal
from storage.access.standing import check_token
from storage.access.tokens import ISSUER, Claims, TokenError, claims_from, signing_key, verify
from storage.logs import event
from storage.settings import Settings

log = logging.getLogger(__name__)


#: how many verified local tokens `Authenticator` remembers before it starts over
VERIFIED_TOKENS = 4096


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._verified: dict[str, tuple[str, Claims]] = {}  # token -> (signing key, claims)

    @cached_property
    def discovery(self) -> dict[str, Any]:
        """The identity provider's OpenID discovery document (OpenID Connect Discovery 1.0,
        section 4), fetched with the standard library as PyJWT fetches the JWKS; kept once read
        (a failed read is tried again next time).

        Raises
        ------
        TokenError
            The document cannot be read, or names another issuer (section 4.3).
        """
        issuer = self.settings.oidc_issuer.rstrip("/")
        try:
            with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration", timeout=10) as answer:
                discovery = json.load(answer)
        except (OSError, ValueError) as exc:
            raise TokenError(f"the identity provider cannot be reached: {type(exc).__name__}") from None
        if not isinstance(discovery, dict) or str(discovery.get("issuer", "")).rstrip("/") != issuer:
            raise TokenError("the identity provider's discovery document names another issuer")
        return discovery

    def oauth_uris(self) -> dict[str, str] | None:
        """The identity provider's authorization and token endpoints, for the FHIR
        CapabilityStatement's SMART-on-FHIR security (None without one, or when unreadable)."""
        if not self.settings.oidc_issuer:
            return None
        try:
            found = self.discovery
        except TokenError:
            return None
        uris = {"authorize": found.get("authorization_endpoint"), "token": found.get("token_endpoint")}
        return {name: str(uri) for name, uri in uris.items() if uri}

    @cached_property
    def _jwks(self) -> jwt.PyJWKClient:
        """The identity provider's keys, found through its discovery document.

        The key set is cached for an hour and fetched again at once for a key ID it does not
        hold (`cooldown_duration=0`: a key the provider rotated in is accepted on its first
        token), and keys are not cached apart from the set (`cache_keys=False`), so a key the
        provider removed stops verifying with the next fetch instead of at the next restart.

        Raises
        ------
        TokenError
            The discovery document cannot be read, names another issuer, or no key set.
        """
        jwks_uri = self.discovery.get("jwks_uri")
        if not jwks_uri:
            raise TokenError("the identity provider's discovery document names no key set")
        return jwt.PyJWKClient(str(jwks_uri), cache_keys=False, lifespan=3600, cooldown_duration=0)

    def principal(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None and known[0] == signing_key(self.settings):
            return self._unexpired(known[1]).principal()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"the token is malformed: {exc}") from None
        if unverified.get("iss") == ISSUER or not self.settings.oidc_issuer:
            return self._local(token).principal()
        return self._oidc(token, header.get("alg", ""))

    def _local(self, token: str) -> Claims:
        """Verify a local token, and remember it with the signing key of the moment.

        A viewer sends the same token with every request, and PyJWT's parse and checks were
        ~0.2 ms of a ~3 ms frame request. Remembering is safe: a verified token stays valid
        until its `exp` (checked again on every use, as PyJWT does: expired when exp <= now;
        its `nbf`/`iat` checks only become easier to pass with time), a new signing key
        is a miss, and local tokens cannot be revoked otherwise.
        """
        key = signing_key(self.settings)  # read before `verify` reads it: a change in between is a miss
        claims = verify(self.settings, token)
        if len(self._verified) >= VERIFIED_TOKENS:
            self._verified.clear()
        self._verified[token] = (key, claims)
        return claims

    @staticmethod
    def _unexpired(claims: Claims) -> Claims:
        if claims.exp <= time.time():
            raise TokenError("the token has expired")
        return claims

    def _oidc(self, token: str, alg: str) -> Principal:
        if alg.startswith("HS") or alg == "none":
            raise TokenError(f"algorithm {alg} is not accepted from an external issuer")
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            data = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                issuer=self.settings.oidc_issuer,
                audience=self.settings.oidc_audience or None,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired") from None
        except (jwt.InvalidTokenError, jwt.PyJWKClientError) as exc:
            raise TokenError(f"the token does not verify: {exc}") from None
        return claims_from(data).principal()


async def get_principal(request: Request) -> Principal:
    """FastAPI dependency: the caller, or 401 (no valid token, or a revoked one) or 403.

    A verified token must also stand (`storage.access.standing`): its organization known and
    enabled, a role, not revoked. That is read from the database on every request, so a
    change takes effect at once in every process (one indexed query, ~0.1 ms).

    A coroutine, so that checking a local token (HMAC and base64 work, and without
    PACS_JWT_SECRET a read of the page-cached key file: ~0.2 ms in all) runs on the event
    loop instead of costing every request a hop to a worker thread and back (~0.3 ms).
    With an external identity provider configured, the check may fetch its JWKS over the
    network, so it goes to a worker thread as a plain dependency would.
    """
    authenticator: Authenticator = request.app.state.authenticator
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        _deny(request, "missing bearer token", "invalid_request")
    try:
        if authenticator.settings.oidc_issuer:
            principal = await run_in_threadpool(authenticator.principal, token.strip())
        else:
            principal = authenticator.principal(token.strip())
    except TokenError as exc:
        _deny(request, str(exc), "invalid_token")
    request.state.pacs_principal = principal
    refusal = check_token(request.app.state.archive.db, principal)
    if refusal is not None and refusal.revoked:
        _deny(request, refusal.detail, "invalid_token")
    if refusal is not None:
        request.state.pacs_refusal = refusal.detail
        event(
            log,
            "auth.refused",
            level=logging.WARNING,
            path=request.url.path,
            actor=principal.sub,
            org=principal.org,
            reason=refusal.detail,
            peer=request.client.host if request.client else "",
        )
        raise HTTPException(403, refusal.detail)
    try:
        request.app.state.archive.rate_limits.http.take(f"{principal.org}|{principal.sub}", principal.sub)
    except RateLimited as exc:
        request.state.pacs_refusal = exc.detail
        raise HTTPException(429, exc.detail, headers={"Retry-After": str(exc.retry_after)}) from None
    return principal


def _deny(request: Request, detail: str, error: str) -> NoReturn:
    request.state.pacs_refusal = detail
    event(
        log,
        "auth.denied",
        level=logging.WARNING,
        path=request.url.path,
        reason=detail,
        peer=request.client.host if request.client else "",
    )
    quoted = detail.replace("\\", "").replace('"', "'")  # RFC 6750 3: no " or \\ in a quoted value
    raise HTTPException(
        401, detail, headers={"WWW-Authenticate": f'Bearer error="{error}", error_description="{quoted}"'}
    )
