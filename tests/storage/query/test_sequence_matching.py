"""Sequence Matching (PS3.4 C.2.2.2.6) as SQL over the DICOM JSON that ingest keeps, both backends.

Real instances go through `storage.ingest.pipeline.ingest`, so the JSON matched is exactly what the index
holds: the series' attributes (RequestAttributesSequence), the study's (ProcedureCodeSequence)
and each instance's whole data set (ReferencedStudySequence, ContentSequence...). SQLite runs
the JSON1 form and PostgreSQL the jsonb form of the same expression, so every case is checked
on both. The plan tests show that a sequence key, a correlated subquery, leaves the indexed
keys of the same statement their index.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import BasicTextSRStorage, CTImageStorage
from sqlalchemy import ColumnElement, Connection, Select, event, select

from storage.archive import Archive
from storage.index.models import Instance, Series, Study
from storage.query import sequences as m
from storage.query.matching import InvalidQuery
from tests.kit import dicom_factory as f
from tests.kit.principals import ADMIN
from tests.kit.seed import seed

REF1, REF2 = f.uid(), f.uid()
# requested procedure, scheduled step
RAS = "RequestAttributesSequence"
RPID, SPSID = f"{RAS}.RequestedProcedureID", f"{RAS}.ScheduledProcedureStepID"
PROTOCOL_CODE = f"{RAS}.ScheduledProtocolCodeSequence.CodeValue"


def item(**attrs: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def code(value: str, scheme: str, meaning: str) -> Dataset:
    return item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _a() -> Dataset:
    """Two requested procedures in one series, a nested protocol code, an SR-like content item."""
    ds = f.ct_dataset(charset="ISO_IR 192", patient_name="Ştefănescu^Ioana")
    ds.RequestAttributesSequence = [
        item(
            RequestedProcedureID="RP123",
            ScheduledProcedureStepID="SPS1",
            ScheduledStationAETitle=["CT1", "CT2"],
            ScheduledProtocolCodeSequence=[code("P1", "99LOCAL", "Torace nativ")],
        ),
        item(RequestedProcedureID="RP456", ScheduledProcedureStepID="SPS2"),
    ]
    ds.ProcedureCodeSequence = [code("CT-THX", "99MUNI", "CT torace")]
    ds.ReferencedStudySequence = [item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=REF1)]
    ds.ReferencedImageSequence = [
        item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=f.uid(), ReferencedFrameNumber=[1, 2, 3])
    ]
    ds.ContentSequence = [
        item(
            PersonName="Ştefănescu^Ioana",
            Date="20260115",
            Time="083000",
            DateTime="20260115083000+0200",
            MeasuredValueSequence=[item(NumericValue="1.5")],
        )
    ]
    return ds


def _b() -> Dataset:
    """One requested procedure (lower-case ID), two content items with names."""
    ds = f.ct_dataset(charset="ISO_IR 192", patient_name="Popescu^Ion")
    ds.SOPClassUID = BasicTextSRStorage  # not a CT: the plans combine the sequence with the class index
    ds.RequestAttributesSequence = [
        item(
            RequestedProcedureID="rp123",
            ScheduledProcedureStepID="SPS2",
            ScheduledProtocolCodeSequence=[code("P2", "99LOCAL", "Cap")],
        )
    ]
    ds.ProcedureCodeSequence = [code("MR-BRAIN", "99MUNI", "IRM cerebral"), code("CT-THX", "99OTHER", "CT")]
    ds.ReferencedStudySequence = [item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=REF2)]
    ds.ReferencedImageSequence = [
        item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=f.uid(), ReferencedFrameNumber=7)
    ]
    ds.ContentSequence = [
        item(
            PersonName="POPESCU^ION",
            Date="20251201",
            Time="120000.5",
            DateTime="20251201120000",
            MeasuredValueSequence=[item(NumericValue="2")],
        ),
        item(PersonName="Yamada^Tarou=山田^太郎", Date=""),
    ]
    return ds


def _c() -> Dataset:
    """No sequences at all, and an empty RequestedProcedureID: matches no sequence key."""
    ds = f.ct_dataset()
    ds.RequestAttributesSequence = [item(RequestedProcedureID="", ScheduledProcedureStepID="SPS9")]
    return ds


@pytest.fixture()
def conn(archive: Archive) -> Iterator[Connection]:
    """Instances a, b and c ingested; study, series and SOP UIDs mapped back to those labels."""
    labels: dict[str, str] = {}
    for label, ds in (("a", _a()), ("b", _b()), ("c", _c())):
        seed(archive, ds, as_=ADMIN)
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID):
            labels[str(uid)] = label
    with archive.db.engine.connect() as connection:
        connection.info["labels"] = labels
        yield connection


def found(conn: Connection, uid: Any, expr: ColumnElement[bool] | None) -> set[str]:
    stmt = select(uid) if expr is None else select(uid).where(expr)
    return {conn.info["labels"][u] for u in conn.scalars(stmt)}


def instances(conn: Connection, expr: ColumnElement[bool] | None) -> set[str]:
    return found(conn, Instance.sop_uid, expr)


def check(conn: Connection, cases: list[tuple[dict[str, str], set[str]]], level: str = "instance") -> None:
    """Each case: keys as QIDO-RS sends them (dotted paths) and the labels that must match."""
    column, uid = {
        "instance": (Instance.dicom_json, Instance.sop_uid),
        "series": (Series.attrs_json, Series.series_uid),
        "study": (Study.attrs_json, Study.study_uid),
    }[level]
    for keys, expected in cases:
        expr = m.sequence_keys(column, keys)
        assert expr is not None, keys
        assert found(conn, uid, expr) == expected, (level, keys)


def test_text_is_single_value_or_wildcard_and_case_sensitive(conn: Connection) -> None:
    cases = [
        ({RPID: "RP123"}, {"a"}),
        ({RPID: "rp123"}, {"b"}),  # case matters outside PN
        ({RPID: "RP12"}, set()),
        ({RPID: " RP123 "}, {"a"}),  # padding is not significant
        ({RPID: "RP*"}, {"a"}),
        ({RPID: "*123"}, {"a", "b"}),
        ({RPID: "R?4*"}, {"a"}),
        ({RPID: "RP%"}, set()),  # % and _ are literal
        ({"00400275.00401001": "RP456"}, {"a"}),  # tags or keywords
        ({f"{RAS}.ScheduledStationAETitle": "CT2"}, {"a"}),  # multi-valued: any value matches
        ({f"{RAS}.ScheduledStationAETitle": "CT?"}, {"a"}),
    ]
    check(conn, cases)
    check(conn, cases, "series")  # ingest keeps RequestAttributesSequence with the series
    for universal in ("", "*", "**", "  "):
        assert m.sequence(Instance.dicom_json, ["00400275", "00401001"], universal) is None
    assert m.sequence_keys(Instance.dicom_json, {RPID: "", SPSID: "*"}) is None


def test_keys_of_one_sequence_must_match_in_the_same_item(conn: Connection) -> None:
    check(
        conn,
        [
            ({RPID: "RP123", SPSID: "SPS1"}, {"a"}),
            ({RPID: "RP123", SPSID: "SPS2"}, set()),  # a has both, but in different items
            ({RPID: "RP456", SPSID: "SPS2"}, {"a"}),
            ({RPID: "*", SPSID: "SPS2"}, {"a", "b"}),
            ({RPID: "RP*", SPSID: "SPS?"}, {"a"}),
            # keys of different sequences are independent conditions, all required
            ({RPID: "RP123", "ReferencedStudySequence.ReferencedSOPInstanceUID": REF1}, {"a"}),
            ({RPID: "RP123", "ReferencedStudySequence.ReferencedSOPInstanceUID": REF2}, set()),
        ],
    )


def test_nested_sequences_two_levels_deep(conn: Connection) -> None:
    check(
        conn,
        [
            ({PROTOCOL_CODE: "P1"}, {"a"}),
            ({PROTOCOL_CODE: "P?"}, {"a", "b"}),
            ({PROTOCOL_CODE: "P1", RPID: "RP123"}, {"a"}),
            ({PROTOCOL_CODE: "P1", RPID: "RP456"}, set()),  # P1 is in RP123's item
            ({PROTOCOL_CODE: "P1", f"{RAS}.ScheduledProtocolCodeSequence.CodingSchemeDesignator": "99LOCAL"}, {"a"}),
            ({PROTOCOL_CODE: "P1", f"{RAS}.ScheduledProtocolCodeSequence.CodingSchemeDesignator": "99MUNI"}, set()),
            ({"ContentSequence.MeasuredValueSequence.NumericValue": "1.5"}, {"a"}),
        ],
    )
    with pytest.raises(InvalidQuery, match="at most 2 deep"):
        m.sequence(Instance.dicom_json, "ContentSequence.ContentSequence.ContentSequence.TextValue", "x")


def test_study_level_sequences_match_on_the_study_attributes(conn: Connection) -> None:
    keys = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
    value, scheme, meaning = (f"ProcedureCodeSequence.{k}" for k in keys)
    check(
        conn,
        [
            ({value: "CT-THX"}, {"a", "b"}),
            ({value: "CT-THX", scheme: "99MUNI"}, {"a"}),  # b's CT-THX is coded in 99OTHER
            ({value: "MR-BRAIN", scheme: "99MUNI"}, {"b"}),
            ({value: "MR*"}, {"b"}),
            ({meaning: "IRM cerebral"}, {"b"}),
            ({meaning: "irm cerebral"}, set()),
        ],
        "study",
    )


def test_uid_lists(conn: Connection) -> None:
    path = "ReferencedStudySequence.ReferencedSOPInstanceUID"
    check(conn, [({path: REF1}, {"a"}), ({path: f"{REF1},{REF2}"}, {"a", "b"}), ({path: f"{REF2}\\{f.uid()}"}, {"b"})])
    with pytest.raises(InvalidQuery, match=r"ReferencedStudySequence\.ReferencedSOPInstanceUID: .* not a valid UID"):
        m.sequence(Instance.dicom_json, path, "1.2.03")


def test_dates_times_and_datetimes(conn: Connection) -> None:
    day, clock, moment = "ContentSequence.Date", "ContentSequence.Time", "ContentSequence.DateTime"
    check(
        conn,
        [
            ({day: "20260115"}, {"a"}),
            ({day: "20260101-"}, {"a"}),
            ({day: "-20251231"}, {"b"}),  # b's second item has an empty Date: matches no range
            ({day: "20251201-20260115"}, {"a", "b"}),
            ({clock: "08"}, {"a"}),  # a partial time is its whole hour
            ({clock: "1200-"}, {"b"}),
            ({clock: "-0830"}, {"a"}),
            ({moment: "20260115"}, {"a"}),
            ({moment: "20260115080000-20260115090000"}, {"a"}),  # the stored offset is not compared
            ({moment: "20251201120001-"}, {"a"}),
            ({moment: "-20251201120000"}, {"b"}),
            ({day: "20260115", clock: "08"}, {"a"}),
            ({day: "20251201", clock: "08"}, set()),
        ],
    )
    for path, value in ((day, "2026-01-01"), (day, "20260230"), (clock, "25"), (day, "20260201-20260101")):
        with pytest.raises(InvalidQuery, match=re.escape(path)):
            m.sequence(Instance.dicom_json, path, value)


def test_person_names_are_case_insensitive_on_the_alphabetic_group(conn: Connection) -> None:
    name = "ContentSequence.PersonName"
    check(
        conn,
        [
            ({name: "popescu^ion"}, {"b"}),
            ({name: "POP*"}, {"b"}),
            ({name: "*^ioana"}, {"a"}),
            ({name: "Ştefănescu^IOANA"}, {"a"}),  # ASCII letters fold on both backends
            ({name: "ŞTEF*"}, {"a"}),
            ({name: "Yamada^Tarou"}, {"b"}),  # the Alphabetic group of a multi-group name
            ({name: "yamada^tarou=山田^太郎"}, {"b"}),  # the query's other groups are not compared
            ({name: "Popescu"}, set()),  # single value: the whole name
            # documented limit: diacritics are not folded inside sequences (the JSON keeps the
            # name as sent and the database cannot fold it)
            ({name: "Stefanescu^Ioana"}, set()),
        ],
    )


def test_numbers_match_by_value_and_any_of_a_list(conn: Connection) -> None:
    frame, numeric = (
        "ReferencedImageSequence.ReferencedFrameNumber",
        "ContentSequence.MeasuredValueSequence.NumericValue",
    )
    check(
        conn,
        [
            ({frame: "2"}, {"a"}),  # IS, multi-valued: any value
            ({frame: "+7"}, {"b"}),
            ({frame: "2\\7"}, {"a", "b"}),
            ({frame: "9"}, set()),
            ({numeric: "1.50"}, {"a"}),  # DS compared as numbers
            ({numeric: "2.0"}, {"b"}),
            ({numeric: "1.5,2"}, {"a", "b"}),
            ({numeric: "1.4"}, set()),
        ],
    )
    for path, value in ((frame, "2.5"), (frame, "x*"), (numeric, "1,5.5.5"), (numeric, "1e")):
        with pytest.raises(InvalidQuery, match=re.escape(path)):
            m.sequence(Instance.dicom_json, path, value)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("RequestedProcedureID", "RP1", "is not a sequence path"),
        ("RequestAttributesSequence", "x", "is not a sequence path"),
        ("PatientName.FamilyName", "x", "not a keyword or tag"),
        ("00100010.00100020", "x", "PatientName is not a sequence"),
        ("RequestAttributesSequence.0011ZZZZ", "x", "not a keyword or tag"),
        ("RequestAttributesSequence.00091001", "x", "not an attribute of the DICOM data dictionary"),
        ("ReferencedImageSequence.PixelData", "x", "a value of VR OB or OW cannot be matched"),
        ("RequestAttributesSequence.ScheduledProtocolCodeSequence", "x", "a value of VR SQ cannot be matched"),
    ],
)
def test_malformed_paths_are_refused_with_a_reason(path: str, value: str, message: str) -> None:
    with pytest.raises(InvalidQuery, match=re.escape(message)):
        m.sequence(Instance.dicom_json, path, value)


def test_a_path_given_as_value_and_as_sequence_is_refused() -> None:
    with pytest.raises(InvalidQuery, match="both as a value and as a sequence"):
        m.sequence_keys(
            Instance.dicom_json,
            {f"{RAS}.ScheduledProtocolCodeSequence": "", PROTOCOL_CODE: "P1"},
        )
    # an empty sequence key only asks for the sequence back
    assert m.sequence(Instance.dicom_json, f"{RAS}.ScheduledProtocolCodeSequence", "") is None


def test_statement_cache_keeps_each_value(conn: Connection) -> None:
    """Same shape, other values: the cached statement must bind the new ones (both variants)."""
    for value, expected in (("RP123", {"a"}), ("RP456", {"a"}), ("rp123", {"b"}), ("nope", set())):
        assert instances(conn, m.sequence(Instance.dicom_json, RPID, value)) == expected, value
    for pattern, expected in (("RP*", {"a"}), ("rp*", {"b"})):
        assert instances(conn, m.sequence(Instance.dicom_json, RPID, pattern)) == expected, pattern


# ----- plans ---------------------------------------------------------------------------------


def plan(conn: Connection, stmt: Select[Any]) -> str:
    """Run `stmt`, then EXPLAIN the very SQL and parameters that were sent."""
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        sent.append((statement, parameters))

    event.listen(conn, "before_cursor_execute", capture)
    try:
        conn.execute(stmt).all()
    finally:
        event.remove(conn, "before_cursor_execute", capture)
    statement, parameters = sent[-1]
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
        return "\n".join(str(r[-1]) for r in rows)
    # a tiny table is always scanned sequentially; priced out, the plan shows what an index can do
    conn.exec_driver_sql("SET enable_seqscan = off")
    try:
        rows = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
    finally:
        conn.exec_driver_sql("RESET enable_seqscan")
    return "\n".join(str(r[0]) for r in rows)


def uses_index(text: str, dialect: str, table: str, index: str) -> bool:
    if dialect == "sqlite":
        return re.search(rf"SEARCH {table} USING (COVERING )?INDEX {index}\b", text) is not None
    return re.search(rf"Index (Only )?Scan using {index} on {table}\b|Bitmap Index Scan on {index}\b", text) is not None


def full_scan(text: str, dialect: str, table: str) -> bool:
    if dialect == "sqlite":
        return re.search(rf"\bSCAN {table}\b", text) is not None
    return re.search(rf"Seq Scan on {table}\b", text) is not None


@pytest.mark.parametrize(
    ("table", "index", "stmt"),
    [
        (
            "instances",
            "ix_instances_sop_class_uid",
            select(Instance.sop_uid).where(
                Instance.sop_class_uid == CTImageStorage,
                m.sequence_keys(Instance.dicom_json, {RPID: "RP*", SPSID: "SPS1"}),
            ),
        ),
        (
            "studies",
            "ix_studies_date_id",
            select(Study.study_uid).where(
                Study.study_date >= "20260101",
                m.sequence(Study.attrs_json, "ProcedureCodeSequence.CodeValue", "CT-THX"),
            ),
        ),
        (
            "series",
            "ix_series_modality",
            select(Series.series_uid).where(
                Series.modality == "CT",
                m.sequence(Series.attrs_json, PROTOCOL_CODE, "P1"),
            ),
        ),
    ],
    ids=["instances-by-class", "studies-by-date", "series-by-modality"],
)
def test_plan_keeps_the_index_of_the_other_key(conn: Connection, table: str, index: str, stmt: Select[Any]) -> None:
    text = plan(conn, stmt)
    dialect = conn.dialect.name
    print(f"\n--- {dialect} {table}\n{text}")  # noqa: T201 - the plan is the evidence
    assert uses_index(text, dialect, table, index), text
    assert not full_scan(text, dialect, table), text
