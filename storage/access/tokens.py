"""Locally issued bearer tokens (HS256): what `pacs token` signs and the gateway verifies.

The key is `PACS_JWT_SECRET` when set, so that several processes behind a load balancer
share it; otherwise a random key made on first use in the data dir (mode 0600), which is
what a single `pacs serve` on a laptop needs. External identity providers (OIDC) are
verified by the gateway against their JWKS; this module only knows the local issuer.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from storage.access.principal import TOKEN_ROLES, Principal, Role
from storage.settings import Settings

ISSUER = "pacs-local"
ALGORITHM = "HS256"
_TTL = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class TokenError(ValueError):
    """The token is missing, malformed, wrongly signed or expired; `str()` says which."""


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    org: str | None
    roles: frozenset[Role]
    exp: int
    jti: str = ""
    iat: int = 0

    def principal(self) -> Principal:
        return Principal(sub=self.sub, org=self.org, roles=self.roles, token_id=self.jti, issued_at=self.iat)


def parse_ttl(text: str) -> int:
    """`30s`, `15m`, `8h`, `7d` -> seconds."""
    m = _TTL.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 8h or 7d")
    return int(m.group(1)) * _UNIT[m.group(2)]


def secret_path(settings: Settings) -> Path:
    return settings.data_dir / "jwt-secret"


#: key file -> (its identity when read: inode, size, mtime; the key)
_key_files: dict[Path, tuple[tuple[int, int, int], str]] = {}


def signing_key(settings: Settings) -> str:
    """The local signing key: PACS_JWT_SECRET, else the data dir's key file, made on first use.

    Every authenticated request asks for it, so the file is read again only when a stat says it
    was replaced or rewritten (a new key then takes effect at once, as before).
    """
    if settings.jwt_secret.get_secret_value():
        return settings.jwt_secret.get_secret_value()
    path = secret_path(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
    st = path.stat()
    identity = (st.st_ino, st.st_size, st.st_mtime_ns)
    known = _key_files.get(path)
    if known is None or known[0] != identity:
        known = _key_files[path] = (identity, path.read_text().strip())
    return known[1]


def issue(settings: Settings, *, sub: str, org: str | None, roles: list[str], ttl_seconds: int) -> str:
    unknown = set(roles) - TOKEN_ROLES
    if unknown or not roles:
        raise ValueError(f"roles must be among {', '.join(sorted(TOKEN_ROLES))}")
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": sub,
        "org": org,
        "roles": sorted(set(roles)),
        "iat": now,
        "exp": now + ttl_seconds,
        "jti": secrets.token_urlsafe(12),  # what `pacs token revoke --id` names
    }
    return jwt.encode(claims, signing_key(settings), algorithm=ALGORITHM)


def verify(settings: Settings, token: str) -> Claims:
    """Check signature, expiry and claims of a locally issued token."""
    try:
        data = jwt.decode(
            token,
            signing_key(settings),
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("the token has expired") from None
    except jwt.InvalidSignatureError:
        raise TokenError("the token's signature does not verify") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"the token is malformed: {exc}") from None
    return claims_from(data)


def claims_from(data: dict[str, object]) -> Claims:
    roles = data.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise TokenError("the token's roles claim is not a list of strings")
    org = data.get("org")
    if org is not None and not isinstance(org, str):
        raise TokenError("the token's org claim is not a string")
    known = frozenset(Role(r) for r in roles if r in TOKEN_ROLES)
    jti, iat = data.get("jti", ""), data.get("iat", 0)
    return Claims(
        sub=str(data["sub"]),
        org=org,
        roles=known,
        exp=int(str(data["exp"])),
        jti=jti if isinstance(jti, str) else "",
        iat=iat if isinstance(iat, int) else 0,
    )
