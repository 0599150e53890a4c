"""Patient, study, series and instance search over the index (PS3.18 10.6, PS3.4 C.6.1, C.6.2).

A `Query` says what to match and what to return, in DICOM terms (tags and values as sent),
whoever asked: QIDO-RS builds it from URL parameters, C-FIND from its identifier. The search
turns its keys into SQL on indexed columns (`storage.query.keys`), applies the caller's
visibility (`storage.access.policy.visible_to`), orders the rows, and answers DICOM JSON
(PS3.18 F.2) built from what ingest kept (`storage.query.answers`). No blob is ever opened.

QIDO-RS reads one page (`search`, at most `MAX_RESULTS`); C-FIND reads every match
(`search_all`) from one statement fetched in batches, so a long answer costs neither a query
per match nor the memory of all of them, and the caller can stop between matches (C-CANCEL).
What a batch needs beyond its rows (parents' attributes, SOPClassesInStudy,
NumberOfPatientRelated*) costs one statement per batch, and only when asked for
(`storage.query.lookups`). Default QIDO-RS answers of studies and instances take the spliced
fast paths of `storage.query.splice`, which answer what the paths here answer.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import ColumnElement, CursorResult, Result, exists, func, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from storage.access.context import Context
from storage.access.policy import visible_by_date, visible_to
from storage.dicom.parse import INSTANCE_TAGS, SERIES_TAGS, STUDY_TAGS
from storage.index.db import TEXT_AS_BYTES
from storage.index.models import Instance, PatientIdentity, Series, Study
from storage.query import answers, lookups, splice
from storage.query.keys import IMAGE, PATIENT, SERIES, STUDY, filters
from storage.query.linked import across_links
from storage.query.matching import InvalidQuery

#: answers are cut here whatever the caller asks (PS3.18 8.3.4.4)
MAX_RESULTS = 1000
#: rows fetched at a time when every match is read (C-FIND)
BATCH = 500
#: what an instance answer can be built from without the instance's whole JSON
_SUBSET_TAGS = INSTANCE_TAGS | SERIES_TAGS | STUDY_TAGS


@dataclass(frozen=True, slots=True)
class Query:
    """One search: its level, matching keys, return keys and scope.

    `keys` maps tags (8 upper-case hex digits, as in DICOM JSON) to values as sent; an empty
    value is a return key only (Universal Matching). `include` adds return keys, `include_all`
    asks for every attribute kept (bulk data excepted). `study_uid` / `series_uid` scope the
    search to one study or series (the QIDO-RS path). `only_requested` is C-FIND's answer
    shape (PS3.4 C.4.1.1.3.2): exactly the keys and `include`, an unknown value as an empty
    element, none of QIDO-RS's default attributes.
    """

    level: str
    keys: Mapping[str, str] = field(default_factory=dict)
    include: frozenset[str] = frozenset()
    include_all: bool = False
    fuzzy: bool = False
    study_uid: str | None = None
    series_uid: str | None = None
    only_requested: bool = False


#: one match: a DICOM JSON data set, or the bytes of one already serialized
Match = dict[str, Any] | bytes


@dataclass(frozen=True, slots=True)
class SearchResult:
    """One page of matches (DICOM JSON data sets), whether more follow, and unmatched keys.

    A default study or instance answer is spliced from the stored JSON without parsing it
    (`storage.query.splice`), so an item may be serialized bytes: `to_json` writes the page
    without a parse and serialize round trip, and `matches` gives every item as a dict for
    the edges that need one.
    """

    items: list[Match]
    more: bool
    ignored: tuple[str, ...] = ()

    @property
    def matches(self) -> list[dict[str, Any]]:
        return [_as_dict(item) for item in self.items]

    def to_json(self) -> bytes:
        """The page as a DICOM JSON array (PS3.18 F.2), written in one allocation.

        A page of 1,000 studies is ~900 KB. Joining it, then adding the brackets, held three
        such copies at once, and the allocator gave that memory back and faulted it in again
        on every request (~650 page faults a request in the server, ~2 ms); one copy, none.
        """
        parts = [b"["]
        for item in self.items:
            parts += (item if isinstance(item, bytes) else orjson.dumps(item), b",")
        parts[-1] = b"]" if self.items else b"[]"
        return b"".join(parts)


def _as_dict(item: Match) -> dict[str, Any]:
    if isinstance(item, bytes):
        parsed: dict[str, Any] = orjson.loads(item)
        return parsed
    return item


@dataclass(frozen=True, slots=True)
class Matches:
    """Every match of a query, read as the caller iterates, and the keys matched universally."""

    matches: Iterator[dict[str, Any]]
    ignored: tuple[str, ...] = ()


#: one row of a plan's statement: a named tuple (`_records`), or a plain tuple where `named` is off
Record = Any
Build = Callable[[Session, list[Record]], Iterator[Match]]


@dataclass(frozen=True, slots=True)
class _Plan:
    """The statement of a search and how a batch of its rows becomes DICOM JSON, row by row."""

    stmt: Any
    build: Build
    ignored: tuple[str, ...]
    named: bool = True  # False: `build` unpacks the rows by position and needs no `_records`
    #: one page of `stmt` (LIMIT, OFFSET) when a plain LIMIT on it is not the fast way (`_keys_first`)
    paged: Callable[[int, int], Any] | None = None

    def page(self, size: int, offset: int) -> Any:
        """`stmt` cut to `size` rows from `offset`."""
        return self.paged(size, offset) if self.paged else self.stmt.limit(size).offset(offset)


@dataclass(frozen=True, slots=True)
class _Shape:
    """What each answer of a query carries (see `answers.select`)."""

    wanted: frozenset[str]
    empty: dict[str, dict[str, Any]]
    include_all: bool
    only_requested: bool

    @classmethod
    def of(cls, query: Query, defaults: frozenset[str]) -> _Shape:
        requested = answers.requested(query.keys, query.include)
        wanted = answers.wanted(requested, defaults, only_requested=query.only_requested)
        empty = answers.empties(wanted, only_requested=query.only_requested)
        return cls(wanted, empty, query.include_all, query.only_requested)

    def select(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return answers.select(
            attrs, self.wanted, include_all=self.include_all, only_requested=self.only_requested, empty=self.empty
        )


def search(
    query: Query,
    ctx: Context,
    *,
    session: Session,
    limit: int | None = None,
    offset: int = 0,
    base_url: str = "",
) -> SearchResult:
    """One page of matches at `query.level` that `ctx` may see (PS3.18 10.6.1, PS3.4 C.6).

    - PATIENT: identities (issuer, patient ID) with at least one visible study, not merged
      (the patient index links them); NumberOfPatientRelated* count visible studies only;
      ordered by name.
    - STUDY: newest study date first, then most recently indexed.
    - SERIES / IMAGE: in the study (and series) of the scope, else across every visible study,
      with the study's (and series') default attributes too; ordered by study, then series
      and instance number, then arrival.

    `base_url` (the DICOMweb root) makes RetrieveURL (0008,1190); without it, it is left out.

    Raises
    ------
    InvalidQuery
        A key's value cannot be matched (a malformed date range, an invalid UID...).
    NotFound
        The study or series of the scope does not exist or `ctx` may not see it.
    """
    plan = _PLANNERS[query.level](query, ctx, session, base_url)
    size = MAX_RESULTS if limit is None else min(limit, MAX_RESULTS)
    if size < 0 or offset < 0:
        raise InvalidQuery("limit and offset must not be negative")
    # Core execution on the session's connection: these are column selects, and the ORM's result
    # loading cost as much as the SQL itself for a page of 1,000 rows.
    result = session.connection().execute(plan.page(size + 1, offset))
    rows = _records(result) if plan.named else _driver_rows(result)
    return SearchResult(list(plan.build(session, rows[:size])), len(rows) > size, plan.ignored)


def search_all(query: Query, ctx: Context, *, session: Session, batch: int = BATCH) -> Matches:
    """Every match at `query.level`, for C-FIND, which has no page size (PS3.4 C.4.1.3.1).

    The statement runs at once (so a database failure is raised here) and is fetched `batch`
    rows at a time (a server-side cursor on PostgreSQL) as `matches` is iterated, inside the
    caller's session, which must stay open until then; stopping early costs nothing more.

    Raises
    ------
    InvalidQuery
        A key's value cannot be matched.
    """
    plan = _PLANNERS[query.level](query, ctx, session, "")
    # Core execution, as `search`; yield_per for this statement only (Connection.execution_options
    # would set it for the rest of the session's statements too); it also sets the partitions' size.
    result = session.connection().execute(plan.stmt, execution_options={"yield_per": batch})
    return Matches(_stream(session, plan, result), plan.ignored)


def _stream(session: Session, plan: _Plan, result: Result[Any]) -> Iterator[dict[str, Any]]:
    try:
        record = _record_type(tuple(result.keys()))
        for rows in result.partitions():
            batch = list(map(record._make, rows)) if plan.named else list(rows)
            yield from map(_as_dict, plan.build(session, batch))
    finally:
        result.close()


def _records(result: Result[Any]) -> list[Record]:
    """The rows of `result` as named tuples.

    The builders read each row's columns by name, several times per match, and a SQLAlchemy
    `Row` answers a name through its key map (~0.8 us a read here, against ~0.05 us for a
    named tuple): for a page of 1,000 matches that was most of the Python time of a search.
    """
    record = _record_type(tuple(result.keys()))
    return list(map(record._make, result.all()))


def _driver_rows(result: CursorResult[Any]) -> list[Any]:
    """The rows of `result` as the database driver gives them, for a plan that reads them by
    position (the spliced study answers): integers and text (or bytes, `TEXT_AS_BYTES`), which
    no SQLAlchemy result processor changes, and a `Row` built around each of 1,000 tuples cost
    as much as fetching them."""
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


@lru_cache(maxsize=64)
def _record_type(names: tuple[str, ...]) -> Any:
    """One named tuple class per column list (a plan's statement has a fixed one)."""
    return namedtuple("Record", names)  # the field names are known at run time only


# ----- one plan per level ------------------------------------------------------------------


def _patients(query: Query, ctx: Context, session: Session, base_url: str) -> _Plan:
    """PATIENT level: the identities of which the caller sees a study, answered as its studies say.

    One identity (an issuer's patient ID) may hold studies of several organizations, each sent
    with its own spelling of the name: the name is matched on the caller's visible studies, and
    the name, birth date and sex are answered from the first of them (the identity's own when
    the caller sent it first), the other patient attributes from the latest; never from another
    organization's study.
    """
    del session, base_url
    name = {tag: v for tag, v in query.keys.items() if tag == NAME}
    keys, linked = across_links(query.keys, ctx, PatientIdentity.id)
    conditions, ignored = filters({t: v for t, v in keys.items() if t != NAME}, PATIENT, fuzzy=query.fuzzy)
    conditions.extend(() if linked is None else (linked,))
    has_visible_study: ColumnElement[bool]
    if name:  # driven by the studies' name index: the identities of the visible studies so named
        by_name, _ = filters(name, STUDY, fuzzy=query.fuzzy)
        has_visible_study = PatientIdentity.id.in_(select(Study.identity_id).where(visible_to(ctx), *by_name))
    else:
        has_visible_study = exists().where(Study.identity_id == PatientIdentity.id, visible_to(ctx))
    stmt = (
        select(
            PatientIdentity.id.label("identity_id"),
            PatientIdentity.issuer_kind,
            PatientIdentity.issuer,
            PatientIdentity.patient_id,
            PatientIdentity.patient_name,
            PatientIdentity.birth_date,
            PatientIdentity.sex,
        )
        .where(has_visible_study, *conditions)
        .order_by(PatientIdentity.patient_name_folded, PatientIdentity.id)
    )
    shape = _Shape.of(query, answers.IDENTITY_TAGS)

    def build(session: Session, rows: list[Record]) -> Iterator[Match]:
        totals = lookups.patient_totals(session, ctx, {r.identity_id for r in rows})
        kept = lookups.study_attrs(session, {t[i] for t in totals.values() for i in (3, 4)}) if rows else {}
        for row in rows:
            counts = totals.get(row.identity_id, (0, 0, 0, -1, -1))
            latest, first = kept.get(counts[3], {}), kept.get(counts[4], {})
            attrs = answers.identity_attrs(row)
            attrs.update({tag: latest[tag] for tag in (answers.PATIENT_TAGS - _DEMOGRAPHICS) & latest.keys()})
            attrs.update({tag: first[tag] for tag in _DEMOGRAPHICS - _IDENTITY_KEYS if tag in first})
            attrs.update(answers.patient_counts(*counts[:3]))
            yield shape.select(attrs)

    return _Plan(stmt, build, ignored)


NAME = "00100010"
#: the identity's own key: the same in every study of it, so answered from the identity row
_IDENTITY_KEYS = frozenset({"00100020", "00100021"})
#: who the patient is, as the first study the caller sees says (name, birth date, sex)
_DEMOGRAPHICS = _IDENTITY_KEYS | {"00100010", "00100030", "00100040"}


def filters_of(query: Query, ctx: Context, level: str) -> tuple[list[ColumnElement[bool]], tuple[str, ...]]:
    """`keys.filters` of the query's keys at `level` (STUDY and below), a patient named with its
    issuer matched across the person's linked identities (`storage.query.linked`)."""
    keys, linked = across_links(query.keys, ctx, Study.identity_id)
    conditions, ignored = filters(keys, level, fuzzy=query.fuzzy)
    if linked is not None:
        conditions.append(linked)
    return conditions, ignored


def _studies(query: Query, ctx: Context, session: Session, base_url: str) -> _Plan:
    del session
    conditions, ignored = filters_of(query, ctx, STUDY)
    if query.study_uid is not None:
        conditions.append(Study.study_uid == query.study_uid)
    stmt = select(*splice.STUDY_COLUMNS).where(visible_to(ctx), *conditions).order_by(*_NEWEST_STUDY_FIRST)
    shape = _Shape.of(query, answers.STUDY_DEFAULTS)
    lower = _Lower.of(query, STUDY, STUDY_TAGS)
    if not (query.only_requested or query.include_all or shape.wanted & answers.COMPUTED_PER_BATCH or lower):
        spliced = splice.studies(base_url)
        paged = _keys_first(ctx, conditions, {TEXT_AS_BYTES: True})
        stmt = stmt.execution_options(**{TEXT_AS_BYTES: True})
        return _Plan(stmt, lambda _s, rows: spliced(rows), ignored, named=False, paged=paged)

    def build(session: Session, rows: list[Record]) -> Iterator[Match]:
        computed = lookups.computed(session, ctx, rows, shape.wanted)
        first = lower.read(session, Instance.study_id, {r.study_pk for r in rows})
        for row in rows:
            attrs = first.get(row.study_pk, {}) | orjson.loads(row.attrs_json)
            attrs.update(answers.study_computed(row))
            attrs.update(computed(row))
            answers.set_value(attrs, "00081190", "UR", f"{base_url}/studies/{row.study_uid}" if base_url else None)
            yield shape.select(attrs)

    return _Plan(stmt, build, ignored, paged=_keys_first(ctx, conditions, {}))


_NEWEST_STUDY_FIRST = (Study.study_date.desc(), Study.id.desc())


def _keys_first(
    ctx: Context, conditions: list[ColumnElement[bool]], options: dict[str, Any]
) -> Callable[[int, int], Any] | None:
    """A page of studies chosen by their keys alone, then read: the ids and dates of the page's
    studies first (from an index where one covers them), and only those studies' rows after.

    `ORDER BY ... LIMIT` on whole rows makes SQLite sort every match with its stored JSON for the
    first 1,000 of several thousand (a frequent family name), and both databases read every
    study of an organization before the first page of its list; sorting (id, date) pairs and
    then reading 1,000 rows by primary key is the same answer for less (benchmarks/README.md,
    "Access control and audit"). An organization's list with no other condition takes its
    keys from `visible_by_date` (its owned studies' dates are indexed), every other search
    from `studies` under `visible_to`. None for a list with no condition of a caller who sees
    every study: `ix_studies_date_id` read backwards is that page already, and the LIMIT stops
    it. `search_all` (C-FIND, no page) keeps the plain statement.
    """
    if not conditions and visible_by_date(ctx) is None:
        return None

    def keys(newest: int) -> Any:
        by_date = None if conditions else visible_by_date(ctx, newest)
        if by_date is None:
            chosen = select(Study.id.label("pk"), Study.study_date.label("day")).where(visible_to(ctx), *conditions)
            return chosen.order_by(*_NEWEST_STUDY_FIRST)
        visible = by_date.subquery("visible")
        chosen = select(visible.c.study_pk.label("pk"), visible.c.study_date.label("day"))
        return chosen.order_by(visible.c.study_date.desc(), visible.c.study_pk.desc())

    def paged(size: int, offset: int) -> Any:
        chosen = keys(size + offset).limit(size).offset(offset).subquery("page")
        return (
            select(*splice.STUDY_COLUMNS)
            .join_from(Study, chosen, Study.id == chosen.c.pk)
            .order_by(chosen.c.day.desc(), chosen.c.pk.desc())
            .execution_options(**options)
        )

    return paged


def _series(query: Query, ctx: Context, session: Session, base_url: str) -> _Plan:
    conditions, ignored = filters_of(query, ctx, SERIES)
    stmt = (
        select(
            Series.id.label("series_pk"),
            Series.series_uid,
            Series.attrs_json,
            Series.num_instances.label("series_instances"),
            Study.id.label("study_pk"),
            Study.identity_id,
            Study.study_uid,
            Study.attrs_json.label("study_json"),
            Study.modalities,
            Study.num_series,
            Study.num_instances,
        )
        .join(Study, Study.id == Series.study_id)
        .where(visible_to(ctx), *conditions)
    )
    order: list[Any] = [Series.series_number.asc().nulls_last(), Series.id]
    if query.study_uid is not None:
        stmt = stmt.where(Series.study_id == lookups.study_pk(session, ctx, query.study_uid))
    else:
        order = [Study.study_date.desc(), Study.id.desc(), *order]
    defaults = answers.SERIES_DEFAULTS | (answers.STUDY_DEFAULTS if query.study_uid is None else frozenset())
    shape = _Shape.of(query, defaults)
    lower = _Lower.of(query, SERIES, STUDY_TAGS | SERIES_TAGS)

    def build(session: Session, rows: list[Record]) -> Iterator[Match]:
        computed = lookups.computed(session, ctx, rows, shape.wanted)
        first = lower.read(session, Instance.series_id, {r.series_pk for r in rows})
        for row in rows:
            attrs = first.get(row.series_pk, {}) | orjson.loads(row.study_json)
            attrs.update(answers.study_computed(row))
            attrs.update(computed(row))
            attrs.update(orjson.loads(row.attrs_json))
            answers.set_value(attrs, "0020000D", "UI", row.study_uid)
            answers.set_value(attrs, "00201209", "IS", row.series_instances)
            url = f"{base_url}/studies/{row.study_uid}/series/{row.series_uid}" if base_url else None
            answers.set_value(attrs, "00081190", "UR", url)
            yield shape.select(attrs)

    return _Plan(stmt.order_by(*order), build, ignored)


@dataclass(frozen=True, slots=True)
class _Lower:
    """The attributes a study or series search answers from the first instance of each match:
    those asked for that ingest does not keep at the level (`names`), or all (`includefield=all`)."""

    names: frozenset[str]
    everything: bool
    drop: frozenset[str]

    @classmethod
    def of(cls, query: Query, level: str, kept: frozenset[str]) -> _Lower:
        asked = {t for t in answers.requested(query.keys, query.include) if "." not in t}
        drop = answers.LOWER_IDENTITY[level]
        return cls(frozenset(asked - kept - answers.COMPUTED_TAGS - drop), query.include_all, drop)

    def __bool__(self) -> bool:
        return bool(self.names) or self.everything

    def read(self, session: Session, parent: InstrumentedAttribute[int], pks: set[int]) -> dict[int, dict[str, Any]]:
        """Per study or series key, the first instance's attributes this search answers."""
        if not self:
            return {}
        found = lookups.first_instances(session, parent, pks, self.drop)
        if self.everything:
            wanted = self.names
            return {
                pk: {t: e for t, e in a.items() if t in wanted or not answers.is_per_image(t)}
                for pk, a in found.items()
            }
        return {pk: {t: attrs[t] for t in self.names if t in attrs} for pk, attrs in found.items()}


def _instance_defaults(query: Query) -> frozenset[str]:
    """Outside a series (or a study) the series' (and the study's) default attributes come along."""
    if query.study_uid is None:
        return answers.INSTANCE_DEFAULTS | answers.STUDY_DEFAULTS | answers.SERIES_DEFAULTS
    if query.series_uid is None:
        return answers.INSTANCE_DEFAULTS | answers.SERIES_DEFAULTS
    return answers.INSTANCE_DEFAULTS


def _reads_subset(query: Query, wanted: frozenset[str]) -> bool:
    """Whether an instance search can read the instance-level subset instead of the whole JSON.

    The subset (`Instance.attrs_json`, a tenth of the whole) is completed with the study's and
    the series' attributes (`lookups.Parents`); asking for anything else (`includefield=all`,
    an attribute kept only in the whole JSON) reads the whole JSON, as do rows indexed before
    the subset existed (NULL: `coalesce`).
    """
    return not query.include_all and {t for t in wanted if "." not in t} <= _SUBSET_TAGS | answers.COMPUTED_TAGS


def _instances(query: Query, ctx: Context, session: Session, base_url: str) -> _Plan:
    conditions, ignored = filters_of(query, ctx, IMAGE)
    shape = _Shape.of(query, _instance_defaults(query))
    subset = _reads_subset(query, shape.wanted)
    json_column = func.coalesce(Instance.attrs_json, Instance.dicom_json) if subset else Instance.dicom_json
    stmt = (
        select(
            Instance.sop_uid,
            json_column.label("dicom_json"),
            (Instance.attrs_json.is_(None) if subset else true()).label("whole"),
            Instance.number_of_frames,
            Instance.transfer_syntax_uid,
            Series.id.label("series_pk"),
            Series.series_uid,
            Series.num_instances.label("series_instances"),
            Study.id.label("study_pk"),
            Study.identity_id,
            Study.study_uid,
            Study.modalities,
            Study.num_series,
            Study.num_instances,
        )
        .join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Instance.study_id)
        .where(visible_to(ctx), *conditions)
    )
    parents = lookups.Parents()
    order: list[Any] = [Instance.instance_number.asc().nulls_last(), Instance.id]
    if query.study_uid is None:
        order = [Study.study_date.desc(), Study.id.desc(), Series.series_number.asc().nulls_last(), Series.id, *order]
    else:
        stmt = stmt.where(Instance.study_id == parents.load_scope(session, ctx, query.study_uid))
        if query.series_uid is None:
            order = [Series.series_number.asc().nulls_last(), Series.id, *order]
        else:
            stmt = stmt.where(Instance.series_id == parents.series_pk(query.series_uid))
    # the spliced answer is the stored subset as it is: only where nothing is asked of it but that
    spliced = subset and not (query.only_requested or shape.wanted & (answers.COMPUTED_PER_BATCH | {"00083002"}))
    splicer = splice.InstanceSplicer(shape.wanted, base_url, parents.of)

    def url(row: Record) -> str | None:
        return (
            f"{base_url}/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}" if base_url else None
        )

    def answer(row: Record, computed: Callable[[Record], dict[str, Any]]) -> dict[str, Any]:
        stored = parents.of(row) | orjson.loads(row.dicom_json)
        if not query.include_all:  # keep the few wanted attributes before walking any of them
            stored = {tag: stored[tag] for tag in shape.wanted if tag in stored}
        attrs = answers.without_bulk(stored)
        attrs.update(answers.study_computed(row))
        attrs.update(computed(row))
        if "00280008" not in attrs and row.number_of_frames:  # single-frame objects have no element
            answers.set_value(attrs, "00280008", "IS", row.number_of_frames)
        answers.set_value(attrs, "00201209", "IS", row.series_instances)
        if "00083002" in shape.wanted:  # AvailableTransferSyntaxUID (PS3.4 C.6.1.1.5)
            answers.set_value(attrs, "00083002", "UI", row.transfer_syntax_uid)
        answers.set_value(attrs, "00081190", "UR", url(row))
        return shape.select(attrs)

    def build(session: Session, rows: list[Record]) -> Iterator[Match]:
        computed = lookups.computed(session, ctx, rows, shape.wanted)
        parents.load(session, rows)
        for row in rows:
            yield splicer.answer(row) if spliced and not row.whole else answer(row, computed)

    return _Plan(stmt.order_by(*order), build, ignored)


_PLANNERS: dict[str, Callable[[Query, Context, Session, str], _Plan]] = {
    PATIENT: _patients,
    STUDY: _studies,
    SERIES: _series,
    IMAGE: _instances,
}
