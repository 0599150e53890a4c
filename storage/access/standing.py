"""Whether a caller's credential still counts: organization known and enabled, a role, not revoked.

A signature proves who issued a token, not that the archive still trusts what it says: the
organization it names may be unknown (a token from an identity provider that serves several
cities) or disabled, it may carry no role this archive knows, or an operator may have revoked
it (`pacs token revoke`). A calling AE's organization may be disabled, and an AE title is not a
secret: a registered AE is accepted only from its registered address or network, unless its
organization opted out for a site behind NAT. These are read from the database on every request
and every association, so a change takes effect at once, in every process.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, bindparam, exists, select
from sqlalchemy.orm import Session

from storage.access.principal import Principal
from storage.index.db import Database
from storage.index.models import ApplicationEntity, Organization, TokenRevocation, utcnow


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a credential does not count; `revoked` is a 401 (it proves nothing), the rest 403."""

    detail: str
    revoked: bool = False


def check_token(db: Database, principal: Principal) -> Refusal | None:
    """`token_refusal` on a connection of its own (the gateway's check of every request)."""
    with db.statement_engine.connect() as conn:
        return token_refusal(conn, principal)


def check_node(db: Database, ae_title: str, address: str, certificate_cn: str | None = None) -> Node:
    """`node_of` on a connection of its own (the SCP's check of every association)."""
    with db.statement_engine.connect() as conn:
        return node_of(conn, ae_title, address, certificate_cn)


#: revoked by subject since it was issued, revoked by token ID, organization registered, its
#: disabled time: one statement built once (building it per request cost more than running it)
_STANDING = select(
    exists().where(
        TokenRevocation.kind == "sub",
        TokenRevocation.value == bindparam("sub"),
        TokenRevocation.revoked_at >= bindparam("issued"),
    ),
    exists().where(TokenRevocation.kind == "jti", TokenRevocation.value == bindparam("jti")),
    exists().where(Organization.id == bindparam("org")),
    select(Organization.disabled_at).where(Organization.id == bindparam("org")).scalar_subquery(),
)


def token_refusal(conn: Connection, principal: Principal) -> Refusal | None:
    """Why the token behind `principal` is refused, or None when it stands (one query).

    Raises nothing: the caller refuses through its request context, so the refusal is logged
    and audited once.
    """
    if not principal.roles:
        return Refusal("the token carries no role this archive knows (clinician, integrator, admin)")
    if principal.org is None and not principal.is_admin:
        return Refusal("the token names no organization")
    row = conn.execute(
        _STANDING,
        {
            "sub": principal.sub,
            "issued": datetime.fromtimestamp(principal.issued_at, UTC),
            "jti": principal.token_id or None,
            "org": principal.org,
        },
    ).one()
    if row[0] or row[1]:
        return Refusal("the token has been revoked", revoked=True)
    if principal.org is not None:
        if not row[2]:
            return Refusal(f"organization {principal.org} is not registered")
        if row[3] is not None:
            return Refusal(f"organization {principal.org} is disabled")
    return None


@dataclass(frozen=True, slots=True)
class Node:
    """What the registry says of a calling AE: its organization, and whether it may call from here."""

    org: str | None
    refusal: str | None = None


def node_of(conn: Connection, ae_title: str, address: str, certificate_cn: str | None = None) -> Node:
    """The organization a calling AE speaks for, or why its association is refused.

    An unregistered AE is no organization's (it may echo and store, held unassigned). A
    registered one is refused when its organization is disabled, or when it calls from outside
    its registered address or network (`--from`, else its C-MOVE host when that is an IP
    address) while its organization checks addresses. An AE registered without any address
    is accepted from anywhere: `pacs org list` shows it as unbound. An AE bound to a client
    certificate (`--tls-subject`) must call over DICOM TLS presenting a certificate with that
    common name (`certificate_cn`: verified by the TLS port's CA), whatever its address.
    """
    row = conn.execute(
        select(
            ApplicationEntity.org_id,
            ApplicationEntity.host,
            ApplicationEntity.allowed_from,
            ApplicationEntity.tls_subject,
            Organization.disabled_at,
            Organization.check_ae_address,
        )
        .join(Organization, Organization.id == ApplicationEntity.org_id)
        .where(ApplicationEntity.ae_title == ae_title.strip())
    ).first()
    if row is None:
        return Node(None)
    org, host, allowed_from, tls_subject, disabled_at, check = row
    if disabled_at is not None:
        return Node(org, f"organization {org} is disabled")
    if tls_subject and certificate_cn != tls_subject:
        presented = f"CN={certificate_cn}" if certificate_cn else "no client certificate"
        return Node(org, f"AE {ae_title.strip()} of {org} must present CN={tls_subject}, not {presented}")
    network = allowed_network(allowed_from, host)
    if check and network is not None and not in_network(address, network):
        return Node(org, f"AE {ae_title.strip()} of {org} may only call from {network}, not {address}")
    return Node(org)


def allowed_network(allowed_from: str | None, host: str | None) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network an AE must call from: `--from`, else its host when that is an IP address."""
    for text in (allowed_from, host):
        if not text:
            continue
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue  # a host name: DNS is not a proof of origin, so it binds nothing
    return None


def in_network(address: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip in network


def revoke_tokens(session: Session, *, token_id: str | None = None, sub: str | None = None, by: str) -> None:
    """`pacs token revoke`: one token by its `jti`, or every token of `sub` issued until now.

    Takes effect at the next request of every process (`token_refusal` reads the table each time).
    A subject's later tokens are not revoked: issue them only once the person may work again.
    """
    if bool(token_id) == bool(sub):
        raise ValueError("revoke either one token (--id) or a subject's tokens (--sub)")
    kind, value = ("jti", token_id) if token_id else ("sub", sub)
    session.add(TokenRevocation(kind=kind, value=str(value)[:256], revoked_at=utcnow(), revoked_by=by))
    session.flush()
