"""The patient directory: the identities a caller may see, found by demographics or identifier.

What FHIR's Patient (read and search, `fhir_adapter.patient`) answers from, without a second
copy of the data: one row per identity (an institution's patient record), visible when the
caller sees one of its studies (the rule `storage.access.policy.visible_to` applies to studies,
as PATIENT-level C-FIND does) or, for an admin, always. Names match diacritic- and
case-insensitively on the folded name (`storage.dicom.charset.fold`): `family` the start of the
family name, `given` the start of a given name, `name` the start of any word of the name. Pages
are in identity order, after the last identity of the previous page (keyset: no offset scan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, case, exists, false, func, or_, select
from sqlalchemy.orm import Session

from storage.access.context import Context
from storage.access.policy import visible_to
from storage.dicom.charset import fold
from storage.errors import NotFound
from storage.index.models import PatientIdentity, Study
from storage.patients import names
from storage.patients.identities import NONE
from storage.patients.linker import IDENTITY_COLUMNS, MAX_COMPARED, demographics_of
from storage.patients.model import LINK, REVIEW, Demographics, Model, Verdict, compare
from storage.patients.persons import issuer_key

#: the most identities one page holds
MAX_PAGE = 1000
#: the most values of one search parameter (`_id=1,2,3`)
MAX_VALUES = 100


@dataclass(frozen=True, slots=True)
class BirthDate:
    """A birth date bound: `op` one of eq, ne, lt, le, gt, ge over [low, high] (YYYYMMDD)."""

    op: str
    low: str
    high: str


@dataclass(frozen=True, slots=True)
class IdentifierMatch:
    """An identifier: `issuer` as the admin API writes it (None: any issuer), and its value
    (None: any); `national` for a CNP (`urn:pacs:national-id:RO-CNP`)."""

    issuer: str | None
    value: str | None
    national: bool = False


@dataclass(frozen=True, slots=True)
class PatientSearch:
    """What a Patient search asks; every field set must match (AND), values within one (OR)."""

    ids: tuple[int, ...] = ()
    family: tuple[str, ...] = ()
    given: tuple[str, ...] = ()
    name: tuple[str, ...] = ()
    birth: tuple[BirthDate, ...] = ()
    sex: tuple[str, ...] = ()
    identifiers: tuple[IdentifierMatch, ...] = ()
    #: the page starts after this identity id; or, `before`, it is the one that ends before it
    after: int | None = None
    before: int | None = None
    limit: int = 20


def visible_identity(ctx: Context) -> ColumnElement[bool]:
    """The identities `ctx` may see: those of which it sees a study (all, for an admin)."""
    if ctx.principal.is_admin:
        return PatientIdentity.issuer_kind != NONE
    return exists().where(Study.identity_id == PatientIdentity.id, visible_to(ctx))


def get(identity_id: int, ctx: Context, *, session: Session) -> Any:
    """One identity row (`IDENTITY_COLUMNS` and `created_at`) the caller may see.

    Raises
    ------
    NotFound
        No such identity, or one the caller may not see (the same answer).
    """
    row = session.execute(_select().where(PatientIdentity.id == identity_id, visible_identity(ctx))).first()
    if row is None:
        raise NotFound(f"no patient {identity_id}")
    return row


def search(query: PatientSearch, ctx: Context, *, session: Session) -> list[Any]:
    """One page of identity rows matching `query`, in id order, at most `query.limit` (+1, so
    the caller knows whether more follow; with `before`, the extra row comes first and tells
    whether more precede)."""
    stmt = _select().where(visible_identity(ctx), *conditions(query))
    if query.after is not None:
        stmt = stmt.where(PatientIdentity.id > query.after)
    limit = max(0, min(query.limit, MAX_PAGE))
    if query.before is not None:  # the page that ends before it: read backwards, hand back in order
        stmt = stmt.where(PatientIdentity.id < query.before).order_by(PatientIdentity.id.desc())
        return list(reversed(session.execute(stmt.limit(limit + 1)).all()))
    return list(session.execute(stmt.order_by(PatientIdentity.id).limit(limit + 1)).all())


def count(query: PatientSearch, ctx: Context, *, session: Session) -> int:
    """How many identities match `query` in all (a searchset Bundle's `total`)."""
    stmt = select(func.count()).select_from(PatientIdentity).where(visible_identity(ctx), *conditions(query))
    return int(session.scalar(stmt) or 0)


def linked(rows: list[Any], ctx: Context, *, session: Session) -> dict[int, list[Any]]:
    """identity id -> the other identities of its person that the caller may see."""
    persons = {r.person_id for r in rows if r.person_id is not None}
    if not persons:
        return {}
    others = session.execute(
        _select().where(PatientIdentity.person_id.in_(persons), visible_identity(ctx)).order_by(PatientIdentity.id)
    ).all()
    found: dict[int, list[Any]] = {}
    for row in rows:
        found[row.id] = [o for o in others if o.person_id == row.person_id and o.id != row.id]
    return found


def match(
    wanted: Demographics, ctx: Context, *, session: Session, model: Model, limit: int = 10
) -> list[tuple[Any, Verdict]]:
    """The identities `ctx` may see that the patient index's model takes for `wanted` (FHIR's
    `Patient/$match`): those sharing its CNP, birth date or blocking key, at most `MAX_COMPARED`,
    each scored as the linker scores a pair; links first, then reviews, best score first."""
    same = []
    if wanted.cnp is not None:
        same.append(PatientIdentity.cnp == wanted.cnp.value)
    if len(wanted.birth_date) == 8:
        same.append(PatientIdentity.birth_date == wanted.birth_date)
    block = names.block_key(wanted.name)
    if block:
        same.append(PatientIdentity.block_key == block)
    if not same:
        return []
    rows = session.execute(
        _select()
        .where(visible_identity(ctx), or_(*same))
        .order_by(*(case((key, 0), else_=1) for key in same), PatientIdentity.id)  # strongest key first,
        .limit(MAX_COMPARED)  # as the linker's blocks: a frequent name never crowds out the same CNP
    ).all()
    scored = [(row, compare(wanted, demographics_of(row), model)) for row in rows]
    kept = [(row, verdict) for row, verdict in scored if verdict.decision in (LINK, REVIEW)]
    kept.sort(key=lambda pair: (pair[1].decision != LINK, -pair[1].score, pair[0].id))
    return kept[: max(0, limit)]


def known_issuer(issuer: str, *, session: Session) -> bool:
    """Whether some identity has `issuer` (as the admin API writes it): an assigning authority
    this index knows, which PIXm tells apart from an unknown patient of a known one."""
    kind, value = issuer_key(issuer)
    found = select(PatientIdentity.id).where(PatientIdentity.issuer_kind == kind, PatientIdentity.issuer == value)
    return session.execute(found.limit(1)).first() is not None


def conditions(query: PatientSearch) -> list[ColumnElement[bool]]:
    """The SQL of a search's fields (each an OR of its values)."""
    found: list[ColumnElement[bool]] = []
    if query.ids:
        found.append(PatientIdentity.id.in_(query.ids[:MAX_VALUES]))
    folded = PatientIdentity.patient_name_folded
    if query.family:
        found.append(or_(*(folded.like(f"{_like(fold(v))}%", escape="\\") for v in query.family)))
    if query.given:
        found.append(or_(*(_given(folded, fold(v)) for v in query.given)))
    if query.name:
        found.append(or_(*(_any_word(folded, fold(v)) for v in query.name)))
    if query.birth:
        found.append(or_(*(_birth(b) for b in query.birth)))
    if query.sex:
        found.append(PatientIdentity.sex.in_(query.sex))
    if query.identifiers:
        found.append(or_(*(_identifier(i) for i in query.identifiers)))
    return found


def _select() -> Any:
    return select(*IDENTITY_COLUMNS, PatientIdentity.created_at)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _given(column: Any, value: str) -> ColumnElement[bool]:
    """The start of a given name: after the family name's `^`, or after a space inside the given names."""
    start = _like(value)
    return or_(column.like(f"%^{start}%", escape="\\"), column.like(f"%^% {start}%", escape="\\"))


def _any_word(column: Any, value: str) -> ColumnElement[bool]:
    start = _like(value)
    return or_(
        column.like(f"{start}%", escape="\\"),
        column.like(f"%^{start}%", escape="\\"),
        column.like(f"% {start}%", escape="\\"),
        column.like(f"%-{start}%", escape="\\"),
    )


def _birth(bound: BirthDate) -> ColumnElement[bool]:
    column = PatientIdentity.birth_date
    known = column != ""
    match bound.op:
        case "eq":
            return and_(known, column >= bound.low, column <= bound.high)
        case "ne":
            return and_(known, or_(column < bound.low, column > bound.high))
        case "lt":
            return and_(known, column < bound.low)
        case "le":
            return and_(known, column <= bound.high)
        case "gt":
            return and_(known, column > bound.high)
        case "ge":
            return and_(known, column >= bound.low)
    return false()


def _identifier(match: IdentifierMatch) -> ColumnElement[bool]:
    if match.national:
        return false() if match.value is None else PatientIdentity.cnp == match.value
    found: list[ColumnElement[bool]] = []
    if match.issuer is not None:
        kind, issuer = issuer_key(match.issuer)
        found += [PatientIdentity.issuer_kind == kind, PatientIdentity.issuer == issuer]
    if match.value is not None:
        found.append(PatientIdentity.patient_id == match.value)
    return and_(*found) if found else PatientIdentity.issuer_kind != NONE
