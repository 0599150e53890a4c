"""/api/worklist: the admin API an integrator fills the Modality Worklist through.

Thin routes over `storage.workflow.worklist`, which holds the rules: an admin manages every
organization's steps, an integrator its own organization's (another's is 404, as if it did
not exist), anyone else gets 403. Bodies are JSON with DICOM keywords in snake_case; a value
that is not what the modality can take is a 400 problem naming the field.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict

from gateway.deps import ApiContext, ArchiveDep, RowId
from storage.logs import event
from storage.workflow import worklist
from storage.workflow.worklist import STATUSES, NewStep, Status, Step

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/worklist", tags=["Modality Worklist (admin, integrator)"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "A field is missing or malformed; the problem names it"},
    403: {"description": "The caller has neither the admin nor the integrator role"},
}
_ONE: dict[int | str, dict[str, Any]] = {**_RESPONSES, 404: {"description": "No such step for this caller"}}


class StatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Status


@router.post("", status_code=201, summary="Schedule a procedure step", responses=_RESPONSES)
def create(spec: NewStep, archive: ArchiveDep, ctx: ApiContext, response: Response) -> Step:
    with archive.db.write() as session:
        step = worklist.create_step(spec, ctx, session=session)
    response.headers["Location"] = f"{router.prefix}/{step.id}"
    event(log, "worklist.created", id=step.id, org=step.org, modality=step.modality, actor=ctx.principal.sub)
    return step


@router.get("", summary="List scheduled procedure steps", responses=_RESPONSES)
def list_steps(
    archive: ArchiveDep,
    ctx: ApiContext,
    date: Annotated[str, Query(description="YYYYMMDD, YYYY-MM-DD or a range D1-D2, D-, -D")] = "",
    modality: Annotated[str, Query(description="CT, MR...; * and ? wild cards")] = "",
    station_ae: Annotated[str, Query(description="Scheduled Station AE Title; * and ? wild cards")] = "",
    status: Annotated[str, Query(description="A step status", json_schema_extra={"enum": ["", *STATUSES]})] = "",
    org: Annotated[str, Query(description="performing organization (admins; an integrator sees its own)")] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> list[Step]:
    with archive.db.read() as session:
        return worklist.list_steps(
            ctx,
            session=session,
            date=date,
            modality=modality,
            station_ae=station_ae,
            status=status,
            org=org,
            limit=limit,
        )


@router.get("/{step_id}", summary="One scheduled procedure step", responses=_ONE)
def get(step_id: RowId, archive: ArchiveDep, ctx: ApiContext) -> Step:
    with archive.db.read() as session:
        return worklist.get_step(step_id, ctx, session=session)


@router.patch("/{step_id}", summary="Change a step's status", responses=_ONE)
def patch(step_id: RowId, change: StatusChange, archive: ArchiveDep, ctx: ApiContext) -> Step:
    with archive.db.write() as session:
        step = worklist.set_status(step_id, change.status, ctx, session=session)
    event(log, "worklist.status", id=step_id, status=step.status, actor=ctx.principal.sub)
    return step


@router.delete("/{step_id}", status_code=204, summary="Remove a step from the worklist", responses=_ONE)
def delete(step_id: RowId, archive: ArchiveDep, ctx: ApiContext) -> Response:
    with archive.db.write() as session:
        worklist.delete_step(step_id, ctx, session=session)
    event(log, "worklist.deleted", id=step_id, actor=ctx.principal.sub)
    return Response(status_code=204)
