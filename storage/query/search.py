"""Patient, study, series and instance search over the index (PS3.18 10.6, PS3.4 C.6.1, C.6.2).

A `Query` says what to match and what to return, in DICOM terms (tags and values as sent),
whoever asked: QIDO-RS builds it from URL parameters, C-FIND from its identifier. The search
functions turn its keys into SQL on indexed columns (`storage.query.matching`), apply the caller's
visibility (`storage.access.principal.visible_to`), order the rows, and answer DICOM JSON (PS3.18 F.2)
built from what ingest kept: the patient identity, the study and series attributes of their
first instance, each instance's JSON without bulk data, and the counts ingest maintains. No
blob is ever opened.

QIDO-RS reads one page (`search`, at most `MAX_RESULTS`); C-FIND reads every match
(`search_all`) from one statement fetched in batches, so a long answer costs neither a query
per match nor the memory of all of them, and the caller can stop between matches (C-CANCEL).
The computed attributes of PS3.4 C.3.4 that are not kept on the row (SOPClassesInStudy,
NumberOfPatientRelated*) cost one query per batch, and only when they are asked for.

A key this archive cannot match on (a valid attribute with no index column, or a sequence
path) is matched universally, as PS3.4 C.2.2.2.3 does for unsupported optional keys: it is
returned when available and reported in `ignored`, so the edge can warn (QIDO-RS Warning 299,
C-FIND 0xFF01).
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson
from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, Result, and_, exists, func, literal, select, true, union_all
from sqlalchemy.orm import Session

from storage.access.principal import Principal, visible_to
from storage.dicom.parse import INSTANCE_TAGS, SERIES_TAGS, STUDY_TAGS
from storage.errors import NotFound
from storage.index.db import TEXT_AS_BYTES
from storage.index.models import Instance, PatientIdentity, Series, Study
from storage.query import matching as m
from storage.query.matching import InvalidQuery

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
_DEPTH = {PATIENT: -1, STUDY: 0, SERIES: 1, IMAGE: 2}
#: answers are cut here whatever the caller asks (PS3.18 8.3.4.4)
MAX_RESULTS = 1000
#: rows fetched at a time when every match is read (C-FIND)
BATCH = 500

Builder = Callable[[str, bool], ColumnElement[bool] | None]


def _plain(column: Any, fn: Callable[[Any, str], ColumnElement[bool] | None]) -> Builder:
    return lambda value, _fuzzy: fn(column, value)


def _name(column: Any) -> Builder:
    return lambda value, fuzzy: m.person_name(column, value, fuzzy=fuzzy)


def _issuer(column: Any, value: str) -> ColumnElement[bool] | None:
    """IssuerOfPatientID matches only identities whose issuer the sender gave (not an org or AE)."""
    expr = m.string(column, value)
    return None if expr is None else and_(PatientIdentity.issuer_kind == "dicom", expr)


def _patient(column: Any, fn: Callable[[Any, str], ColumnElement[bool] | None]) -> Builder:
    """A key kept on the patient identity of the study, not on the study row."""

    def build(value: str, _fuzzy: bool) -> ColumnElement[bool] | None:
        expr = fn(column, value)
        return None if expr is None else Study.identity_id.in_(select(PatientIdentity.id).where(expr))

    return build


#: tag -> (level, SQL builder): the keys this archive matches on at STUDY level and below
MATCH_KEYS: dict[str, tuple[str, Builder]] = {
    "00080020": (STUDY, _plain(Study.study_date, m.date)),
    "00080030": (STUDY, _plain(Study.study_time, m.time)),
    "00080050": (STUDY, _plain(Study.accession_number, m.string)),
    "00080061": (STUDY, _plain(Study.modalities, m.multi_valued)),
    "00080090": (STUDY, _name(Study.referring_physician_folded)),
    "00081030": (STUDY, _plain(Study.description, m.string)),
    "00100010": (STUDY, _name(Study.patient_name_folded)),
    "00100020": (STUDY, _plain(Study.patient_id, m.string)),
    "00100021": (STUDY, _patient(PatientIdentity.issuer, _issuer)),
    "00100030": (STUDY, _patient(PatientIdentity.birth_date, m.date)),
    "00100040": (STUDY, _patient(PatientIdentity.sex, m.string)),
    "0020000D": (STUDY, _plain(Study.study_uid, m.uid_list)),
    "00200010": (STUDY, _plain(Study.study_id, m.string)),
    "00080021": (SERIES, _plain(Series.series_date, m.date)),
    "00080031": (SERIES, _plain(Series.series_time, m.time)),
    "00080060": (SERIES, _plain(Series.modality, m.string)),
    "0008103E": (SERIES, _plain(Series.description, m.string)),
    "00180015": (SERIES, _plain(Series.body_part, m.string)),
    "0020000E": (SERIES, _plain(Series.series_uid, m.uid_list)),
    "00200011": (SERIES, _plain(Series.series_number, m.integer)),
    "00080016": (IMAGE, _plain(Instance.sop_class_uid, m.uid_list)),
    "00080018": (IMAGE, _plain(Instance.sop_uid, m.uid_list)),
    "00200013": (IMAGE, _plain(Instance.instance_number, m.integer)),
    "00280008": (IMAGE, _plain(Instance.number_of_frames, m.integer)),
    "00280010": (IMAGE, _plain(Instance.rows, m.integer)),
    "00280011": (IMAGE, _plain(Instance.columns, m.integer)),
}
#: the keys matched at PATIENT level (PS3.4 Table C.6-1), on the patient identity
PATIENT_KEYS: dict[str, tuple[str, Builder]] = {
    "00100010": (PATIENT, _name(PatientIdentity.patient_name_folded)),
    "00100020": (PATIENT, _plain(PatientIdentity.patient_id, m.string)),
    "00100021": (PATIENT, _plain(PatientIdentity.issuer, _issuer)),
    "00100030": (PATIENT, _plain(PatientIdentity.birth_date, m.date)),
    "00100040": (PATIENT, _plain(PatientIdentity.sex, m.string)),
}

#: PS3.18 Table 10.6.3-3, plus Study Description, which every viewer's study list shows
STUDY_DEFAULTS = frozenset(
    "00080005 00080020 00080030 00080050 00080056 00080061 00080090 00080201 00081030 00081190 "
    "00100010 00100020 00100030 00100040 0020000D 00200010 00201206 00201208".split()
)
#: PS3.18 Table 10.6.3-4 (Study Instance UID too, so a series can be addressed)
SERIES_DEFAULTS = frozenset(
    "00080005 00080060 00080201 0008103E 00081190 0020000D 0020000E 00200011 00201209 "
    "00400244 00400245 00400275".split()
)
#: PS3.18 Table 10.6.3-5 (Study and Series Instance UIDs too)
INSTANCE_DEFAULTS = frozenset(
    "00080005 00080016 00080018 00080056 00080201 00081190 0020000D 0020000E 00200013 "
    "00280008 00280010 00280011 00280100".split()
)
#: attributes of the Patient IE that a study's kept attributes may hold (PATIENT level answers)
_PATIENT_TAGS = frozenset(
    "00100010 00100020 00100021 00100024 00100030 00100032 00100040 00101000 00101001 00101002 "
    "00101040 00102160 00104000".split()
)
_SOP_CLASSES = "00080062"  # SOPClassesInStudy
_PATIENT_COUNTS = frozenset({"00201200", "00201202", "00201204"})  # NumberOfPatientRelated*
_COMPUTED_PER_BATCH = _PATIENT_COUNTS | {_SOP_CLASSES}  # need a query over the whole batch
#: answered from columns and counts, or added by the edge, never read from stored JSON
_COMPUTED_TAGS = _COMPUTED_PER_BATCH | frozenset(
    "00080052 00080054 00080056 00080061 00081190 00083002 00201206 00201208 00201209".split()
)
_IDENTITY_TAGS = frozenset(PATIENT_KEYS) | _PATIENT_COUNTS  # what a PATIENT row answers by itself
_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


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

    A default study answer is spliced from the stored JSON without parsing it (`_studies`), so
    an item may be serialized bytes: `to_json` writes the page without a parse and serialize
    round trip, and `matches` gives every item as a dict for the edges that need one.
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


#: one row of a plan's statement, its columns read by name (`_records`)
Record = Any
Build = Callable[[Session, list[Record]], Iterator[Match]]


@dataclass(frozen=True, slots=True)
class _Plan:
    """The statement of a search and how a batch of its rows becomes DICOM JSON, row by row."""

    stmt: Any
    build: Build
    ignored: tuple[str, ...]
    named: bool = True  # False: `build` unpacks the rows by position and needs no `_records`


def attribute_tag(name: str) -> str:
    """The tag of a keyword (``PatientAge``) or of a tag written as 8 hex digits (``00101010``).

    Raises
    ------
    InvalidQuery
        `name` is neither a keyword nor a tag of the data dictionary (PS3.6 Table 6-1); private
        tags (odd groups) are accepted.
    """
    text = name.strip()
    if _HEX_TAG.match(text):
        tag = int(text, 16)
        if dictionary_has_tag(tag) or (tag >> 16) % 2 == 1:
            return f"{tag:08X}"
        raise InvalidQuery(f"unknown attribute {name!r}: not a tag of the DICOM data dictionary")
    found = tag_for_keyword(text)
    if found is None:
        raise InvalidQuery(f"unknown attribute {name!r}: not a keyword or tag of the DICOM data dictionary")
    return f"{found:08X}"


def keyword(tag: str) -> str:
    """``00100010`` -> ``PatientName``; a sequence path ``0040A730.0040A040`` keyword by keyword."""
    return ".".join(keyword_for_tag(int(t, 16)) or t for t in tag.split("."))


def search(
    query: Query,
    principal: Principal,
    *,
    session: Session,
    limit: int | None = None,
    offset: int = 0,
    base_url: str = "",
) -> SearchResult:
    """One page of matches at `query.level` that `principal` may see (PS3.18 10.6.1, PS3.4 C.6).

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
        The study or series of the scope does not exist or `principal` may not see it.
    """
    plan = _PLANNERS[query.level](query, principal, session, base_url)
    return _page(session, plan, limit, offset)


def search_all(query: Query, principal: Principal, *, session: Session, batch: int = BATCH) -> Matches:
    """Every match at `query.level`, for C-FIND, which has no page size (PS3.4 C.4.1.3.1).

    The statement runs at once (so a database failure is raised here) and is fetched `batch`
    rows at a time (a server-side cursor on PostgreSQL) as `matches` is iterated, inside the
    caller's session, which must stay open until then; stopping early costs nothing more.

    Raises
    ------
    InvalidQuery
        A key's value cannot be matched.
    """
    plan = _PLANNERS[query.level](query, principal, session, "")
    # Core execution, as `_page`: column selects gain nothing from the ORM's result handling.
    # yield_per for this statement only (Connection.execution_options would set it for the rest
    # of the session's statements too); it also sets the size of the partitions.
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


def _page(session: Session, plan: _Plan, limit: int | None, offset: int) -> SearchResult:
    size = MAX_RESULTS if limit is None else min(limit, MAX_RESULTS)
    if size < 0 or offset < 0:
        raise InvalidQuery("limit and offset must not be negative")
    # Core execution on the session's connection: these are column selects, and the ORM's result
    # loading cost as much as the SQL itself for a page of 1,000 rows.
    result = session.connection().execute(plan.stmt.limit(size + 1).offset(offset))
    rows = _records(result) if plan.named else list(result.all())
    return SearchResult(list(plan.build(session, rows[:size])), len(rows) > size, plan.ignored)


def _records(result: Result[Any]) -> list[Record]:
    """The rows of `result` as named tuples.

    The builders read each row's columns by name, several times per match, and a SQLAlchemy
    `Row` answers a name through its key map (~0.8 us a read here, against ~0.05 us for a
    named tuple): for a page of 1,000 matches that was most of the Python time of a search.
    """
    record = _record_type(tuple(result.keys()))
    return list(map(record._make, result.all()))


@lru_cache(maxsize=64)
def _record_type(names: tuple[str, ...]) -> Any:
    """One named tuple class per column list (a plan's statement has a fixed one)."""
    return namedtuple("Record", names)  # the field names are known at run time only


# ----- one plan per level ------------------------------------------------------------------


def _patients(query: Query, principal: Principal, session: Session, base_url: str) -> _Plan:
    del session, base_url
    filters, ignored = _filters(query, PATIENT)
    has_visible_study = exists().where(Study.identity_id == PatientIdentity.id, visible_to(principal))
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
        .where(has_visible_study, *filters)
        .order_by(PatientIdentity.patient_name_folded, PatientIdentity.id)
    )
    wanted = _wanted(query, _IDENTITY_TAGS)
    empties = _empties(query, wanted)

    def build(session: Session, rows: list[Record]) -> Iterator[Match]:
        totals = _patient_totals(session, principal, {r.identity_id for r in rows})
        # attributes beyond the identity's columns come from the patient's latest visible study
        latest = {identity: t[3] for identity, t in totals.items()}
        kept = _study_attrs(session, latest.values()) if rows and wanted - _IDENTITY_TAGS else {}
        for row in rows:
            stored = kept.get(latest.get(row.identity_id, -1), {})
            attrs = {tag: stored[tag] for tag in _PATIENT_TAGS & stored.keys()}
            attrs.update(_identity_attrs(row))
            attrs.update(_patient_counts(*totals.get(row.identity_id, (0, 0, 0, 0))[:3]))
            yield _select(attrs, wanted, query, empties)

    return _Plan(stmt, build, ignored)


def _studies(query: Query, principal: Principal, session: Session, base_url: str) -> _Plan:
    del session
    filters, ignored = _filters(query, STUDY)
    stmt = (
        select(  # in this order: `_spliced_studies` unpacks them by position
            Study.id.label("study_pk"),
            Study.identity_id,
            Study.study_uid,
            Study.attrs_json,
            Study.modalities,
            Study.num_series,
            Study.num_instances,
        )
        .where(visible_to(principal), *filters)
        .order_by(Study.study_date.desc(), Study.id.desc())
    )
    if query.study_uid is not None:
        stmt = stmt.where(Study.study_uid == query.study_uid)
    wanted = _wanted(query, STUDY_DEFAULTS)
    empties = _empties(query, wanted)
    if not (query.only_requested or query.include_all or wanted & _COMPUTED_PER_BATCH):
        return _Plan(stmt.execution_options(**{TEXT_AS_BYTES: True}), _spliced_studies(base_url), ignored, named=False)

    def build(session: Session, rows: list[Record]) -> Iterator[Match]:
        computed = _computed(session, principal, rows, wanted)
        for row in rows:
            attrs = orjson.loads(row.attrs_json)
            attrs.update(_study_computed(row))
            attrs.update(computed(row))
            _set(attrs, "00081190", "UR", f"{base_url}/studies/{row.study_uid}" if base_url else None)
            yield _select(attrs, wanted, query, empties)

    return _Plan(stmt, build, ignored)


def _spliced_studies(base_url: str) -> Build:
    """Default study answers: the stored study attributes with the computed ones appended.

    A page of 1,000 studies spent most of its time parsing each stored JSON, picking the
    default keys and serializing them again. Here the stored text is kept as it is and the
    computed attributes are spliced in, so an answer carries every study attribute ingest
    keeps (the PS3.18 defaults, IssuerOfPatientID, the patient's age, sex, size, weight,
    other IDs, procedure codes...), which PS3.18 allows beyond the required ones.
    """

    prefix = _json_text(f"{base_url}/studies/") if base_url else None

    def build(session: Session, rows: list[Record]) -> Iterator[Match]:
        # At 1,000 rows, naming them and copying each stored text cost as much as the rest of
        # the answer: the rows come by position (`_Plan.named` False) and, on PostgreSQL, the
        # stored JSON as UTF-8 bytes (TEXT_AS_BYTES), spliced without a decode and re-encode.
        # The tail is `_study_computed` and RetrieveURL written as text in one go (pinned to
        # the dict form by tests/storage/test_queries_splice.py).
        del session
        for _pk, _identity, study_uid, stored, modalities, num_series, num_instances in rows:
            text = stored if isinstance(stored, bytes) else stored.encode()
            # UIDs are digits and dots (checked at ingest): nothing to escape
            url = f',"00081190":{{"vr":"UR","Value":["{prefix}{study_uid}"]}}' if prefix is not None else ""
            tail = (
                f'"00080056":{{"vr":"CS","Value":["ONLINE"]}},"00080061":{_modalities_json(modalities)},'
                f'"00201206":{{"vr":"IS","Value":[{int(num_series)}]}},'
                f'"00201208":{{"vr":"IS","Value":[{int(num_instances)}]}}{url}}}'
            ).encode()
            yield b"{" + tail if text == b"{}" else b"%b,%b" % (text[:-1], tail)

    return build


def _json_text(text: str) -> str:
    """`text` escaped for use inside a JSON string."""
    return orjson.dumps(text).decode()[1:-1]


def _series(query: Query, principal: Principal, session: Session, base_url: str) -> _Plan:
    filters, ignored = _filters(query, SERIES)
    stmt = select(
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
    ).join(Study, Study.id == Series.study_id)
    stmt = stmt.where(visible_to(principal), *filters)
    order: list[Any] = [Series.series_number.asc().nulls_last(), Series.id]
    if query.study_uid is not None:
        stmt = stmt.where(Series.study_id == _study_pk(session, principal, query.study_uid))
    else:
        order = [Study.study_date.desc(), Study.id.desc(), *order]
    defaults = SERIES_DEFAULTS | (STUDY_DEFAULTS if query.study_uid is None else frozenset())
    wanted = _wanted(query, defaults)
    empties = _empties(query, wanted)

    def build(session: Session, rows: list[Record]) -> Iterator[Match]:
        computed = _computed(session, principal, rows, wanted)
        for row in rows:
            attrs = orjson.loads(row.study_json)
            attrs.update(_study_computed(row))
            attrs.update(computed(row))
            attrs.update(orjson.loads(row.attrs_json))
            _set(attrs, "0020000D", "UI", row.study_uid)
            _set(attrs, "00201209", "IS", row.series_instances)
            url = f"{base_url}/studies/{row.study_uid}/series/{row.series_uid}" if base_url else None
            _set(attrs, "00081190", "UR", url)
            yield _select(attrs, wanted, query, empties)

    return _Plan(stmt.order_by(*order), build, ignored)


def _instances(query: Query, principal: Principal, session: Session, base_url: str) -> _Plan:
    filters, ignored = _filters(query, IMAGE)
    # outside a series (or a study) the series' (and the study's) default attributes come along
    defaults = INSTANCE_DEFAULTS
    if query.study_uid is None:
        defaults |= STUDY_DEFAULTS | SERIES_DEFAULTS
    elif query.series_uid is None:
        defaults |= SERIES_DEFAULTS
    wanted = _wanted(query, defaults)
    subset = _reads_subset(query, wanted)
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
        .where(visible_to(principal), *filters)
    )
    parents = _Parents(wanted)
    order: list[Any] = [Instance.instance_number.asc().nulls_last(), Instance.id]
    if query.study_uid is None:
        order = [Study.study_date.desc(), Study.id.desc(), Series.series_number.asc().nulls_last(), Series.id, *order]
    else:
        study_pk = parents.load_scope(session, principal, query.study_uid)
        stmt = stmt.where(Instance.study_id == study_pk)
        if query.series_uid is None:
            order = [Series.series_number.asc().nulls_last(), Series.id, *order]
        else:
            stmt = stmt.where(Instance.series_id == parents.series_pk(query.series_uid))
    empties = _empties(query, wanted)
    splice = subset and not (query.only_requested or wanted & (_COMPUTED_PER_BATCH | {"00083002"}))

    def url(row: Record) -> str | None:
        return (
            f"{base_url}/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}" if base_url else None
        )

    def one(row: Record, computed: Callable[[Record], dict[str, Any]]) -> dict[str, Any]:
        stored = parents.of(row) | orjson.loads(row.dicom_json)
        if not query.include_all:  # keep the few wanted attributes before walking any of them
            stored = {tag: stored[tag] for tag in wanted if tag in stored}
        attrs = _without_bulk(stored)
        attrs.update(_study_computed(row))
        attrs.update(computed(row))
        if "00280008" not in attrs and row.number_of_frames:  # single-frame objects have no element
            _set(attrs, "00280008", "IS", row.number_of_frames)
        _set(attrs, "00201209", "IS", row.series_instances)
        if "00083002" in wanted:  # AvailableTransferSyntaxUID (PS3.4 C.6.1.1.5)
            _set(attrs, "00083002", "UI", row.transfer_syntax_uid)
        _set(attrs, "00081190", "UR", url(row))
        return _select(attrs, wanted, query, empties)

    def build(session: Session, rows: list[Record]) -> Iterator[Match]:
        computed = _computed(session, principal, rows, wanted)
        parents.load(session, rows)
        for row in rows:
            yield _spliced_instance(row, parents, base_url) if splice and not row.whole else one(row, computed)

    return _Plan(stmt.order_by(*order), build, ignored)


def _spliced_instance(row: Record, parents: _Parents, base_url: str) -> bytes:
    """A default instance answer: the stored instance-level subset as it is, spliced between
    the wanted study and series attributes (one fragment per series) and the per-row ones.

    Like a study answer (`_spliced_studies`) it carries every instance attribute ingest keeps
    (storage.dicom.parse.INSTANCE_TAGS), not only the PS3.18 defaults: that is what saves the parse.
    """
    own = row.dicom_json
    text = _members(parents.fragment(row, base_url), own[1:-1])
    if base_url:  # UIDs are digits and dots (checked at ingest): nothing to escape
        text = _members(text, f'"00081190":{{"vr":"UR","Value":["{parents.url_prefix}{row.sop_uid}"]}}')
    if row.number_of_frames and '"00280008"' not in own:  # single-frame objects have no element
        text = _members(text, f'"00280008":{{"vr":"IS","Value":[{int(row.number_of_frames)}]}}')
    return f"{{{text}}}".encode()


def _members(first: str, second: str) -> str:
    """Two runs of JSON object members (either may be empty) as one."""
    return f"{first},{second}" if first and second else first or second


#: what an instance answer can be built from without the instance's whole JSON
_SUBSET_TAGS = INSTANCE_TAGS | SERIES_TAGS | STUDY_TAGS


def _reads_subset(query: Query, wanted: frozenset[str]) -> bool:
    """Whether an instance search can read the instance-level subset instead of the whole JSON.

    The subset (`Instance.attrs_json`, a tenth of the whole) is completed with the study's and
    the series' attributes (`_Parents`); asking for anything else (`includefield=all`, an
    attribute kept only in the whole JSON) reads the whole JSON, as do rows indexed before the
    subset existed (NULL: `coalesce`).
    """
    return not query.include_all and {t for t in wanted if "." not in t} <= _SUBSET_TAGS | _COMPUTED_TAGS


class _Parents:
    """The study and series attributes of the instances of a search, each parsed once."""

    def __init__(self, wanted: frozenset[str]) -> None:
        self._wanted = wanted
        self._studies: dict[int, dict[str, Any]] = {}
        self._series: dict[int, dict[str, Any]] = {}
        self._fragments: dict[int, str] = {}
        self._series_uids: dict[str, int] = {}
        self._last: int | None = None
        self.url_prefix = ""

    def load(self, session: Session, rows: list[Record]) -> None:
        studies = {r.study_pk for r in rows} - self._studies.keys()
        series = {r.series_pk for r in rows} - self._series.keys()
        if studies:
            self._studies.update(_study_attrs(session, studies))
        if series:
            found = session.connection().execute(select(Series.id, Series.attrs_json).where(Series.id.in_(series)))
            self._series.update({pk: orjson.loads(text) for pk, text in found})

    def load_scope(self, session: Session, principal: Principal, study_uid: str) -> int:
        """The key of the study a search is scoped to; its attributes and all its series' too.

        One statement instead of three round trips (the study's key, then `load`'s two; four
        with a series in the scope): on a loaded two-core host each round trip costs a switch
        to the server process and back, more than reading the attributes of a few series the
        page may not reach.

        Raises
        ------
        NotFound
            No such study, or `principal` may not see it.
        """
        visible = and_(Study.study_uid == study_uid, visible_to(principal))
        scope = union_all(
            select(literal(True), Study.id, Study.study_uid, Study.attrs_json).where(visible),
            select(literal(False), Series.id, Series.series_uid, Series.attrs_json)
            .join(Study, Study.id == Series.study_id)
            .where(visible),
        )
        study_pk = None
        for is_study, pk, uid, attrs_json in session.connection().execute(scope):
            if is_study:
                study_pk = pk
                self._studies[pk] = orjson.loads(attrs_json)
            else:
                self._series_uids[uid] = pk
                self._series[pk] = orjson.loads(attrs_json)
        if study_pk is None:
            raise NotFound(f"no study {study_uid[:80]}")
        return int(study_pk)

    def series_pk(self, series_uid: str) -> int:
        """The key of a series of the study `load_scope` read, or NotFound."""
        pk = self._series_uids.get(series_uid)
        if pk is None:
            raise NotFound(f"no series {series_uid[:80]} in this study")
        return pk

    def of(self, row: Record) -> dict[str, Any]:
        return self._studies.get(row.study_pk, {}) | self._series.get(row.series_pk, {})

    def fragment(self, row: Record, base_url: str) -> str:
        """The wanted study and series attributes of `row`'s series, serialized without braces;
        instance-level tags are left to the instance's own subset, so no key appears twice.
        Sets `url_prefix`, the series' RetrieveURL prefix for its instances."""
        if row.series_pk != self._last:
            self._last = row.series_pk
            self.url_prefix = _json_text(f"{base_url}/studies/{row.study_uid}/series/{row.series_uid}/instances/")
        found = self._fragments.get(row.series_pk)
        if found is None:
            attrs = self.of(row) | _study_computed(row)
            attrs["00201209"] = {"vr": "IS", "Value": [row.series_instances]}
            keep = {tag: attrs[tag] for tag in sorted(self._wanted & attrs.keys()) if tag not in INSTANCE_TAGS}
            found = self._fragments[row.series_pk] = orjson.dumps(keep).decode()[1:-1]
        return found


_PLANNERS: dict[str, Callable[[Query, Principal, Session, str], _Plan]] = {
    PATIENT: _patients,
    STUDY: _studies,
    SERIES: _series,
    IMAGE: _instances,
}


# ----- keys, scope and computed attributes -------------------------------------------------


def _filters(query: Query, level: str) -> tuple[list[ColumnElement[bool]], tuple[str, ...]]:
    """SQL conditions for the keys matchable at `level`; the others are named as ignored."""
    table = PATIENT_KEYS if level == PATIENT else MATCH_KEYS
    filters: list[ColumnElement[bool]] = []
    ignored: list[str] = []
    sequences: dict[Any, dict[str, str]] = {}  # JSON column -> the sequence keys matched in it
    for tag, value in query.keys.items():
        if "." in tag:
            column = _sequence_column(tag.split(".", 1)[0], level)
            if column is None:
                if value.strip(" *"):
                    ignored.append(keyword(tag))
            else:
                sequences.setdefault(column, {})[tag] = value
            continue
        spec = table.get(tag)
        if spec is None or _DEPTH[spec[0]] > _DEPTH[level]:
            if value.strip(" *"):
                ignored.append(keyword(tag))
            continue
        try:
            expr = spec[1](value, query.fuzzy)
        except InvalidQuery as exc:
            raise InvalidQuery(f"{keyword(tag)}: {exc.detail}") from None
        if expr is not None:
            filters.append(expr)
    for column, keys in sequences.items():
        expr = m.sequence_keys(column, keys)  # its errors already name the path
        if expr is not None:
            filters.append(expr)
    return filters, tuple(ignored)


#: sequences kept with the study's and the series' attributes at ingest (storage.dicom.parse)
_STUDY_SEQUENCES = frozenset(
    t for t in STUDY_TAGS if dictionary_has_tag(int(t, 16)) and dictionary_VR(int(t, 16)) == "SQ"
)
_SERIES_SEQUENCES = frozenset(
    t for t in SERIES_TAGS if dictionary_has_tag(int(t, 16)) and dictionary_VR(int(t, 16)) == "SQ"
)


def _sequence_column(sequence_tag: str, level: str) -> Any:
    """The stored DICOM JSON a sequence key is matched in at `level`, or None if not kept there.

    An instance's JSON holds every sequence; a study's and a series' only those ingest keeps at
    that level (ProcedureCodeSequence, OtherPatientIDsSequence..., RequestAttributesSequence).
    A sequence kept only per instance is not matched at study or series level, where it would
    mean parsing every instance's JSON: it is reported as ignored instead.
    """
    if level == IMAGE:
        return Instance.dicom_json
    if sequence_tag in _STUDY_SEQUENCES and level in (STUDY, SERIES):
        return Study.attrs_json
    if sequence_tag in _SERIES_SEQUENCES and level == SERIES:
        return Series.attrs_json
    return None


# The lookups below select columns, not entities: they run through Core on the session's
# connection, as `_page` does; the ORM's handling of each statement (compile state, identity
# map) was a visible share of a scoped instance search in profiles.


def _study_pk(session: Session, principal: Principal, study_uid: str) -> int:
    stmt = select(Study.id).where(Study.study_uid == study_uid, visible_to(principal))
    pk = session.connection().scalar(stmt)
    if pk is None:
        raise NotFound(f"no study {study_uid[:80]}")
    return int(pk)


def _computed(
    session: Session, principal: Principal, rows: list[Record], wanted: frozenset[str]
) -> Callable[[Record], dict[str, Any]]:
    """SOPClassesInStudy and NumberOfPatientRelated* of a batch of rows, one query each if asked."""
    if not rows:
        return lambda _row: {}
    classes: dict[int, list[str]] = {}
    if _SOP_CLASSES in wanted:
        pairs = session.execute(
            select(Instance.study_id, Instance.sop_class_uid)
            .where(Instance.study_id.in_({r.study_pk for r in rows}))
            .distinct()
        )
        for study_pk, sop_class in pairs:
            classes.setdefault(study_pk, []).append(sop_class)
    counts: dict[int, dict[str, Any]] = {}
    if wanted & _PATIENT_COUNTS:
        totals = _patient_totals(session, principal, {r.identity_id for r in rows})
        counts = {identity: _patient_counts(*t[:3]) for identity, t in totals.items()}

    def computed(row: Record) -> dict[str, Any]:
        attrs = dict(counts.get(row.identity_id, {}))
        if _SOP_CLASSES in wanted:
            found = sorted(classes.get(row.study_pk, []))
            attrs[_SOP_CLASSES] = {"vr": "UI", "Value": found} if found else {"vr": "UI"}
        return attrs

    return computed


def _patient_totals(
    session: Session, principal: Principal, identity_ids: set[int]
) -> dict[int, tuple[int, int, int, int]]:
    """Per patient identity: visible studies, their series and instances, and the latest study's key."""
    if not identity_ids:
        return {}
    rows = session.execute(
        select(
            Study.identity_id,
            func.count(Study.id),
            func.sum(Study.num_series),
            func.sum(Study.num_instances),
            func.max(Study.id),
        )
        .where(Study.identity_id.in_(identity_ids), visible_to(principal))
        .group_by(Study.identity_id)
    )
    return {identity: (int(n), int(s or 0), int(i or 0), int(last)) for identity, n, s, i, last in rows}


def _study_attrs(session: Session, study_pks: Iterable[int]) -> dict[int, dict[str, Any]]:
    rows = session.connection().execute(select(Study.id, Study.attrs_json).where(Study.id.in_(set(study_pks))))
    return {pk: orjson.loads(text) for pk, text in rows}


def _identity_attrs(row: Record) -> dict[str, Any]:
    """The patient attributes kept on the identity row, as DICOM JSON."""
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), row.patient_name.split("="), strict=False))
    name = {group: text for group, text in groups.items() if text}
    attrs: dict[str, Any] = {"00100010": {"vr": "PN", "Value": [name]} if name else {"vr": "PN"}}
    for tag, vr, value in (
        ("00100020", "LO", row.patient_id),
        ("00100021", "LO", row.issuer if row.issuer_kind == "dicom" else ""),
        ("00100030", "DA", row.birth_date),
        ("00100040", "CS", row.sex),
    ):
        attrs[tag] = {"vr": vr, "Value": [value]} if value else {"vr": vr}
    return attrs


def _patient_counts(studies: int, series: int, instances: int) -> dict[str, Any]:
    return {
        "00201200": {"vr": "IS", "Value": [studies]},
        "00201202": {"vr": "IS", "Value": [series]},
        "00201204": {"vr": "IS", "Value": [instances]},
    }


def _wanted(query: Query, defaults: frozenset[str]) -> frozenset[str]:
    requested = query.include | frozenset(query.keys)
    return requested if query.only_requested else defaults | requested


def _empties(query: Query, wanted: frozenset[str]) -> dict[str, dict[str, Any]]:
    """Zero-length elements for the requested keys a match has no value for (C-FIND answers)."""
    if not query.only_requested:
        return {}
    out = {}
    for tag in wanted:
        if "." in tag or not dictionary_has_tag(int(tag, 16)):
            continue  # a sequence path, or a private tag whose VR is unknown
        out[tag] = {"vr": dictionary_VR(int(tag, 16)).split(" ")[0]}
    return out


def _set(attrs: dict[str, Any], tag: str, vr: str, value: object) -> None:
    if value is None:
        attrs.pop(tag, None)
    else:
        attrs[tag] = {"vr": vr, "Value": [value]}


@lru_cache(maxsize=1024)
def _modalities_json(modalities: str | None) -> str:
    """ModalitiesInStudy as DICOM JSON text: a pure function of the column, and an archive has
    few distinct combinations, so a page of studies serializes each once."""
    values = [v for v in (modalities or "").split("\\") if v]
    return f'{{"vr":"CS","Value":{orjson.dumps(values).decode()}}}' if values else '{"vr":"CS"}'


def _study_computed(row: Record) -> dict[str, Any]:
    """NumberOfStudyRelatedSeries/Instances, ModalitiesInStudy, InstanceAvailability."""
    modalities = [v for v in (row.modalities or "").split("\\") if v]
    return {
        "00080056": {"vr": "CS", "Value": ["ONLINE"]},
        "00080061": {"vr": "CS", "Value": modalities} if modalities else {"vr": "CS"},
        "00201206": {"vr": "IS", "Value": [row.num_series]},
        "00201208": {"vr": "IS", "Value": [row.num_instances]},
    }


def _select(
    attrs: dict[str, Any], wanted: frozenset[str], query: Query, empties: Mapping[str, dict[str, Any]]
) -> dict[str, Any]:
    if query.include_all:
        return {tag: attrs[tag] for tag in sorted(attrs)}
    if query.only_requested:
        return {tag: attrs.get(tag) or empties[tag] for tag in sorted(wanted) if tag in attrs or tag in empties}
    return {tag: attrs[tag] for tag in sorted(wanted & attrs.keys())}


def _without_bulk(dataset: dict[str, Any]) -> dict[str, Any]:
    """The data set without bulk data references, at every depth (QIDO answers carry none)."""
    out: dict[str, Any] = {}
    for tag, element in dataset.items():
        if "BulkDataURI" in element:
            continue
        if element.get("vr") == "SQ" and element.get("Value"):
            element = {**element, "Value": [_without_bulk(item) for item in element["Value"]]}
        out[tag] = element
    return out
