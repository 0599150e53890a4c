"""Who is asking: the principal every query, retrieve and write is checked against.

Only `gateway/auth.py` (bearer token) and `pacs/policy.py` (calling AE title) create a
Principal. Until organization filtering lands ([4/7]), `visible_to` lets every
authenticated principal see every study; keeping the rule here means that work fills in
one function instead of touching every route and DIMSE handler.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, true

from storage.errors import NotAuthorized

ROLES = ("clinician", "integrator", "admin", "modality")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a token's subject or a DICOM node.

    `org` is None for an unregistered DICOM node: its studies are held unassigned.
    `via` is the channel (`dimse`, `http`, `cli`), and `address` the peer for the audit trail.
    """

    sub: str
    org: str | None
    roles: frozenset[str] = field(default_factory=frozenset)
    via: str = "http"
    address: str = ""

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @classmethod
    def system(cls, sub: str = "system") -> Principal:
        """The operator at the console (`pacs import`, start-up recovery)."""
        return cls(sub=sub, org=None, roles=frozenset({"admin"}), via="cli")

    @classmethod
    def dicom_node(cls, ae_title: str, org: str | None, address: str = "") -> Principal:
        """A calling AE: its organization's when registered (`org`), else unassigned."""
        return cls(sub=ae_title, org=org, roles=frozenset({"modality"}), via="dimse", address=address)


def visible_to(principal: Principal) -> ColumnElement[bool]:
    """The SQL filter on studies that `principal` may see (all, until [4/7])."""
    del principal
    return true()


def may_read(principal: Principal) -> bool:
    """Whether `principal` may query or retrieve at all (before any study filter).

    DESIGN.md "DICOM surface": an unregistered calling AE (a DICOM principal without an
    organization) may C-ECHO and C-STORE only; every token holder and every registered AE
    may read within what `visible_to` lets it see.
    """
    return principal.is_admin or principal.org is not None or principal.via != "dimse"


def require_read(principal: Principal, action: str) -> None:
    """Raise `NotAuthorized` (DIMSE 0x0124 Refused: Not Authorized; HTTP 403) unless `may_read`."""
    if not may_read(principal):
        raise NotAuthorized(f"{action} refused: calling AE {principal.sub} is not registered to an organization")
