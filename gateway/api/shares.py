"""/api/shares: referrals of one study to another organization (DESIGN.md "HTTP surface").

Thin routes over `storage.access.shares`, which holds the rules: a clinician or integrator
shares its own organization's studies, an admin any; a study the caller may not see is 404.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.deps import PRINTABLE, ApiContext, ArchiveDep, Rfc3339, RowId
from storage.access import shares
from storage.access.orgs import ORG_ID_RE
from storage.dicom.uids import MAX_LENGTH, UID_RE

router = APIRouter(prefix="/api/shares", tags=["Shares (clinician, integrator, admin)"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "A field is missing or malformed, or the share cannot be made; the problem says why"},
    403: {"description": "The caller may not share (its role, or a study its organization did not send)"},
    404: {"description": "No such study or share for this caller"},
}


class NewShare(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_instance_uid: str = Field(pattern=UID_RE.pattern, max_length=MAX_LENGTH)
    to_org: str = Field(pattern=ORG_ID_RE.pattern, max_length=64)
    reason: str = Field(min_length=1, max_length=shares.MAX_REASON, pattern=PRINTABLE)
    expires: Rfc3339 | None = Field(default=None, description="RFC 3339; UTC when no offset is given")


class Share(BaseModel):
    id: int
    study_instance_uid: str
    from_org: str | None
    to_org: str
    reason: str
    created_by: str
    created_at: datetime
    expires: datetime | None
    revoked_at: datetime | None
    active: bool


@router.post("", status_code=201, summary="Share a study with another organization", responses=_RESPONSES)
def create(spec: NewShare, archive: ArchiveDep, ctx: ApiContext, response: Response) -> Share:
    with archive.db.write() as session:
        view = shares.create(
            session,
            ctx,
            study_uid=spec.study_instance_uid,
            to_org=spec.to_org,
            reason=spec.reason,
            expires=spec.expires,
        )
    response.headers["Location"] = f"{router.prefix}/{view.id}"
    return Share.model_validate(view, from_attributes=True)


@router.get("", summary="Shares made or received by the caller's organization (all for admins)", responses=_RESPONSES)
def list_shares(archive: ArchiveDep, ctx: ApiContext, active: bool = False) -> list[Share]:
    with archive.db.read() as session:
        views = shares.list_shares(session, ctx, active_only=active)
    return [Share.model_validate(v, from_attributes=True) for v in views]


@router.delete("/{share_id}", summary="Revoke a share, at once", responses=_RESPONSES)
def revoke(share_id: RowId, archive: ArchiveDep, ctx: ApiContext) -> Share:
    with archive.db.write() as session:
        view = shares.revoke(session, ctx, share_id)
    return Share.model_validate(view, from_attributes=True)
