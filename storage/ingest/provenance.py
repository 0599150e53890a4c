"""What each stored object carries besides its DICOM bytes: who sent it, for which organization,
through which channel, and when (`storage.blobs.protocol.Meta`).

The DICOM bytes name the patient and the study but not who may see them: visibility follows the
organization that sent an object (DESIGN.md). Written with the object by ingest, read back by
`pacs reindex` (`storage.ingest.reindex`), which rebuilds the index, owners included, from the
object store alone when the database is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from storage.access.context import Channel, Context
from storage.access.principal import Principal, Role
from storage.blobs.protocol import Meta

#: the metadata names (S3: x-amz-meta-pacs-<name>; a file: user.pacs.<name>)
ORG, SENDER, CHANNEL, ROLES, RECEIVED = "org", "sender", "channel", "roles", "received"


def of(ctx: Context, received: datetime | None = None) -> dict[str, str]:
    """The metadata an object stored by `ctx` carries (values quoted: S3 headers are ASCII)."""
    principal = ctx.principal
    return {
        ORG: quote(principal.org or "", safe=""),
        SENDER: quote(principal.sub, safe="@.-_"),
        CHANNEL: ctx.channel.value,
        ROLES: ",".join(sorted(principal.roles)),
        RECEIVED: (received or datetime.now(UTC)).isoformat(),
    }


@dataclass(frozen=True, slots=True)
class Provenance:
    """An object's sender, as read back; `known` is False for an object stored without it."""

    principal: Principal
    channel: Channel
    received: datetime
    known: bool


#: who an object without provenance is attributed to: unassigned, admins only (as an unknown AE's)
UNKNOWN = Principal(sub="reindex", org=None, roles=frozenset({Role.MODALITY}))


def read(meta: Meta) -> Provenance:
    """The provenance of an object's metadata (`of`'s), or UNKNOWN's when it carries none."""
    if SENDER not in meta or CHANNEL not in meta:
        return Provenance(UNKNOWN, Channel.DIMSE, datetime.min.replace(tzinfo=UTC), known=False)
    known_roles = {r.value for r in Role}
    roles = frozenset(Role(r) for r in meta.get(ROLES, "").split(",") if r in known_roles)
    org = unquote(meta.get(ORG, "")) or None
    try:
        received = datetime.fromisoformat(meta[RECEIVED])
    except (KeyError, ValueError):
        received = datetime.min.replace(tzinfo=UTC)
    try:
        channel = Channel(meta[CHANNEL])
    except ValueError:
        channel = Channel.DIMSE
    return Provenance(Principal(sub=unquote(meta[SENDER]), org=org, roles=roles), channel, received, known=True)
