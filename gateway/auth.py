"""The HTTP side's answer to "who is asking": a bearer token -> Principal.

Local tokens (HS256, `pacs token`) are verified with the local key; when
`PACS_OIDC_ISSUER` is set, tokens signed by that identity provider are verified against
its JWKS (keys found through its OpenID discovery document) and `PACS_OIDC_AUDIENCE`.
Every failure is a 401 with a `WWW-Authenticate` header saying what was wrong.
"""

from __future__ import annotations

import logging
from functools import cached_property

import httpx
import jwt
from fastapi import HTTPException, Request

from storage.access import Principal
from storage.logs import event
from storage.settings import Settings
from storage.tokens import ISSUER, TokenError, claims_from, verify

log = logging.getLogger(__name__)


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def _jwks(self) -> jwt.PyJWKClient:
        issuer = self.settings.oidc_issuer.rstrip("/")
        discovery = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=10).json()
        return jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=True, lifespan=3600)

    def principal(self, token: str, address: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"the token is malformed: {exc}") from None
        if unverified.get("iss") == ISSUER or not self.settings.oidc_issuer:
            return verify(self.settings, token).principal(address)
        return self._oidc(token, header.get("alg", ""), address)

    def _oidc(self, token: str, alg: str, address: str) -> Principal:
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
        return claims_from(data).principal(address)


def get_principal(request: Request) -> Principal:
    """FastAPI dependency: the caller, or 401."""
    authenticator: Authenticator = request.app.state.authenticator
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    address = request.client.host if request.client else ""
    if scheme.lower() != "bearer" or not token.strip():
        _deny(request, "missing bearer token", "invalid_request")
    try:
        return authenticator.principal(token.strip(), address)
    except TokenError as exc:
        _deny(request, str(exc), "invalid_token")
    raise AssertionError("unreachable")


def _deny(request: Request, detail: str, error: str) -> None:
    event(
        log,
        "auth.denied",
        level=logging.WARNING,
        path=request.url.path,
        reason=detail,
        peer=request.client.host if request.client else "",
    )
    raise HTTPException(
        401, detail, headers={"WWW-Authenticate": f'Bearer error="{error}", error_description="{detail}"'}
    )
