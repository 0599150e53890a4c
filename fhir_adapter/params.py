"""FHIR search parameters as the FHIR API reads them: dates with prefixes, tokens, counts, cursors.

Each parser raises `FhirError(400)` naming the parameter, so a bad value is an OperationOutcome
that says which; a parameter the API does not know is refused too (strict handling, FHIR R4
3.1.1.5.2 `Prefer: handling=strict` being what a PACS must assume: a filter silently ignored
would answer with more patients than asked).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from fhir_adapter.outcome import FhirError

PREFIXES = ("eq", "ne", "lt", "le", "gt", "ge")
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})$")
#: the most values a parameter may repeat or list (`a=1,2,3`), and the longest value
MAX_VALUES = 20
MAX_VALUE = 256
DEFAULT_COUNT, MAX_COUNT = 20, 100
#: result parameters every search takes besides its filters (FHIR R4 3.1.1.5): the page size, this
#: server's keyset cursors (`_cursor`: the page after that match; `_before`: the page before it,
#: what a `previous` link names), and how to count (`_total`; fhirpy's `.count()` sends `_totalMethod`),
#: which change how the matches are shown, never which match (the total is always exact)
RESULT_PARAMS = frozenset({"_count", "_cursor", "_before", "_total", "_totalMethod"})


@dataclass(frozen=True, slots=True)
class DateRange:
    """A date parameter: its prefix and the day range its precision covers (YYYYMMDD)."""

    op: str
    low: str
    high: str


def values(name: str, given: Iterable[str]) -> list[str]:
    """Every value of a parameter: repeated (AND in FHIR; here each must be met) and comma-
    separated ones (OR) flattened for parameters where both mean the same; bounded."""
    found = [v for raw in given for v in raw.split(",")]
    if len(found) > MAX_VALUES:
        raise FhirError(400, f"{name}: at most {MAX_VALUES} values")
    for value in found:
        if len(value) > MAX_VALUE or not value.isprintable():
            raise FhirError(400, f"{name}: a value of at most {MAX_VALUE} printable characters")
    return [v for v in found if v]


def date_range(name: str, value: str) -> DateRange:
    """`ge2024-01`, `1960-01-01`, `lt2025` (FHIR R4 3.1.1.4.2 prefixes; dates of 4, 7 or 10 characters)."""
    op, text = (value[:2], value[2:]) if value[:2] in PREFIXES else ("eq", value)
    match = _DATE.match(text)
    if match is None:
        raise FhirError(400, f"{name}: {value!r} is not a date (YYYY, YYYY-MM or YYYY-MM-DD, with an optional prefix)")
    year, month, day = match.group(1), match.group(2), match.group(3)
    if month is None:
        return DateRange(op, f"{year}0101", f"{year}1231")
    if not 1 <= int(month) <= 12:
        raise FhirError(400, f"{name}: {value!r} has no month {month}")
    if day is None:
        last = calendar.monthrange(int(year), int(month))[1]
        return DateRange(op, f"{year}{month}01", f"{year}{month}{last:02d}")
    try:
        datetime(int(year), int(month), int(day))
    except ValueError:
        raise FhirError(400, f"{name}: {value!r} is not a calendar date") from None
    return DateRange(op, f"{year}{month}{day}", f"{year}{month}{day}")


def instant(name: str, value: str) -> tuple[str, datetime]:
    """`_lastUpdated`: a prefix and an instant with its zone (or a date: that day from 00:00 UTC)."""
    op, text = (value[:2], value[2:]) if value[:2] in PREFIXES else ("eq", value)
    if _DATE.match(text) and len(text) == 10:
        return op, datetime.fromisoformat(text).replace(tzinfo=UTC)
    if not _INSTANT.match(text):
        raise FhirError(400, f"{name}: {value!r} is not an instant (YYYY-MM-DDThh:mm[:ss]+zone) or a date")
    return op, datetime.fromisoformat(text.replace("Z", "+00:00"))


def token(value: str) -> tuple[str | None, str | None]:
    """`system|code` -> (system, code); `code` -> (None, code); `system|` -> (system, None)."""
    if "|" not in value:
        return None, value
    system, code = value.split("|", 1)
    return system, code or None


def local_id(text: str) -> int | None:
    """A row id this server gives in FHIR ids, references and cursors (`Patient/12`: 12), or None
    for text that cannot be one (what the index's BIGINT keys hold: at most 18 digits)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def count(given: list[str]) -> int:
    if not given:
        return DEFAULT_COUNT
    try:
        wanted = int(given[-1])
    except ValueError:
        raise FhirError(400, f"_count: {given[-1]!r} is not a number") from None
    if wanted < 0:
        raise FhirError(400, "_count: must not be negative")
    return min(wanted, MAX_COUNT)


@dataclass(frozen=True, slots=True)
class Cursors:
    """Where a page starts: after the match `after` (a `next` link), or it is the page that ends
    just before the match `before` (a `previous` link); neither: the first page."""

    after: str | None = None
    before: str | None = None

    @classmethod
    def of(cls, query: Mapping[str, list[str]]) -> Cursors:
        after, before = query.get("_cursor", []), query.get("_before", [])
        if after and before:
            raise FhirError(400, "_cursor and _before: one direction at a time")
        for given in (after, before):
            if given and (len(given[-1]) > MAX_VALUE or not given[-1].isprintable()):
                raise FhirError(400, "_cursor: not a cursor this server gave")
        return cls(after[-1] if after else None, before[-1] if before else None)

    def links(self, first: str | None, last: str | None, *, more: bool) -> tuple[str | None, str | None]:
        """The (next, previous) cursors of a page whose first and last matches are `first` and
        `last` (None: an empty page), `more` telling whether matches lie beyond it in the
        direction it was read (after it, or before it for a `_before` page)."""
        if first is None or last is None:
            return None, None
        if self.before is not None:
            return last, first if more else None
        return last if more else None, first if self.after is not None else None
