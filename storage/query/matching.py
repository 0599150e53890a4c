"""DICOM attribute matching (PS3.4 C.2.2.2) turned into SQLAlchemy expressions on index columns.

Each function takes one column (or two, for combined date and time) and one attribute's query
value as the peer sent it, and returns a boolean SQL expression, or None for Universal Matching
(an empty value, or a lone ``*``: PS3.4 C.2.2.2.3 and C.2.2.2.4). They know nothing of HTTP or
DIMSE, so QIDO-RS (PS3.18 8.3.4) and C-FIND share them; a malformed value raises
`InvalidQuery`, which each edge maps (400 problem+json, C-FIND 0xA900).

Wild cards (``*`` any run of characters, ``?`` one character) are compiled per backend:
SQLite's ``GLOB`` (case-sensitive, and able to use a plain index for a literal prefix) and
``LIKE ... ESCAPE '\\'`` elsewhere, with ``%``, ``_`` and ``\\`` escaped. Person names are
matched on the folded column (`storage.dicom.charset.fold`: upper case, no diacritics), with the
query value folded the same way, so matching is case- and diacritic-insensitive while the SQL
stays a case-sensitive comparison an index can serve.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime as _datetime
from typing import Any, Protocol, TypeAlias

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Numeric,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    false,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy import column as _column
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.sql.type_api import TypeDecorator
from sqlalchemy.sql.visitors import InternalTraversal

from storage.dicom.charset import fold
from storage.dicom.uids import check_uid
from storage.errors import RejectedInput

WILDCARDS = frozenset("*?")
#: PS3.5 9.1: components of digits without leading zeros, at most 64 characters
_DATE_RE = re.compile(r"^\d{8}$")
_TIME_RE = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")
_INT_RE = re.compile(r"^[+-]?\d{1,10}$")
#: where a name component may start, for fuzzy matching: start, family/given/middle
#: separator, a space or hyphen inside a component, and the start of another component group
_COMPONENT_STARTS = ("", "*^", "* ", "*-", "*=")


class InvalidQuery(RejectedInput):
    """A query key or value the archive cannot interpret (C-FIND: 0xA900; QIDO-RS: 400)."""

    status = 0xA900  # Identifier does not match SOP Class
    reason = "invalid_query"


class _Pattern(TypeDecorator[str]):
    """A DICOM wild-card pattern, translated for the dialect it is sent to."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is None:
            return None
        return _glob(value) if dialect.name == "sqlite" else _like(value)

    def process_literal_param(self, value: str | None, dialect: Any) -> str:
        return self.process_bind_param(value, dialect) or ""


class Wildcard(ColumnElement[bool]):
    """`column` matches the DICOM pattern (``*``, ``?``); GLOB on SQLite, LIKE elsewhere."""

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # no "= 1" appended on SQLite, which would hide the index
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("pattern", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: ColumnElement[Any], pattern: str) -> None:
        self.column = column
        self.pattern: BindParameter[str] = bindparam(None, pattern, type_=_Pattern(), unique=True)


@compiles(Wildcard)
def _compile_like(element: Wildcard, compiler: SQLCompiler, **kw: Any) -> str:
    column, pattern = compiler.process(element.column, **kw), compiler.process(element.pattern, **kw)
    return f"{column} LIKE {pattern} ESCAPE '\\'"


@compiles(Wildcard, "sqlite")
def _compile_glob(element: Wildcard, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{compiler.process(element.column, **kw)} GLOB {compiler.process(element.pattern, **kw)}"


def _glob(pattern: str) -> str:
    # GLOB's own wild cards are * and ?; only '[' starts a character class and needs escaping
    return pattern.replace("[", "[[]")


def _like(pattern: str) -> str:
    out = []
    for c in pattern:
        if c in "\\%_":
            out.append("\\" + c)
        else:
            out.append({"*": "%", "?": "_"}.get(c, c))
    return "".join(out)


def _clean(value: str) -> str:
    # PS3.5 6.2: leading and trailing spaces are not significant for these VRs
    return value.strip(" ")


def has_wildcard(value: str) -> bool:
    return any(c in WILDCARDS for c in value)


def string(column: ColumnElement[Any], value: str) -> ColumnElement[bool] | None:
    """Single Value or Wild Card Matching, case-sensitive (PS3.4 C.2.2.2.1, C.2.2.2.4).

    For AE, CS, LO, SH, UC and the like: ``CT`` matches exactly, ``AB*`` and ``A?C`` are
    wild-card patterns, an empty value or ``*`` alone is Universal Matching.
    """
    value = _clean(value)
    if not value.strip("*"):  # empty, or only "*": Universal Matching
        return None
    if has_wildcard(value):
        return Wildcard(column, value)
    return column == value


def person_name(column: ColumnElement[Any], value: str, *, fuzzy: bool = False) -> ColumnElement[bool] | None:
    """Person Name matching on a folded column, insensitive to case and diacritics.

    Literal (PS3.4 C.2.2.2.1 allows PN matching to be insensitive to case and accents): the
    folded value equals the folded name, or, with ``*``/``?``, matches it as a pattern. A value
    without ``=`` is matched against the first (alphabetic) component group too, so
    ``Yamada^Tarou`` finds ``Yamada^Tarou=山田^太郎``.

    Fuzzy (``fuzzymatching=true``, PS3.4 C.2.2.2.1.1; the rule is ours): the value is split into
    words at ``^``, ``=``, spaces, hyphens and commas; every word must be the start of some word of the
    name, in any component and any order. ``ion`` finds ``Popescu^Ion`` and ``Ionescu^Maria``;
    ``ioana stef`` finds ``Ştefănescu^Ioana``. Wild cards inside a word keep their meaning.
    Fuzzy matching cannot use the name index (a word may start anywhere in the column), so it
    costs a scan of the rows that the other keys leave.
    """
    value = _clean(value)
    if not value.strip("*"):  # empty, or only "*": Universal Matching
        return None
    folded = fold(value)
    if fuzzy:
        words = [w for w in re.split(r"[\^ ,\-=]+", folded) if w and set(w) != {"*"}]
        if not words:
            return None
        return and_(*(or_(*(Wildcard(column, f"{start}{word}*") for start in _COMPONENT_STARTS)) for word in words))
    exact: ColumnElement[bool] = Wildcard(column, folded) if has_wildcard(folded) else column == folded
    if "=" in folded or folded.endswith("*"):
        return exact  # a trailing * already reaches into the other component groups
    return or_(exact, Wildcard(column, f"{folded}=*"))


def uid_list(column: ColumnElement[Any], value: str) -> ColumnElement[bool] | None:
    """List of UID Matching (PS3.4 C.2.2.2.2): one UID, or several separated by ``\\`` or ``,``.

    Every UID must be valid (PS3.5 9.1); UIDs take no wild cards.

    Raises
    ------
    InvalidQuery
        A list item is not a valid UID.
    """
    value = _clean(value)
    if not value:
        return None
    uids = [u.strip(" \x00") for u in re.split(r"[\\,]", value)]
    for uid in uids:
        check_uid("", uid, InvalidQuery)
    unique = list(dict.fromkeys(uids))
    return column == unique[0] if len(unique) == 1 else column.in_(unique)


def _check_date(text: str, what: str) -> str:
    if not _DATE_RE.match(text):
        raise InvalidQuery(f"{what!r} is not a date YYYYMMDD")
    try:
        _datetime.strptime(text, "%Y%m%d")
    except ValueError:
        raise InvalidQuery(f"{what!r} is not a calendar date") from None
    return text


def _split_range(value: str, kind: str) -> tuple[str, str, bool]:
    if value.count("-") > 1:
        raise InvalidQuery(f"{value!r} is not a {kind} or a {kind} range (A-B, A-, -B)")
    low, dash, high = value.partition("-")
    if dash and not low and not high:
        raise InvalidQuery(f"{value!r} is a {kind} range without bounds")
    return low, high, bool(dash)


def date(column: ColumnElement[Any], value: str) -> ColumnElement[bool] | None:
    """Single value or Range Matching of a DA column (PS3.4 C.2.2.2.5).

    ``20260101`` matches that day; ``20260101-20261231``, ``20260101-`` and ``-20261231`` are
    inclusive ranges. An entity whose date is empty matches no range.

    Raises
    ------
    InvalidQuery
        Not ``YYYYMMDD`` (or a range of those), not a calendar date, or a reversed range.
    """
    value = _clean(value)
    if not value:
        return None
    low, high, is_range = _split_range(value, "date")
    low, high = (_check_date(b, value) if b else "" for b in (low, high))
    if not is_range:
        return column == low
    if low and high and low > high:
        raise InvalidQuery(f"{value!r}: the range ends before it starts")
    conditions = [column >= low if low else column > ""]
    if high:
        conditions.append(column <= high)
    return and_(*conditions)


def _check_time(text: str, what: str) -> str:
    m = _TIME_RE.match(text)
    if not m:
        raise InvalidQuery(f"{what!r} is not a time HH[MM[SS[.FFFFFF]]]")
    hh, mm, ss = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    if hh > 23 or mm > 59 or ss > 60:
        raise InvalidQuery(f"{what!r} is not a time of day")
    if m.group(4) and not m.group(3):
        raise InvalidQuery(f"{what!r}: a fraction needs seconds")
    return text


def _time_upper(text: str) -> str:
    """The last instant a partial time stands for: ``10`` -> ``105959.999999``."""
    hhmmss, _, frac = text.partition(".")
    return (hhmmss + "5959"[: 6 - len(hhmmss)] if len(hhmmss) < 6 else hhmmss) + "." + frac.ljust(6, "9")


def time(column: ColumnElement[Any], value: str) -> ColumnElement[bool] | None:
    """Single value or Range Matching of a TM column (PS3.4 C.2.2.2.5).

    Times compare as text, which orders ``HHMMSS.FFFFFF`` correctly. A partial upper bound covers
    its whole hour or minute (``-10`` ends at 10:59:59.999999); a single partial value (``10``)
    matches that hour or minute as a range.

    Raises
    ------
    InvalidQuery
        Not ``HH[MM[SS[.F]]]`` (or a range of those), or a reversed range.
    """
    value = _clean(value)
    if not value:
        return None
    low, high, is_range = _split_range(value, "time")
    if not is_range:
        high = low
    low = _check_time(low, value) if low else ""
    high = _check_time(high, value) if high else ""
    if low and high and low > _time_upper(high):
        raise InvalidQuery(f"{value!r}: the range ends before it starts")
    conditions = [column >= low if low else column > ""]
    if high:
        conditions.append(column <= _time_upper(high))
    return and_(*conditions)


_DT_BOUND = re.compile(r"^\d{8}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?([+-]\d{4})?$")


def _datetime_bounds(value: str) -> tuple[str, str]:
    """Split a DT value or range at the hyphen that leaves two valid bounds (offsets have hyphens too)."""
    if _DT_BOUND.match(value):
        return value, value
    for i, c in enumerate(value):
        low, high = value[:i], value[i + 1 :]
        if c == "-" and (low or high) and all(not b or _DT_BOUND.match(b) for b in (low, high)):
            return low, high
    raise InvalidQuery(f"{value!r} is not a datetime or a datetime range (A-B, A-, -B)")


def _split_datetime(text: str, what: str) -> tuple[str, str]:
    text = text[:-5] if len(text) > 8 and text[-5] in "+-" else text  # the offset is not indexed
    day, clock = text[:8], text[8:]
    _check_date(day, what)
    if clock:
        _check_time(clock, what)
    return day, clock


def datetime(
    date_column: ColumnElement[Any], time_column: ColumnElement[Any], value: str
) -> ColumnElement[bool] | None:
    """Single value or Range Matching of a DT value over a date and a time column (PS3.4 C.2.2.2.5).

    For Combined Datetime Matching (a DT attribute kept as DA + TM columns, or StudyDate with
    StudyTime, PS3.4 C.2.2.2.5.1): ``20260101083000-20260101120000`` matches from 08:30 that
    day to noon. A bound without a time covers its whole day, a partial time its whole hour or
    minute. A timezone offset suffix is accepted and ignored: the index keeps times as sent.

    Raises
    ------
    InvalidQuery
        Not ``YYYYMMDD[HH[MM[SS[.F]]]][&ZZXX]`` or a range of those.
    """
    value = _clean(value)
    if not value:
        return None
    low, high = _datetime_bounds(value)
    conditions: list[ColumnElement[bool]] = [date_column > ""]
    if low:
        day, clock = _split_datetime(low, value)
        if clock:
            conditions.append(or_(date_column > day, and_(date_column == day, time_column >= clock)))
        else:
            conditions.append(date_column >= day)
    if high:
        day, clock = _split_datetime(high, value)
        if clock:
            conditions.append(or_(date_column < day, and_(date_column == day, time_column <= _time_upper(clock))))
        else:
            conditions.append(date_column <= day)
    return and_(*conditions)


def integer(column: ColumnElement[Any], value: str) -> ColumnElement[bool] | None:
    """Single Value Matching of an IS/US column (SeriesNumber, InstanceNumber, Rows...).

    Several values separated by ``\\`` or ``,`` match any of them.

    Raises
    ------
    InvalidQuery
        A value is not an integer.
    """
    value = _clean(value)
    if not value:
        return None
    items = [v.strip() for v in re.split(r"[\\,]", value)]
    for item in items:
        if not _INT_RE.match(item):
            raise InvalidQuery(f"{item!r} is not an integer")
    numbers = list(dict.fromkeys(int(v) for v in items))
    return column == numbers[0] if len(numbers) == 1 else column.in_(numbers)


def multi_valued(column: ColumnElement[Any], value: str) -> ColumnElement[bool] | None:
    """Match one value of a multi-valued column stored ``\\``-joined (``CT\\MR``).

    For Modalities in Study, a multi-valued attribute that matches when any of its values does
    (PS3.4 C.2.2.2.1): ``CT`` finds ``CT\\MR``; ``CT\\MR`` or ``CT,MR`` finds studies with either.
    A value may hold wild cards, which stay within one item only when they stand for a whole item.
    """
    value = _clean(value)
    if not value:
        return None
    items = [v.strip() for v in re.split(r"[\\,]", value) if v.strip()]
    if not items or any(set(v) == {"*"} for v in items):
        return None
    matches: list[ColumnElement[bool]] = []
    for item in items:
        if "\\" in item:
            continue
        matches.append(column == item if not has_wildcard(item) else Wildcard(column, item))
        matches.extend(Wildcard(column, p.format(item)) for p in ("{}\\*", "*\\{}", "*\\{}\\*"))
    return or_(*matches) if matches else false()


# ----- Sequence Matching (PS3.4 C.2.2.2.6) over the DICOM JSON the index keeps -----------------

#: one query item, as a tree: an attribute's tag -> its value as sent, or a nested sequence's tag
#: -> the keys of its one query item
ItemKeys: TypeAlias = dict[str, "str | ItemKeys"]

#: sequences inside sequences that a key may reach through (PS3.4 C.2.2.2.6 leaves it open)
MAX_SEQUENCE_DEPTH = 2
_TEXT_VRS = frozenset("AE AS AT CS LO LT SH ST UC UR UT".split())
_INTEGER_VRS = frozenset("IS SL SS SV UL US UV".split())
_FLOAT_VRS = frozenset("DS FD FL".split())
_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def sequence(json_column: ColumnElement[Any], path: str | Sequence[str], value: str) -> ColumnElement[bool] | None:
    """Sequence Matching of one key inside a sequence (PS3.4 C.2.2.2.6, PS3.18 8.3.4.1).

    `json_column` is a text column holding a DICOM JSON object (PS3.18 F.2): the study's or the
    series' attributes, or an instance's whole data set. `path` names the sequence(s) and the
    attribute inside, as tags or keywords (``["00400275", "00401001"]``,
    ``"RequestAttributesSequence.RequestedProcedureID"``), at most `MAX_SEQUENCE_DEPTH`
    sequences deep. The entity matches when ANY item of the sequence has a value of the
    attribute that matches `value` by the rules of the attribute's VR (see `sequence_keys`).

    Raises
    ------
    InvalidQuery
        The path is not sequence(s) then an attribute of the data dictionary, is too deep, or
        `value` is malformed for the attribute's VR.
    """
    parts = path.split(".") if isinstance(path, str) else list(path)
    return sequence_keys(json_column, {".".join(parts): value})


def sequence_keys(json_column: ColumnElement[Any], keys: Mapping[str, str]) -> ColumnElement[bool] | None:
    """Sequence Matching of several keys, those of one sequence matched in the same item.

    `keys` maps dotted paths (``00400275.00401001``, keywords allowed) to values as sent, the
    form QIDO-RS parameters and a flattened C-FIND identifier share. Keys under the same
    sequence are the keys of its one query item (PS3.4 C.2.2.2.6): a stored item must match all
    of them, so ``RequestedProcedureID=RP1`` with ``ScheduledProcedureStepID=S2`` does not find
    an entity whose RP1 and S2 are in different items. Keys under different sequences are
    independent conditions, all required.

    Inside an item each value follows its VR, as at the top level: text single value
    (case-sensitive) or ``*``/``?`` wild cards; UID lists; DA, TM and DT ranges; integers and
    decimals compared as numbers (a list matches any); person names on the Alphabetic group,
    case-insensitive through the database's ``upper()`` (SQLite folds ASCII letters only, and
    no diacritics are folded here, unlike top-level names). A multi-valued attribute matches
    when any of its values does; an attribute absent or empty in an item never matches a
    non-universal key. An empty value, a lone ``*`` or an item of universal keys only is
    Universal Matching: None.

    The SQL is written per backend at compile time: SQLite's ``json_each`` over the text
    column, PostgreSQL's ``jsonb_array_elements`` over it cast to ``jsonb``, each as correlated
    ``EXISTS`` subqueries. They cannot use an index, so they cost a JSON parse per row that
    the indexed keys of the same query leave, and do not stop those keys from using theirs.

    Raises
    ------
    InvalidQuery
        A path is malformed, too deep, not through sequences, given both as an attribute and
        as a sequence, or a value is malformed for its VR.
    """
    tree: ItemKeys = {}
    for dotted, value in keys.items():
        _plant(tree, _sequence_path(dotted), value)
    sequences = {tag: item for tag, item in tree.items() if isinstance(item, dict)}  # paths end below one
    per_dialect = [_conditions(json_column, sequences, dialect) for dialect in (_SQLITE, _POSTGRES)]
    if not per_dialect[0]:
        return None
    sqlite_expr, postgres_expr = (and_(*conditions) for conditions in per_dialect)
    return _ByDialect(sqlite_expr, postgres_expr)


class _ByDialect(ColumnElement[bool]):
    """One condition written for SQLite's JSON1 and for PostgreSQL's jsonb, chosen when compiled.

    Matching functions are called before anyone knows the database (queries build them from
    a request, not from a session), as `Wildcard` is; JSON functions differ too much between
    the two for one expression to serve both.
    """

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True
    _traverse_internals = [
        ("sqlite", InternalTraversal.dp_clauseelement),
        ("postgresql", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, sqlite: ColumnElement[bool], postgresql: ColumnElement[bool]) -> None:
        self.sqlite = sqlite
        self.postgresql = postgresql


@compiles(_ByDialect)
def _compile_postgresql(element: _ByDialect, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.postgresql, **kw)


@compiles(_ByDialect, "sqlite")
def _compile_sqlite(element: _ByDialect, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.sqlite, **kw)


class _UpperWildcard(Wildcard):
    """`Wildcard` with both sides upper-cased by the database, for names it cannot fold."""

    inherit_cache = True


@compiles(_UpperWildcard)
def _compile_upper_like(element: _UpperWildcard, compiler: SQLCompiler, **kw: Any) -> str:
    column, pattern = compiler.process(element.column, **kw), compiler.process(element.pattern, **kw)
    return f"upper({column}) LIKE upper({pattern}) ESCAPE '\\'"


@compiles(_UpperWildcard, "sqlite")
def _compile_upper_glob(element: _UpperWildcard, compiler: SQLCompiler, **kw: Any) -> str:
    column, pattern = compiler.process(element.column, **kw), compiler.process(element.pattern, **kw)
    return f"upper({column}) GLOB upper({pattern})"


class _Json(Protocol):
    """How one backend walks DICOM JSON: the elements of ``source[tag].Value`` and their values.

    `kind` says what the values are wanted as: ``item`` (a nested data set), ``text``,
    ``number`` or ``pn`` (the Alphabetic group of a person name).
    """

    def root(self, column: ColumnElement[Any]) -> ColumnElement[Any]: ...

    def elements(self, source: ColumnElement[Any], tag: str, kind: str) -> TableValuedAlias: ...

    def value(self, elements: TableValuedAlias, kind: str) -> ColumnElement[Any]: ...


class _SqliteJson:
    """JSON1: ``json_each(text, '$."tag".Value')``; its ``value`` is SQL text or a number, or
    the JSON text of an object, which the next ``json_each`` reads again."""

    def root(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        return column

    def elements(self, source: ColumnElement[Any], tag: str, kind: str) -> TableValuedAlias:
        del kind  # json_each gives every kind of value in the one `value` column
        return func.json_each(source, literal_column(f"'$.\"{tag}\".Value'")).table_valued("value")

    def value(self, elements: TableValuedAlias, kind: str) -> ColumnElement[Any]:
        if kind == "pn":
            return func.json_extract(elements.c.value, literal_column("'$.Alphabetic'"))
        return elements.c.value


class _PostgresJson:
    """jsonb: the text column cast to jsonb, ``->`` into it, set-returning functions over
    ``Value`` (``_text`` for scalars as text); numbers only when jsonb says they are."""

    def root(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        return cast(column, JSONB)

    def elements(self, source: ColumnElement[Any], tag: str, kind: str) -> TableValuedAlias:
        values = source.op("->", return_type=JSONB)(literal_column(f"'{tag}'"))
        values = values.op("->", return_type=JSONB)(literal_column("'Value'"))
        if kind == "text":
            return func.jsonb_array_elements_text(values).table_valued(_column("value", Text))
        return func.jsonb_array_elements(values).table_valued(_column("value", JSONB))

    def value(self, elements: TableValuedAlias, kind: str) -> ColumnElement[Any]:
        found = elements.c.value
        if kind == "pn":
            return found.op("->>", return_type=Text)(literal_column("'Alphabetic'"))
        if kind == "number":
            return case((func.jsonb_typeof(found) == "number", cast(found, Numeric)))
        return found


_SQLITE: _Json = _SqliteJson()
_POSTGRES: _Json = _PostgresJson()


def _sequence_path(dotted: str) -> list[str]:
    """``RequestAttributesSequence.00401001`` -> ``["00400275", "00401001"]``, checked."""
    parts = [_tag_of(part, dotted) for part in dotted.split(".")]
    if not 2 <= len(parts) <= MAX_SEQUENCE_DEPTH + 1:
        raise InvalidQuery(
            f"{dotted[:200]!r} is not a sequence path: a sequence, at most {MAX_SEQUENCE_DEPTH} deep, then an attribute"
        )
    for tag in parts[:-1]:
        if _vr_of(tag, dotted) != "SQ":
            raise InvalidQuery(f"{dotted[:200]!r}: {_name_of(tag)} is not a sequence")
    return parts


def _tag_of(part: str, dotted: str) -> str:
    text = part.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        return text.upper()
    found = tag_for_keyword(text)
    if found is None:
        raise InvalidQuery(f"{dotted[:200]!r}: {text[:80]!r} is not a keyword or tag of the DICOM data dictionary")
    return f"{found:08X}"


def _vr_of(tag: str, dotted: str) -> str:
    try:
        return str(dictionary_VR(int(tag, 16)))
    except KeyError:
        raise InvalidQuery(f"{dotted[:200]!r}: {tag} is not an attribute of the DICOM data dictionary") from None


def _name_of(tag: str) -> str:
    return keyword_for_tag(int(tag, 16)) or tag


def _plant(tree: ItemKeys, path: list[str], value: str) -> None:
    """Put one key into the query item tree, refusing a path that is both a value and a sequence."""
    node = tree
    for tag in path[:-1]:
        child = node.setdefault(tag, {})
        if isinstance(child, str):
            raise InvalidQuery(f"{_name_of(tag)} is given both as a value and as a sequence")
        node = child
    if path[-1] in node:
        raise InvalidQuery(f"{'.'.join(_name_of(t) for t in path)} is given twice")
    node[path[-1]] = value


def _conditions(
    column: ColumnElement[Any], sequences: Mapping[str, ItemKeys], json: _Json, prefix: tuple[str, ...] = ()
) -> list[ColumnElement[bool]]:
    """One EXISTS per sequence: some item of it matches all of that sequence's query item keys."""
    source = json.root(column) if not prefix else column
    out: list[ColumnElement[bool]] = []
    for tag, item in sequences.items():
        items = json.elements(source, tag, "item")
        inside: list[ColumnElement[bool]] = []
        for key, wanted in item.items():
            if isinstance(wanted, dict):
                inside.extend(_conditions(json.value(items, "item"), {key: wanted}, json, (*prefix, tag)))
            else:
                found = _attribute(json.value(items, "item"), key, wanted, json, (*prefix, tag, key))
                if found is not None:
                    inside.append(found)
        if inside:
            out.append(select(literal_column("1")).select_from(items).where(*inside).exists())
    return out


def _attribute(
    item: ColumnElement[Any], tag: str, value: str, json: _Json, path: tuple[str, ...]
) -> ColumnElement[bool] | None:
    """EXISTS a value of `tag` in `item` matching `value` by its VR; None if `value` is universal."""
    vr = _vr_of(tag, ".".join(path))
    kind, build = _matcher(vr)
    if build is None:
        if vr == "SQ" and not value.strip(" *"):
            return None  # an empty sequence key only asks for the sequence back
        raise InvalidQuery(f"{'.'.join(_name_of(t) for t in path)}: a value of VR {vr} cannot be matched")
    elements = json.elements(item, tag, kind)
    try:
        condition = build(json.value(elements, kind), value, vr)
    except InvalidQuery as exc:
        raise InvalidQuery(f"{'.'.join(_name_of(t) for t in path)}: {exc.detail}") from None
    if condition is None:
        return None
    return select(literal_column("1")).select_from(elements).where(condition).exists()


_Build = Callable[[ColumnElement[Any], str, str], ColumnElement[bool] | None]


def _matcher(vr: str) -> tuple[str, _Build | None]:
    """How values of `vr` are read from the JSON and matched (PS3.4 C.2.2.2.1 to C.2.2.2.5)."""
    if vr in _TEXT_VRS:
        return "text", lambda found, value, _vr: string(found, value)
    if vr == "UI":
        return "text", lambda found, value, _vr: uid_list(found, value)
    if vr == "DA":
        return "text", lambda found, value, _vr: date(found, value)
    if vr == "TM":
        return "text", lambda found, value, _vr: time(found, value)
    if vr == "DT":
        return "text", lambda found, value, _vr: datetime(func.substr(found, 1, 8), func.substr(found, 9), value)
    if vr == "PN":
        return "pn", lambda found, value, _vr: _alphabetic_name(found, value)
    if vr in _INTEGER_VRS or vr == "US or SS":
        return "number", lambda found, value, _vr: integer(found, value)
    if vr in _FLOAT_VRS:
        return "number", _decimal
    return "", None


def _alphabetic_name(alphabetic: ColumnElement[Any], value: str) -> ColumnElement[bool] | None:
    """Person Name matching on the Alphabetic group kept in the JSON, upper-cased on both sides.

    The JSON keeps names as sent, so the folded form that top-level names are matched on is
    not there; the database's ``upper()`` makes the comparison case-insensitive instead. Only
    the query's alphabetic group (before the first ``=``) is matched.
    """
    value = _clean(value).partition("=")[0]
    if not value.strip("*"):
        return None
    if has_wildcard(value):
        return _UpperWildcard(alphabetic, value)
    return func.upper(alphabetic) == func.upper(bindparam(None, value, type_=String(), unique=True))


def _decimal(number: ColumnElement[Any], value: str, vr: str) -> ColumnElement[bool] | None:
    """Single Value Matching of DS, FD or FL as numbers (``1.5`` finds ``1.50``), any of a list.

    An FL query value is rounded to single precision first, as the stored value was.

    Raises
    ------
    InvalidQuery
        A value is not a decimal number.
    """
    value = _clean(value)
    if not value:
        return None
    numbers: list[float] = []
    for item in (v.strip() for v in re.split(r"[\\,]", value)):
        if not _NUMBER_RE.match(item):
            raise InvalidQuery(f"{item[:80]!r} is not a decimal number")
        numbers.append(_single(float(item)) if vr == "FL" else float(item))
    unique = list(dict.fromkeys(numbers))
    return number == unique[0] if len(unique) == 1 else number.in_(unique)


def _single(number: float) -> float:
    """`number` as an FL (IEEE single precision) holds it, as ingest read the stored value."""
    try:
        return float(struct.unpack("<f", struct.pack("<f", number))[0])
    except OverflowError:
        raise InvalidQuery(f"{number!r} is out of the range of FL") from None
