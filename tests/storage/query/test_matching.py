"""PS3.4 C.2.2.2 matching as SQL, on both backends, and the plans of the searches that use it.

The matching functions are checked against real rows in SQLite and PostgreSQL (SQLite runs
wild cards as GLOB, PostgreSQL as LIKE, so both must agree on every case), inside an outer
transaction that is rolled back (STYLE rule 20). The plan tests run the exact SQL that
`storage.query.search` sends and assert it searches an index instead of scanning the table.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import ColumnElement, Connection, event, insert, select

from storage.archive import Archive
from storage.index.models import PatientIdentity, Study
from storage.query import matching as m
from storage.query.keys import IMAGE, STUDY, attribute_tag
from storage.query.matching import InvalidQuery
from storage.query.search import Query, search
from tests.kit import dicom_factory as f
from tests.kit.principals import ADMIN, ctx
from tests.kit.seed import seed

NOW = datetime(2026, 11, 23, tzinfo=UTC)
# label, folded name, patient id, date, time, accession, modalities, series count
ROWS = [
    ("ion", "POPESCU^ION", "P001", "20260115", "083000", "A1", "CT", 1),
    ("maria", "POPESCU^MARIA", "P002", "20251201", "120000.5", "A_2", "CT\\MR", 2),
    ("stef", "STEFANESCU^IOANA", "P003", "20260310", "0915", "A%3", "MR", 1),
    ("yamada", "YAMADA^TAROU=山田^太郎", "p001", "20230303", "23", "A[4]", "US", 3),
    ("empty", "", "", "", "", "", "", 0),
    ("andrei", "IONESCU^ANDREI-VLAD", "P005", "20260116", "235959", "AX2", "CR\\CT\\MR", 12),
]
ALL = {r[0] for r in ROWS}


@pytest.fixture()
def conn(archive: Archive) -> Iterator[Connection]:
    """The ROWS as studies, in a transaction rolled back at the end."""
    with archive.db.engine.connect() as connection:
        outer = connection.begin()
        identity = connection.execute(
            insert(PatientIdentity).returning(PatientIdentity.id),
            {"issuer_kind": "org", "issuer": "t", "patient_id": "x", "created_at": NOW},
        ).scalar_one()
        for i, (label, name, pid, day, clock, acc, modalities, n_series) in enumerate(ROWS):
            connection.execute(
                insert(Study),
                {
                    "study_uid": f"1.2.{i + 1}",
                    "identity_id": identity,
                    "patient_id": pid,
                    "patient_name_folded": name,
                    "study_date": day,
                    "study_time": clock,
                    "accession_number": acc,
                    "description": label,
                    "referring_physician_folded": name,
                    "modalities": modalities,
                    "num_series": n_series,
                    "created_at": NOW,
                    "updated_at": NOW,
                },
            )
        try:
            yield connection
        finally:
            outer.rollback()


def matching(conn: Connection, expr: ColumnElement[bool] | None) -> set[str]:
    stmt = select(Study.description)
    if expr is not None:
        stmt = stmt.where(expr)
    return set(conn.scalars(stmt))


def check(conn: Connection, cases: list[tuple[ColumnElement[bool] | None, set[str]]]) -> None:
    for expr, expected in cases:
        sql = "universal" if expr is None else str(expr.compile(conn, compile_kwargs={"literal_binds": True}))
        assert matching(conn, expr) == expected, sql


def test_single_value_and_wildcards_are_case_sensitive_with_escaping(conn: Connection) -> None:
    pid, acc = Study.patient_id, Study.accession_number
    check(
        conn,
        [
            (m.string(pid, "P001"), {"ion"}),
            (m.string(pid, "p001"), {"yamada"}),  # case matters outside PN
            (m.string(pid, "P00"), set()),
            (m.string(pid, "P00?"), {"ion", "maria", "stef", "andrei"}),
            (m.string(pid, "*1"), {"ion", "yamada"}),
            (m.string(pid, "?00*"), {"ion", "maria", "stef", "andrei", "yamada"}),
            (m.string(pid, " P001 "), {"ion"}),  # padding is not significant
            # % and _ are literal characters in DICOM values, [ is literal for GLOB
            (m.string(acc, "A_2"), {"maria"}),
            (m.string(acc, "A_*"), {"maria"}),
            (m.string(acc, "A%*"), {"stef"}),
            (m.string(acc, "A?2"), {"maria", "andrei"}),
            (m.string(acc, "A[*"), {"yamada"}),
            (m.string(acc, "A[4]"), {"yamada"}),
            (m.string(acc, "*]"), {"yamada"}),
        ],
    )
    for universal in ("", "*", "**", "  "):
        assert m.string(pid, universal) is None


def test_person_names_fold_case_and_diacritics(conn: Connection) -> None:
    name = Study.patient_name_folded
    check(
        conn,
        [
            (m.person_name(name, "popescu*"), {"ion", "maria"}),
            (m.person_name(name, "Popescu^Ion"), {"ion"}),
            (m.person_name(name, "popescu"), set()),  # literal: the whole name
            (m.person_name(name, "ştefănescu^ioana"), {"stef"}),
            (m.person_name(name, "ŞTEFĂNESCU^IOANA"), {"stef"}),
            (m.person_name(name, "Ștefănescu*"), {"stef"}),  # comma-below ș, as in UTF-8 sources
            (m.person_name(name, "stefanescu*"), {"stef"}),
            (m.person_name(name, "*escu^?oana"), {"stef"}),
            (m.person_name(name, "yamada^tarou"), {"yamada"}),  # first component group
            (m.person_name(name, "Yamada^Tarou=山田^太郎"), {"yamada"}),
            (m.person_name(name, "yamada"), set()),
            (m.person_name(name, "ionescu^andrei-vlad"), {"andrei"}),
            (m.person_name(name, "*"), ALL),
            (m.person_name(Study.referring_physician_folded, "popescu^maria"), {"maria"}),
        ],
    )


def test_fuzzy_person_names_match_word_starts_in_any_order(conn: Connection) -> None:
    name = Study.patient_name_folded

    def fuzzy(value: str) -> ColumnElement[bool] | None:
        return m.person_name(name, value, fuzzy=True)

    check(
        conn,
        [
            (fuzzy("ion"), {"ion", "andrei"}),  # POPESCU^ION, IONESCU^...
            (fuzzy("ioana stef"), {"stef"}),
            (fuzzy("ştef^ioa"), {"stef"}),
            (fuzzy("vlad"), {"andrei"}),  # after a hyphen inside a component
            (fuzzy("tar"), {"yamada"}),
            (fuzzy("山田"), {"yamada"}),  # start of another component group
            (fuzzy("popescu m"), {"maria"}),
            (fuzzy("escu"), set()),  # word starts only, not any substring
            (fuzzy("p?pescu"), {"ion", "maria"}),
            (fuzzy("*"), ALL),
        ],
    )


def test_date_ranges(conn: Connection) -> None:
    day = Study.study_date
    check(
        conn,
        [
            (m.date(day, "20260115"), {"ion"}),
            (m.date(day, "20260101-"), {"ion", "stef", "andrei"}),
            (m.date(day, "-20251231"), {"maria", "yamada"}),  # an empty date is in no range
            (m.date(day, "20260115-20260116"), {"ion", "andrei"}),
            (m.date(day, "20250101-20251231"), {"maria"}),
            (m.date(day, "20260115-20260115"), {"ion"}),
            (m.date(day, ""), ALL),
        ],
    )


def test_time_ranges_cover_partial_bounds(conn: Connection) -> None:
    clock = Study.study_time
    check(
        conn,
        [
            (m.time(clock, "083000"), {"ion"}),
            (m.time(clock, "08"), {"ion"}),  # the whole hour
            (m.time(clock, "0800-0900"), {"ion"}),
            (m.time(clock, "-0915"), {"ion", "stef"}),  # 0915 stored as HHMM is within
            (m.time(clock, "12-"), {"maria", "yamada", "andrei"}),
            (m.time(clock, "120000.5"), {"maria"}),
            (m.time(clock, "1200-1200"), {"maria"}),  # up to 12:00:59.999999
            (m.time(clock, "2359-"), {"andrei"}),
        ],
    )


def test_combined_datetime_ranges(conn: Connection) -> None:
    def dt(value: str) -> ColumnElement[bool] | None:
        return m.datetime(Study.study_date, Study.study_time, value)

    check(
        conn,
        [
            (dt("20260115083000-20260116120000"), {"ion"}),
            (dt("20260115090000-20260116235959"), {"andrei"}),
            (dt("20260115-20260116"), {"ion", "andrei"}),
            (dt("20260115"), {"ion"}),
            (dt("2026011508"), {"ion"}),  # that hour
            (dt("2026011509"), set()),
            (dt("-20251201130000"), {"maria", "yamada"}),
            (dt("20260310+0200-"), {"stef"}),  # an offset is accepted and ignored
            (dt("20251201120001-"), {"ion", "stef", "andrei"}),
        ],
    )


def test_uid_lists_integers_and_modalities(conn: Connection) -> None:
    uid, n, modalities = Study.study_uid, Study.num_series, Study.modalities
    check(
        conn,
        [
            (m.uid_list(uid, "1.2.1"), {"ion"}),
            (m.uid_list(uid, "1.2.1\\1.2.3"), {"ion", "stef"}),
            (m.uid_list(uid, "1.2.1,1.2.3,1.2.1"), {"ion", "stef"}),
            (m.uid_list(uid, "1.2.99"), set()),
            (m.integer(n, "1"), {"ion", "stef"}),
            (m.integer(n, "2\\3"), {"maria", "yamada"}),
            (m.integer(n, "+12"), {"andrei"}),
            (m.multi_valued(modalities, "CT"), {"ion", "maria", "andrei"}),
            (m.multi_valued(modalities, "MR"), {"maria", "stef", "andrei"}),
            (m.multi_valued(modalities, "US,CR"), {"yamada", "andrei"}),
            (m.multi_valued(modalities, "US\\CR"), {"yamada", "andrei"}),
            (m.multi_valued(modalities, "C"), set()),  # a whole value, not a substring
            (m.multi_valued(modalities, "C?"), {"ion", "maria", "andrei"}),
            (m.multi_valued(modalities, "*"), ALL),
        ],
    )


def test_statement_cache_keeps_each_pattern(conn: Connection) -> None:
    """The compiled statement is cached by shape; each execution must still use its own pattern."""
    name = Study.patient_name_folded
    assert matching(conn, m.person_name(name, "popescu*")) == {"ion", "maria"}
    assert matching(conn, m.person_name(name, "ionescu*")) == {"andrei"}
    assert matching(conn, m.string(Study.accession_number, "A_*")) == {"maria"}
    assert matching(conn, m.string(Study.accession_number, "A%*")) == {"stef"}


@pytest.mark.parametrize(
    ("build", "value", "message"),
    [
        (m.date, "2026-01-01", "not a date or a date range"),
        (m.date, "20261301", "not a calendar date"),
        (m.date, "2026011", "not a date YYYYMMDD"),
        (m.date, "20260201-20260101", "ends before it starts"),
        (m.date, "-", "without bounds"),
        (m.time, "2500", "not a time of day"),
        (m.time, "10:15", "not a time"),
        (m.time, "12-10", "ends before it starts"),
        (m.uid_list, "1.2.3,1.02.3", "'1.02.3' is not a valid UID"),
        (m.uid_list, "1.2.3\\abc", "'abc' is not a valid UID"),
        (m.integer, "1.5", "not an integer"),
        (lambda column, value: m.datetime(column, Study.study_time, value), "2026-01-01-2026", "not a datetime"),
        (lambda column, value: m.datetime(column, Study.study_time, value), "2026010112-99", "not a datetime"),
    ],
)
def test_malformed_values_are_refused_with_a_reason(build: Any, value: str, message: str) -> None:
    with pytest.raises(InvalidQuery, match=re.escape(message)):
        build(Study.study_date, value)


def test_attribute_names_resolve_to_tags() -> None:
    assert attribute_tag("PatientAge") == attribute_tag("00101010") == "00101010"
    assert attribute_tag("0020000d") == "0020000D"
    assert attribute_tag("00091001") == "00091001"  # private: accepted
    for bad in ("PatientAgee", "12345678", "0010101"):
        with pytest.raises(InvalidQuery, match="unknown attribute"):
            attribute_tag(bad)


# ----- query plans ------------------------------------------------------------------------

AS_ADMIN = ctx(ADMIN)


def _load(archive: Archive) -> tuple[str, str]:
    """A few real studies, so every join has rows; returns one study's and one series' UID."""
    first = f.ct_dataset(patient_name="Popescu^Ion")
    for ds in (first, f.ct_dataset(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID)):
        seed(archive, ds, as_=AS_ADMIN)
    for name in ("Ionescu^Maria", "Ştefănescu^Ioana", "Vasilescu^Dan"):
        seed(archive, f.ct_dataset(patient_name=name), as_=AS_ADMIN)
    return str(first.StudyInstanceUID), str(first.SeriesInstanceUID)


def _plan(archive: Archive, run: Any) -> str:
    """Run a search, capture its main statement (the longest it sends; the others fetch the
    study and series attributes of the rows found), and EXPLAIN that statement."""
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        sent.append((statement, parameters))

    engine = archive.db.engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        with archive.db.read() as session:
            run(session)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = max(sent, key=lambda sent_one: len(sent_one[0]))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            return "\n".join(str(r[-1]) for r in rows)
        # PostgreSQL prefers a sequential scan of a small table whatever the indexes; with
        # sequential scans priced out, the plan shows whether an index can serve the query.
        conn.exec_driver_sql("SET enable_seqscan = off")
        rows = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
        return "\n".join(str(r[0]) for r in rows)


def _uses_index(plan: str, dialect: str, table: str, index: str) -> bool:
    if dialect == "sqlite":
        return re.search(rf"SEARCH {table} USING (COVERING )?INDEX {index}\b", plan) is not None
    return (
        re.search(rf"Index (Only )?Scan( Backward)? using {index} on {table}\b|Bitmap Index Scan on {index}\b", plan)
        is not None
    )


def _full_scan(plan: str, dialect: str, table: str) -> bool:
    if dialect == "sqlite":
        return re.search(rf"\bSCAN {table}\b", plan) is not None
    return re.search(rf"Seq Scan on {table}\b", plan) is not None


def test_plan_of_the_newest_studies_page_needs_no_sort(archive: Archive) -> None:
    """The default study list (newest first) is read in the order of ix_studies_date_id."""
    _load(archive)
    plan = _plan(archive, lambda s: search(Query(STUDY, {}), AS_ADMIN, session=s, limit=10))
    dialect = archive.db.engine.dialect.name
    if dialect == "sqlite":
        assert re.search(r"SCAN studies USING (COVERING )?INDEX ix_studies_date_id\b", plan), plan
        assert "TEMP B-TREE FOR ORDER BY" not in plan, plan
    else:
        assert _uses_index(plan, dialect, "studies", "ix_studies_date_id"), plan
        assert "Sort" not in plan, plan


def test_plan_of_studies_by_patient_name_wildcard(archive: Archive) -> None:
    _load(archive)
    query = Query(STUDY, {"00100010": "popescu*"})
    plan = _plan(archive, lambda s: search(query, AS_ADMIN, session=s))
    dialect = archive.db.engine.dialect.name
    # SQLite: GLOB on ix_studies_name_date; PostgreSQL: LIKE on the text_pattern_ops index
    assert _uses_index(plan, dialect, "studies", r"ix_studies_(name_date|patient_name_pattern)"), plan
    assert not _full_scan(plan, dialect, "studies"), plan


def test_plan_of_studies_by_date_range(archive: Archive) -> None:
    _load(archive)
    query = Query(STUDY, {"00080020": "20260101-20261231"})
    plan = _plan(archive, lambda s: search(query, AS_ADMIN, session=s))
    dialect = archive.db.engine.dialect.name
    assert _uses_index(plan, dialect, "studies", "ix_studies_date_id"), plan
    assert not _full_scan(plan, dialect, "studies"), plan


def test_plan_of_instances_of_a_study(archive: Archive) -> None:
    study_uid, _ = _load(archive)
    query = Query(IMAGE, study_uid=study_uid)
    plan = _plan(archive, lambda s: search(query, AS_ADMIN, session=s))
    dialect = archive.db.engine.dialect.name
    assert _uses_index(plan, dialect, "instances", "ix_instances_study_id"), plan
    for table in ("instances", "series", "studies"):
        assert not _full_scan(plan, dialect, table), plan
