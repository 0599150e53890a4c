"""Sequence Matching (PS3.4 C.2.2.2.6) over the DICOM JSON the index keeps.

A key inside a sequence (``RequestAttributesSequence.RequestedProcedureID=RP1``, or a C-FIND
sequence key holding one item with keys) matches an entity when one item of the stored sequence
matches all the keys given for it; inside the item each value follows its VR, with the scalar
rules of `storage.query.matching`. The stored JSON is read by the database's own JSON functions
(SQLite's ``json_each``, PostgreSQL's ``jsonb_array_elements``), written per backend when the
statement is compiled.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping, Sequence
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
    func,
    literal_column,
    select,
)
from sqlalchemy import column as _column
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.sql.visitors import InternalTraversal

from storage.query.matching import (
    InvalidQuery,
    Wildcard,
    clean,
    date,
    datetime,
    has_wildcard,
    integer,
    string,
    time,
    uid_list,
)

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
    value = clean(value).partition("=")[0]
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
    value = clean(value)
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
