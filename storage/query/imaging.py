"""Studies with their series and instances, a page at a time: what FHIR's ImagingStudy answers from.

The same keys, matching and visibility as QIDO-RS and C-FIND (`storage.query.search.filters_of`:
a patient named with its issuer matched across the person's linked identities), read as index
rows rather than DICOM JSON, with the study's identity (the FHIR subject) and its times. Pages
are newest study date first, then most recently indexed, like QIDO-RS, and continue after the
last study of the previous page (keyset on (date, id): a next page costs what the first does).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from storage.access.context import Context
from storage.access.policy import visible_to
from storage.errors import NotFound
from storage.index.claims import as_utc
from storage.index.models import Instance, Series, Study
from storage.query.keys import STUDY
from storage.query.linked import linked_to
from storage.query.search import Query, filters_of

#: the most studies one page holds, and the most instances one page lists in all
MAX_PAGE = 100
MAX_INSTANCES = 20_000
#: the most changed studies one Subscription round takes (the next round goes on from there)
MAX_CHANGED = 500

_STUDY = (
    Study.id,
    Study.study_uid,
    Study.identity_id,
    Study.patient_id,
    Study.study_date,
    Study.study_time,
    Study.accession_number,
    Study.description,
    Study.modalities,
    Study.num_series,
    Study.num_instances,
    Study.updated_at,
)


@dataclass(frozen=True, slots=True)
class StudyPage:
    """Study rows (`_STUDY`'s columns), their series by study id, instances by series id, and
    whether more studies follow."""

    studies: list[Any]
    series: dict[int, list[Any]]
    instances: dict[int, list[Any]]
    #: whether more studies follow the page (precede it, for a page read `before` a study)
    more: bool


def page(
    query: Query,
    ctx: Context,
    *,
    session: Session,
    limit: int,
    after: str | None = None,
    before: str | None = None,
    updated: tuple[Bound, ...] = (),
    patient: int | None = None,
    instances: bool = True,
) -> StudyPage:
    """Up to `limit` studies matching `query`'s keys that `ctx` may see, after study `after`
    (a Study Instance UID of the previous page) or, `before`, the page that ends before that
    study, with `updated` conditions on their last change, of identity `patient` and the
    identities linked to it (`storage.query.linked.linked_to`); without their `instances` (a
    summary lists the series only).

    Raises
    ------
    InvalidQuery
        A key's value cannot be matched.
    """
    conditions = [visible_to(ctx), *_conditions(query, ctx, patient), *_updated(updated)]
    if after is not None:
        conditions.append(_after(after))
    size = max(0, min(limit, MAX_PAGE))
    if before is not None:  # read backwards from it, and hand the page back newest first
        conditions.append(_before(before))
        order = (Study.study_date.asc(), Study.id.asc())
    else:
        order = (Study.study_date.desc(), Study.id.desc())
    rows = list(session.execute(select(*_STUDY).where(*conditions).order_by(*order).limit(size + 1)).all())
    studies = rows[:size] if before is None else list(reversed(rows[:size]))
    series, members = _members(session, [s.id for s in studies], instances=instances)
    return StudyPage(studies, series, members, len(rows) > size)


def count(
    query: Query, ctx: Context, *, session: Session, updated: tuple[Bound, ...] = (), patient: int | None = None
) -> int:
    """How many studies match in all (a searchset Bundle's `total`)."""
    conditions = [visible_to(ctx), *_conditions(query, ctx, patient), *_updated(updated)]
    stmt = select(func.count()).select_from(Study).where(*conditions)
    return int(session.scalar(stmt) or 0)


def changed(
    query: Query,
    ctx: Context,
    *,
    session: Session,
    since: datetime,
    until: datetime,
    patient: int | None = None,
    limit: int = MAX_CHANGED,
) -> list[tuple[str, datetime]]:
    """(Study Instance UID, last change) of up to `limit` studies `ctx` may see that match
    `query` and last changed in (since, until], oldest change first: what a FHIR Subscription
    is told of (`storage.workflow.subscriptions`)."""
    conditions = [
        visible_to(ctx),
        *_conditions(query, ctx, patient),
        Study.updated_at > since,
        Study.updated_at <= until,
    ]
    stmt = (
        select(Study.study_uid, Study.updated_at)
        .where(*conditions)
        .order_by(Study.updated_at, Study.id)
        .limit(max(0, min(limit, MAX_CHANGED)))
    )
    return [(row.study_uid, as_utc(row.updated_at)) for row in session.execute(stmt)]


def one(study_uid: str, ctx: Context, *, session: Session) -> StudyPage:
    """One study the caller may see, with its series and instances.

    Raises
    ------
    NotFound
        No such study, or one the caller may not see (the same answer).
    """
    row = session.execute(select(*_STUDY).where(Study.study_uid == study_uid, visible_to(ctx))).first()
    if row is None:
        raise NotFound(f"no study {study_uid}")
    series, instances = _members(session, [row.id])
    return StudyPage([row], series, instances, False)


#: a `_lastUpdated` bound: (eq, ne, lt, le, gt or ge, the instant)
Bound = tuple[str, datetime]


def _updated(bounds: tuple[Bound, ...]) -> list[ColumnElement[bool]]:
    column = Study.updated_at
    ops = {
        "eq": lambda t: column == t,
        "ne": lambda t: column != t,
        "lt": lambda t: column < t,
        "le": lambda t: column <= t,
        "gt": lambda t: column > t,
        "ge": lambda t: column >= t,
    }
    return [ops[op](moment) for op, moment in bounds]


def _conditions(query: Query, ctx: Context, patient: int | None) -> list[ColumnElement[bool]]:
    conditions, _ignored = filters_of(query, ctx, STUDY)
    if patient is not None:
        conditions.append(Study.identity_id.in_(linked_to(patient, ctx)))
    return conditions


def _after(study_uid: str) -> ColumnElement[bool]:
    """Studies after `study_uid` in newest-first order; none when it is unknown."""
    day = select(Study.study_date).where(Study.study_uid == study_uid).scalar_subquery()
    pk = select(Study.id).where(Study.study_uid == study_uid).scalar_subquery()
    return or_(Study.study_date < day, and_(Study.study_date == day, Study.id < pk))


def _before(study_uid: str) -> ColumnElement[bool]:
    """Studies before `study_uid` in newest-first order; none when it is unknown."""
    day = select(Study.study_date).where(Study.study_uid == study_uid).scalar_subquery()
    pk = select(Study.id).where(Study.study_uid == study_uid).scalar_subquery()
    return or_(Study.study_date > day, and_(Study.study_date == day, Study.id > pk))


def _members(
    session: Session, study_ids: list[int], *, instances: bool = True
) -> tuple[dict[int, list[Any]], dict[int, list[Any]]]:
    if not study_ids:
        return {}, {}
    series_rows = session.execute(
        select(
            Series.id,
            Series.study_id,
            Series.series_uid,
            Series.modality,
            Series.series_number,
            Series.description,
            Series.body_part,
            Series.num_instances,
        )
        .where(Series.study_id.in_(study_ids))
        .order_by(Series.study_id, Series.series_number.asc().nulls_last(), Series.id)
    ).all()
    series: dict[int, list[Any]] = {}
    for row in series_rows:
        series.setdefault(row.study_id, []).append(row)
    if not instances:
        return series, {}
    instance_rows = session.execute(
        select(Instance.series_id, Instance.sop_uid, Instance.sop_class_uid, Instance.instance_number)
        .where(Instance.study_id.in_(study_ids))
        .order_by(Instance.series_id, Instance.instance_number.asc().nulls_last(), Instance.id)
        .limit(MAX_INSTANCES)
    ).all()
    by_series: dict[int, list[Any]] = {}
    for instance in instance_rows:
        by_series.setdefault(instance.series_id, []).append(instance)
    return series, by_series
