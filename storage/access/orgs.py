"""Organizations and their DICOM nodes: who a calling AE title speaks for.

An organization ID is what tokens (`org`), URLs (/api/orgs/{id}) and FHIR identifiers
(`urn:pacs:org:<id>`) carry, so it has the form of a FHIR `id` (FHIR R4 2.24.0.13): 1 to 64
letters, digits, hyphens and dots. An AE title belongs to one organization at a time.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from storage.access.standing import allowed_network
from storage.errors import UnknownDestination
from storage.index.models import ApplicationEntity, Organization, Study, StudyOwner, utcnow
from storage.settings import AE_TITLE_RE

#: FHIR R4 `id`: [A-Za-z0-9\-\.]{1,64}
ORG_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True, slots=True)
class AeSpec:
    """`AET[@host:port]` as given to `pacs org add --ae`, and the network it must call from."""

    ae_title: str
    host: str | None = None
    port: int | None = None
    #: `--from`: an address or network (CIDR) its associations must come from
    allowed_from: str | None = None
    #: `--tls-subject`: the CN of the client certificate it must present over DICOM TLS
    tls_subject: str | None = None

    @classmethod
    def parse(cls, text: str) -> AeSpec:
        title, _, address = text.partition("@")
        title = title.strip()
        if not AE_TITLE_RE.match(title):
            raise ValueError(f"{title!r} is not an AE title (1-16 printable ASCII characters, no backslash)")
        if not address:
            return cls(title)
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r}: the address must be host:port")
        return cls(title, host, int(port))

    def __str__(self) -> str:
        return (
            self.ae_title
            + (f"@{self.host}:{self.port}" if self.host else "")
            + (f" from {self.allowed_from}" if self.allowed_from else "")
            + (f" as CN={self.tls_subject}" if self.tls_subject else "")
        )

    def bound(self) -> bool:
        """Whether its associations are held to an address (`--from`, or an IP address as host)."""
        return bool(self.tls_subject) or allowed_network(self.allowed_from, self.host) is not None


def check_network(text: str) -> str:
    """`text` if it is an IP address or network (`10.0.0.0/24`), normalized; else ValueError."""
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{text[:80]!r} is not an IP address or network such as 10.0.0.0/24") from None


@dataclass(frozen=True, slots=True)
class OrgSummary:
    id: str
    name: str
    aes: list[AeSpec]
    studies: int = 0
    disabled: bool = False
    check_ae_address: bool = True


class AeTakenError(ValueError):
    pass


def check_org_id(org_id: str) -> str:
    """`org_id` if it can name an organization in tokens, URLs and FHIR identifiers, else ValueError."""
    if not ORG_ID_RE.match(org_id):
        raise ValueError(
            f"{org_id[:80]!r} is not an organization ID: 1 to 64 letters, digits, hyphens and dots"
            " (it goes into tokens, URLs and FHIR identifiers), e.g. spital-sf-spiridon"
        )
    return org_id


def add_org(session: Session, org_id: str, name: str | None, aes: list[AeSpec]) -> OrgSummary:
    """Create the organization or add to it; an AE title belongs to one organization only.

    Raises
    ------
    ValueError
        An invalid organization ID, a new organization without a name, or (`AeTakenError`)
        an AE title registered to another organization.
    """
    check_org_id(org_id)
    org = session.get(Organization, org_id)
    if org is None:
        if not name:
            raise ValueError(f"organization {org_id!r} does not exist yet: give it a --name")
        org = Organization(id=org_id, name=name)
        session.add(org)
    elif name:
        org.name = name
    session.flush()
    for spec in aes:
        ae = session.scalar(select(ApplicationEntity).where(ApplicationEntity.ae_title == spec.ae_title))
        if ae is not None and ae.org_id != org_id:
            raise AeTakenError(f"AE title {spec.ae_title} is already registered to organization {ae.org_id}")
        allowed = check_network(spec.allowed_from) if spec.allowed_from else None
        if ae is None:
            session.add(
                ApplicationEntity(
                    ae_title=spec.ae_title,
                    org_id=org_id,
                    host=spec.host,
                    port=spec.port,
                    allowed_from=allowed,
                    tls_subject=spec.tls_subject,
                )
            )
            continue
        if spec.host:
            ae.host, ae.port = spec.host, spec.port
        if allowed:
            ae.allowed_from = allowed
        if spec.tls_subject:
            ae.tls_subject = spec.tls_subject
    session.flush()
    return get_org(session, org_id)


def update_org(
    session: Session,
    org_id: str,
    *,
    name: str | None = None,
    disabled: bool | None = None,
    check_ae_address: bool | None = None,
) -> OrgSummary:
    """Rename, disable or enable an organization, or change its AE address check; KeyError if unknown.

    Disabling takes effect at the next request or association of every process: its tokens get
    403 and its AEs' associations are rejected (`storage.access.standing`); its studies stay,
    visible to admins and to organizations they are shared with.
    """
    org = session.get(Organization, org_id)
    if org is None:
        raise KeyError(org_id)
    if name:
        org.name = name
    if disabled is not None:
        org.disabled_at = (org.disabled_at or utcnow()) if disabled else None
    if check_ae_address is not None:
        org.check_ae_address = check_ae_address
    session.flush()
    return get_org(session, org_id)


def get_org(session: Session, org_id: str) -> OrgSummary:
    """One organization with its AEs and how many studies it holds; KeyError if unknown."""
    org = session.get(Organization, org_id)
    if org is None:
        raise KeyError(org_id)
    aes = session.scalars(
        select(ApplicationEntity).where(ApplicationEntity.org_id == org_id).order_by(ApplicationEntity.ae_title)
    )
    studies = session.scalar(select(func.count()).where(StudyOwner.org_id == org_id)) or 0
    return OrgSummary(
        org.id,
        org.name,
        [AeSpec(a.ae_title, a.host, a.port, a.allowed_from, a.tls_subject) for a in aes],
        int(studies),
        disabled=org.disabled_at is not None,
        check_ae_address=org.check_ae_address,
    )


def list_orgs(session: Session) -> list[OrgSummary]:
    """Every organization, by ID."""
    ids = session.scalars(select(Organization.id).order_by(Organization.id)).all()
    return [get_org(session, org_id) for org_id in ids]


def remove_ae(session: Session, org_id: str, ae_title: str) -> None:
    """Unregister an AE title of `org_id`: from its next association it is an unknown AE.

    Its studies stay its organization's. KeyError if the organization has no such AE.
    """
    removed = session.execute(
        delete(ApplicationEntity).where(
            ApplicationEntity.org_id == org_id, ApplicationEntity.ae_title == ae_title.strip()
        )
    )
    if removed.rowcount == 0:  # type: ignore[attr-defined]  # a CursorResult
        raise KeyError(f"{ae_title}@{org_id}")


@dataclass(frozen=True, slots=True)
class Unassigned:
    """Studies an AE sent while no organization had registered it (held for admins)."""

    ae_title: str
    studies: int


def unassigned(session: Session) -> list[Unassigned]:
    """The unassigned studies, by the AE title that sent them."""
    rows = session.execute(
        select(Study.source_ae, func.count(Study.id))
        .where(Study.org_id.is_(None))
        .group_by(Study.source_ae)
        .order_by(Study.source_ae)
    )
    return [Unassigned(ae or "", int(n)) for ae, n in rows]


def org_of_ae(session: Session, ae_title: str) -> str | None:
    return session.scalar(select(ApplicationEntity.org_id).where(ApplicationEntity.ae_title == ae_title.strip()))


def move_destination(session: Session, ae_title: str, org: str | None) -> AeSpec:
    """Where a C-MOVE of organization `org` to `ae_title` may go (PS3.4 C.4.2.1.4: Move Destination).

    Only to an AE registered with an address, and only to one of the caller's own
    organization: a provider must not have the archive push data, its own or another
    institution's, to a third party's node.

    Raises
    ------
    UnknownDestination
        The AE title is not registered, has no host:port, or belongs to another organization
        (the answer does not say which, so a caller cannot probe other organizations' nodes).
    """
    title = ae_title.strip()
    ae = session.scalar(select(ApplicationEntity).where(ApplicationEntity.ae_title == title))
    if ae is None or org is None or ae.org_id != org:
        raise UnknownDestination(f"{title}: not a registered node of the caller's organization")
    if not ae.host or not ae.port:
        raise UnknownDestination(f"{title}: registered without host:port")
    return AeSpec(ae.ae_title, ae.host, ae.port)
