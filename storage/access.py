"""Who is asking: the principal every query, retrieve and write is checked against.

Only `gateway/auth.py` (bearer token) and `pacs/policy.py` (calling AE title) create a
Principal. Until organization filtering lands ([4/7]), `visible_to` lets every
authenticated principal see every study; keeping the rule here means that work fills in
one function instead of touching every route and DIMSE handler.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, true

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


def visible_to(principal: Principal) -> ColumnElement[bool]:
    """The SQL filter on studies that `principal` may see (all, until [4/7])."""
    del principal
    return true()
