"""Who is asking: a token's subject or a DICOM node, with its organization and roles.

Only `gateway/auth.py` (a bearer token) and `pacs/policy.py` (a calling AE title) make a
Principal from what a peer presented; the console makes one for itself (`Principal.system`).
What a principal may do is decided by `storage.access.policy`, never by the edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    """The roles of DESIGN.md "HTTP surface", and the one a DICOM node has."""

    CLINICIAN = "clinician"
    INTEGRATOR = "integrator"
    ADMIN = "admin"
    #: a calling AE title: the archive's modalities and workstations, never a token holder
    MODALITY = "modality"


#: the roles a bearer token may carry (`pacs token --role`, an identity provider's `roles` claim)
TOKEN_ROLES = frozenset({Role.CLINICIAN, Role.INTEGRATOR, Role.ADMIN})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a token's subject or a DICOM node's AE title.

    `org` is None for an unregistered DICOM node, whose studies are held unassigned, and for
    the console's own principal.
    """

    sub: str
    org: str | None
    roles: frozenset[Role] = field(default_factory=frozenset)
    #: a bearer token's `jti` and `iat`, which `pacs token revoke` names (empty/0: a DICOM node)
    token_id: str = ""
    issued_at: int = 0

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    def has(self, role: Role) -> bool:
        return role in self.roles

    @classmethod
    def system(cls, sub: str = "system", org: str | None = None) -> Principal:
        """The operator at the console (`pacs import`, `pacs org claim`, start-up recovery)."""
        return cls(sub=sub, org=org, roles=frozenset({Role.ADMIN}))

    @classmethod
    def dicom_node(cls, ae_title: str, org: str | None) -> Principal:
        """A calling AE: its organization's when registered (`org`), else unassigned."""
        return cls(sub=ae_title, org=org, roles=frozenset({Role.MODALITY}))
