"""What a batch of search rows needs besides its own columns, one statement per batch.

Rows of a search carry keys, counts and their own stored JSON; the attributes of their parent
study and series, the SOP classes of a study and the patient-level counts are read here for the
whole batch at once, so an answer of 1,000 matches costs a handful of statements, not one per
match. They run through Core on the session's connection: these are column selects, and the
ORM's handling of each statement (compile state, identity map) was a visible share of a scoped
instance search in profiles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson
from sqlalchemy import and_, func, literal, select, union_all
from sqlalchemy.orm import InstrumentedAttribute, Session

from storage.access.context import Context
from storage.access.policy import visible_to
from storage.errors import NotFound
from storage.index.models import Instance, Series, Study
from storage.query import answers


def study_pk(session: Session, ctx: Context, study_uid: str) -> int:
    """The key of a study `ctx` may see.

    Raises
    ------
    NotFound
        No such study, or `ctx` may not see it.
    """
    stmt = select(Study.id).where(Study.study_uid == study_uid, visible_to(ctx))
    pk = session.connection().scalar(stmt)
    if pk is None:
        raise NotFound(f"no study {study_uid[:80]}")
    return int(pk)


def study_attrs(session: Session, study_pks: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The stored study attributes of each study."""
    rows = session.connection().execute(select(Study.id, Study.attrs_json).where(Study.id.in_(set(study_pks))))
    return {pk: orjson.loads(text) for pk, text in rows}


def patient_totals(session: Session, ctx: Context, identity_ids: set[int]) -> dict[int, tuple[int, int, int, int, int]]:
    """Per patient identity: visible studies, their series and instances, the latest and the first
    visible study's keys."""
    if not identity_ids:
        return {}
    rows = session.execute(
        select(
            Study.identity_id,
            func.count(Study.id),
            func.sum(Study.num_series),
            func.sum(Study.num_instances),
            func.max(Study.id),
            func.min(Study.id),
        )
        .where(Study.identity_id.in_(identity_ids), visible_to(ctx))
        .group_by(Study.identity_id)
    )
    return {
        identity: (int(n), int(s or 0), int(i or 0), int(last), int(first)) for identity, n, s, i, last, first in rows
    }


def computed(
    session: Session, ctx: Context, rows: list[Any], wanted: frozenset[str]
) -> Callable[[Any], dict[str, Any]]:
    """SOPClassesInStudy and NumberOfPatientRelated* of a batch of rows, one query each if asked."""
    if not rows:
        return lambda _row: {}
    classes: dict[int, list[str]] = {}
    if answers.SOP_CLASSES in wanted:
        pairs = session.execute(
            select(Instance.study_id, Instance.sop_class_uid)
            .where(Instance.study_id.in_({r.study_pk for r in rows}))
            .distinct()
        )
        for pk, sop_class in pairs:
            classes.setdefault(pk, []).append(sop_class)
    counts: dict[int, dict[str, Any]] = {}
    if wanted & answers.PATIENT_COUNTS:
        totals = patient_totals(session, ctx, {r.identity_id for r in rows})
        counts = {identity: answers.patient_counts(*t[:3]) for identity, t in totals.items()}

    def of(row: Any) -> dict[str, Any]:
        attrs = dict(counts.get(row.identity_id, {}))
        if answers.SOP_CLASSES in wanted:
            found = sorted(classes.get(row.study_pk, []))
            attrs[answers.SOP_CLASSES] = {"vr": "UI", "Value": found} if found else {"vr": "UI"}
        return attrs

    return of


def first_instances(
    session: Session, parent: InstrumentedAttribute[int], pks: set[int], drop: frozenset[str]
) -> dict[int, dict[str, Any]]:
    """The attributes of the first instance the archive received of each study or series.

    `parent` is `Instance.study_id` or `Instance.series_id` and `pks` their keys. What a study or
    series answers beyond what ingest kept at its level comes from there (an `includefield` of
    InstitutionName at study level, `includefield=all`), without bulk data and without `drop`.
    """
    if not pks:
        return {}
    first = select(func.min(Instance.id)).where(parent.in_(pks)).group_by(parent)
    rows = session.connection().execute(select(parent, Instance.dicom_json).where(Instance.id.in_(first)))
    out: dict[int, dict[str, Any]] = {}
    for pk, text in rows:
        attrs = answers.without_bulk(orjson.loads(text))
        out[pk] = {tag: element for tag, element in attrs.items() if tag not in drop}
    return out


class Parents:
    """The study and series attributes of the instances of a search, each parsed once."""

    def __init__(self) -> None:
        self._studies: dict[int, dict[str, Any]] = {}
        self._series: dict[int, dict[str, Any]] = {}
        self._series_uids: dict[str, int] = {}

    def load(self, session: Session, rows: list[Any]) -> None:
        """Read the attributes of the studies and series of `rows` not read yet."""
        studies = {r.study_pk for r in rows} - self._studies.keys()
        series = {r.series_pk for r in rows} - self._series.keys()
        if studies:
            self._studies.update(study_attrs(session, studies))
        if series:
            found = session.connection().execute(select(Series.id, Series.attrs_json).where(Series.id.in_(series)))
            self._series.update({pk: orjson.loads(text) for pk, text in found})

    def load_scope(self, session: Session, ctx: Context, study_uid: str) -> int:
        """The key of the study a search is scoped to; its attributes and all its series' too.

        One statement instead of three round trips (the study's key, then `load`'s two; four
        with a series in the scope): on a loaded two-core host each round trip costs a switch
        to the server process and back, more than reading the attributes of a few series the
        page may not reach.

        Raises
        ------
        NotFound
            No such study, or `ctx` may not see it.
        """
        visible = and_(Study.study_uid == study_uid, visible_to(ctx))
        scope = union_all(
            select(literal(True), Study.id, Study.study_uid, Study.attrs_json).where(visible),
            select(literal(False), Series.id, Series.series_uid, Series.attrs_json)
            .join(Study, Study.id == Series.study_id)
            .where(visible),
        )
        found = None
        for is_study, pk, uid, attrs_json in session.connection().execute(scope):
            if is_study:
                found = pk
                self._studies[pk] = orjson.loads(attrs_json)
            else:
                self._series_uids[uid] = pk
                self._series[pk] = orjson.loads(attrs_json)
        if found is None:
            raise NotFound(f"no study {study_uid[:80]}")
        return int(found)

    def series_pk(self, series_uid: str) -> int:
        """The key of a series of the study `load_scope` read, or NotFound."""
        pk = self._series_uids.get(series_uid)
        if pk is None:
            raise NotFound(f"no series {series_uid[:80]} in this study")
        return pk

    def of(self, row: Any) -> dict[str, Any]:
        """The study and series attributes of an instance row (series' over study's)."""
        return self._studies.get(row.study_pk, {}) | self._series.get(row.series_pk, {})
