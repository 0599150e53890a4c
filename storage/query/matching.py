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
from datetime import datetime as _datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    String,
    and_,
    bindparam,
    false,
    or_,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.type_api import TypeDecorator
from sqlalchemy.sql.visitors import InternalTraversal

from storage.dicom.charset import fold
from storage.dicom.uids import check_uid
from storage.errors import RejectedInput

WILDCARDS = frozenset("*?")
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
        # Sent as a literal, not a parameter: PostgreSQL turns a statement run often (psycopg
        # prepares it) into a generic plan, and a generic `LIKE $1` cannot use the pattern
        # index's range for a prefix (a frequent name's page: ~10 -> ~20 ms at 1M instances).
        # SQLAlchemy still caches the compiled statement and quotes the value when it runs.
        self.pattern: BindParameter[str] = bindparam(None, pattern, type_=_Pattern(), unique=True, literal_execute=True)


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


def clean(value: str) -> str:
    """A query value without the leading and trailing spaces PS3.5 6.2 makes insignificant.

    Trailing NULs are padding (a peer that pads as for UI); a NUL inside is no character of any
    DICOM string (PS3.5 6.2) and PostgreSQL refuses it in a bound value, so it is refused here.

    Raises
    ------
    InvalidQuery
        The value holds a NUL byte.
    """
    value = value.rstrip("\x00").strip(" ")
    if "\x00" in value:
        raise InvalidQuery(f"{value[:64]!r}: a NUL byte inside a DICOM string value (PS3.5 6.2)")
    return value


def has_wildcard(value: str) -> bool:
    return any(c in WILDCARDS for c in value)


def string(column: ColumnElement[Any], value: str) -> ColumnElement[bool] | None:
    """Single Value or Wild Card Matching, case-sensitive (PS3.4 C.2.2.2.1, C.2.2.2.4).

    For AE, CS, LO, SH, UC and the like: ``CT`` matches exactly, ``AB*`` and ``A?C`` are
    wild-card patterns, an empty value or ``*`` alone is Universal Matching.
    """
    value = clean(value)
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
    value = clean(value)
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
    value = clean(value)
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
    value = clean(value)
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
    value = clean(value)
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
    value = clean(value)
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
    value = clean(value)
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
    value = clean(value)
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
