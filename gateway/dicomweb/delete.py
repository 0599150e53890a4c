"""DELETE of a study or a series: archive management for admins (as Google Healthcare and
dcm4chee offer it; PS3.18 defines no delete transaction).

The index rows go in one transaction, then the blobs (`storage.ingest.delete`). The answer is 200
with what was removed, so an operator sees at once whether any blob is left for recovery.
A caller without the admin role gets 403; an unknown study or series 404.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from gateway.deps import ArchiveDep, DicomwebContext, SeriesUid, StudyUid
from storage.ingest import delete as deleting

router = APIRouter(tags=["DELETE (admin)"])


class Deleted(BaseModel):
    """What a DELETE removed. `blobs_pending` were not deleted yet; recovery retries them."""

    study_instance_uid: str
    series_instance_uid: str | None = None
    studies: int
    series: int
    instances: int
    blobs_pending: int


_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"description": "The caller lacks the admin role"},
    404: {"description": "No such study, or no such series in it"},
}


@router.delete("/studies/{study}", summary="Delete a study, its series and instances (admin)", responses=_RESPONSES)
def delete_study(study: StudyUid, archive: ArchiveDep, ctx: DicomwebContext) -> Deleted:
    return _report(deleting.delete_study(study, ctx, archive=archive), study)


@router.delete(
    "/studies/{study}/series/{series}", summary="Delete a series and its instances (admin)", responses=_RESPONSES
)
def delete_series(study: StudyUid, series: SeriesUid, archive: ArchiveDep, ctx: DicomwebContext) -> Deleted:
    return _report(deleting.delete_series(study, series, ctx, archive=archive), study, series)


def _report(r: deleting.DeleteResult, study: str, series: str | None = None) -> Deleted:
    return Deleted(
        study_instance_uid=study,
        series_instance_uid=series,
        studies=r.studies,
        series=r.series,
        instances=r.instances,
        blobs_pending=r.blobs_failed,
    )
