"""/api/audit: the audit trail, for the data-protection officer (admins; DESIGN.md "HTTP surface").

Read-only: no route changes or deletes a record. Newest first; page with `before` (the `id` of
the last record of the previous page). `action=emergency` lists the emergency accesses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from gateway.deps import ApiContext, ArchiveDep, Rfc3339
from storage.access.policy import require_admin
from storage.audit import records

router = APIRouter(prefix="/api/audit", tags=["Audit trail (admin)"])


class AuditRecord(BaseModel):
    id: int
    time: datetime
    actor: str
    org: str | None
    source: str
    channel: str
    action: str
    patient: str | None
    study: str | None
    outcome: str
    reason: str | None
    owner_org: str | None
    detail: str
    hash: str


Text = Annotated[str | None, Query(max_length=256)]


@router.get(
    "",
    summary="Search the audit trail",
    responses={403: {"description": "The caller is not an admin"}},
)
def search(
    archive: ArchiveDep,
    ctx: ApiContext,
    patient: Text = None,
    study: Text = None,
    actor: Text = None,
    org: Text = None,
    action: Annotated[str | None, Query(max_length=128, description="a route or DIMSE action, or `emergency`")] = None,
    outcome: Annotated[str | None, Query(max_length=32)] = None,
    since: Rfc3339 | None = None,
    until: Rfc3339 | None = None,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="page: records older than this id")] = None,
    limit: Annotated[int, Query(ge=1, le=records.MAX_PAGE)] = 100,
) -> list[AuditRecord]:
    require_admin(ctx, "read the audit trail")
    found = records.search(
        archive.db,
        ctx,
        records.Filters(
            patient=patient,
            study=study,
            actor=actor,
            org=org,
            action=action,
            outcome=outcome,
            since=since,
            until=until,
            before=before,
            limit=limit,
        ),
    )
    return [AuditRecord(**row) for row in found]
