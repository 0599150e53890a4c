"""The patient index's linker: each queued identity compared with its block, linked or queued for review.

Ingest queues a new identity in its own transaction (`identities.upsert`). A linker runs in
every `pacs serve` (a process of its own, `pacs.linking`) and takes queued identities one at a
time (scored in a read transaction, applied in a short write transaction, `link_next`): the
identity's linking fields are filled (`block_key`, a checked `cnp`), it gets a person of its
own if it has none, it is compared (`model.compare`) with the identities that share its CNP,
its block key (first family word) or its birth date, at most `MAX_COMPARED` of them, and the
verdicts are applied; then it leaves the queue in the same commit. So a killed process
leaves it queued, and nothing is linked twice. Linkers of several processes take turns: on
PostgreSQL a transaction-level advisory lock serializes them (a merge reads and moves two
persons), on SQLite the write transaction does.

A link merges two persons (the lower ID survives, the other is kept with `merged_into`), unless
the merged person would hold two different CNPs or a pair a person has decided `apart`: then
the pair goes to review. Two identities of one issuer are two records by that issuer's own
decision and are never compared. People's decisions (`link_decisions`) win over the model.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, and_, case, delete, insert, or_, select, text, update

from storage.index.db import Database, dialect_insert
from storage.index.models import (
    OPT_IN,
    OPT_OUT,
    IdentityAlias,
    LinkCandidate,
    LinkDecision,
    LinkEvent,
    LinkQueueItem,
    PatientIdentity,
    Person,
    StudyOwner,
    utcnow,
)
from storage.logs import event
from storage.patients import cnp, names
from storage.patients.identities import DICOM, NONE, decode_other_ids, follow_persons
from storage.patients.model import LINK, REVIEW, Demographics, Model, Verdict, compare, contradiction, parse_address
from storage.settings import Settings

log = logging.getLogger(__name__)

#: the most identities one identity is compared with: those of the same CNP first, then of the
#: same birth date, then of the same first family word
MAX_COMPARED = 200
#: PostgreSQL advisory lock key of the linkers (any constant; "MPI" in ASCII)
_LOCK = 0x4D5049
SAME, APART = "same", "apart"
#: the identities of each side a merge compares pairwise (`merge_conflict`)
MAX_CROSS_CHECKED = 50
#: why a merge of two persons is refused even by hand
CNP_CONFLICT = "the two persons hold different CNPs"

#: what the linker and the admin API read of an identity
IDENTITY_COLUMNS = (
    PatientIdentity.id,
    PatientIdentity.issuer_kind,
    PatientIdentity.issuer,
    PatientIdentity.patient_id,
    PatientIdentity.patient_name,
    PatientIdentity.birth_date,
    PatientIdentity.sex,
    PatientIdentity.address,
    PatientIdentity.national_id,
    PatientIdentity.cnp,
    PatientIdentity.person_id,
    PatientIdentity.other_ids,
)
_IDENTITY = select(*IDENTITY_COLUMNS)


def demographics_of(row: Any) -> Demographics:
    """What the model compares of an identity row (`_IDENTITY`'s columns)."""
    return Demographics(
        names.parse(row.patient_name),
        row.birth_date,
        row.sex,
        parse_address(row.address) if row.address else None,
        cnp.valid_for(row.national_id, sex=row.sex, birth_date=row.birth_date) if row.national_id else None,
        identifiers_of(row),
    )


def identifiers_of(row: Any) -> frozenset[tuple[str, str]]:
    """The (issuer, value) identifiers an identity row is known by: its other identifiers, and
    its own key when its issuer is a DICOM one (another sender may name it as another ID)."""
    own = {(row.issuer, row.patient_id)} if row.issuer_kind == DICOM else set()
    return frozenset(own | set(decode_other_ids(row.other_ids)))


def link_next(db: Database, model: Model) -> bool | None:
    """Link the identity queued first: True when this call linked it, False when another
    process's linker took it meanwhile, None when the queue is empty.

    The comparisons, the linker's costly part, are read and scored first without a write lock
    (`_prepare`), so ingest's commits never wait for them; then one short write transaction
    applies the verdicts and takes the identity off the queue. When the identity changed in
    between (a later study said more about it), it is scored again inside that transaction; a
    block member added in between is compared when its own turn comes. The commit skips
    SQLite's fsync (`light`): a power cut can only undo the whole turn, queue row included, so
    the identity is linked again, never half.
    """
    prepared = _prepare(db, model)
    if prepared is None:
        return None
    with db.write_conn(light=True) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
        queued = select(LinkQueueItem.identity_id).where(LinkQueueItem.identity_id == prepared.identity_id)
        if conn.scalar(queued) is None:
            return False
        link_identity(conn, prepared.identity_id, model, prepared)
        conn.execute(delete(LinkQueueItem).where(LinkQueueItem.identity_id == prepared.identity_id))
    return True


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An identity as it was read, and its block's identities with the model's verdicts."""

    identity_id: int
    row: Any
    verdicts: list[tuple[Any, Verdict]]


def _prepare(db: Database, model: Model) -> _Prepared | None:
    """The first queued identity, scored against its block in a read transaction; None when the
    queue is empty."""
    with db.read() as session:
        conn = session.connection()
        identity_id = conn.scalar(select(LinkQueueItem.identity_id).order_by(LinkQueueItem.queued_at).limit(1))
        if identity_id is None:
            return None
        row = conn.execute(_IDENTITY.where(PatientIdentity.id == identity_id)).first()
        verdicts = _score(conn, row, model) if row is not None and row.issuer_kind != NONE else []
        return _Prepared(identity_id, row, verdicts)


def _score(conn: Connection, row: Any, model: Model) -> list[tuple[Any, Verdict]]:
    """The identities of `row`'s block, each with the model's verdict on the pair."""
    mine = demographics_of(row)
    block = names.block_key(mine.name)
    others = conn.execute(_block_of(row, mine, block))
    return [(other, compare(mine, demographics_of(other), model)) for other in others]


def link_pending(db: Database, model: Model, *, limit: int = 1000) -> int:
    """Link queued identities until the queue is empty or `limit` are done; how many were."""
    done = 0
    while done < limit:
        linked = link_next(db, model)
        if linked is None:
            break
        done += linked
    return done


def link_identity(conn: Connection, identity_id: int, model: Model, prepared: _Prepared | None = None) -> None:
    """Fill the identity's linking fields, give it a person, and apply its verdicts (those of
    `prepared` when the identity still reads as it did then)."""
    row = conn.execute(_IDENTITY.where(PatientIdentity.id == identity_id)).first()
    if row is None or row.issuer_kind == NONE:
        return
    mine = demographics_of(row)
    block = names.block_key(mine.name)
    person = row.person_id or new_person(conn)
    conn.execute(
        update(PatientIdentity)
        .where(PatientIdentity.id == identity_id)
        .values(block_key=block, cnp=mine.cnp.value if mine.cnp else None, person_id=person)
    )
    if row.person_id != person:
        follow_persons(conn, [identity_id])
    fresh = prepared is not None and prepared.row is not None and _same_record(prepared.row, row)
    scored = prepared.verdicts if fresh and prepared is not None else _score(conn, row, model)
    decisions = _decisions_of(conn, identity_id)
    reviews: dict[int, Verdict] = {}
    merged = False
    for other, verdict in scored:
        if other.person_id == person:
            continue
        decided = decisions.get(other.id)
        if decided == APART:
            continue
        if decided == SAME:
            verdict = Verdict(LINK, "manual", 0.0)
        if verdict.decision == LINK:
            before = person
            person = _link_or_review(conn, identity_id, person, other, verdict)
            merged = merged or person != before or other.person_id is not None
        elif verdict.decision == REVIEW:
            reviews[other.id] = verdict
    _ask_once_per_person(conn, identity_id, person, reviews)
    if merged:
        _close_settled(conn, person)


#: what the model reads of an identity: a prepared verdict stands while these are unchanged
_COMPARED = ("issuer_kind", "issuer", "patient_name", "birth_date", "sex", "address", "national_id", "other_ids")


def _same_record(before: Any, now: Any) -> bool:
    return all(getattr(before, name) == getattr(now, name) for name in _COMPARED)


def _ask_once_per_person(conn: Connection, identity_id: int, person: int, reviews: dict[int, Verdict]) -> None:
    """Queue one review per other person, the best-scoring of its identities: a reviewer decides
    whether this identity is that person once, not once per record the person has (and not at
    all for one this turn's links made its own)."""
    if not reviews:
        return
    rows = conn.execute(select(PatientIdentity.id, PatientIdentity.person_id).where(PatientIdentity.id.in_(reviews)))
    persons_of: dict[int, int | None] = {r.id: r.person_id for r in rows}
    best: dict[int | None, int] = {}
    for other, verdict in reviews.items():
        theirs = persons_of.get(other)
        if theirs == person:
            continue
        if theirs not in best or verdict.score > reviews[best[theirs]].score:
            best[theirs] = other
    for other in best.values():
        add_candidate(conn, identity_id, other, reviews[other])


def _close_settled(conn: Connection, person: int) -> None:
    """Close the open candidates a link has settled: both sides now in `person`."""
    members = select(PatientIdentity.id).where(PatientIdentity.person_id == person)
    conn.execute(
        update(LinkCandidate)
        .where(
            LinkCandidate.status == "open",
            LinkCandidate.identity_a.in_(members),
            LinkCandidate.identity_b.in_(members),
        )
        .values(status="settled", decided_by="linker", decided_at=utcnow())
    )


def _block_of(row: Any, mine: Demographics, block: str) -> Any:
    """The identities `row` is compared with: the same CNP, block key or birth date, another issuer."""
    same: list[Any] = []  # strongest key first: it orders the block, so a large name block never
    if mine.cnp is not None:  # crowds out the same CNP or birth date under the limit
        same.append(PatientIdentity.cnp == mine.cnp.value)
    if len(row.birth_date) == 8:
        same.append(PatientIdentity.birth_date == row.birth_date)
    if mine.identifiers:  # another identifier in common (the CNP's rule aside): right after the CNP
        known_as = or_(*(and_(IdentityAlias.issuer == i, IdentityAlias.value == v) for i, v in mine.identifiers))
        same.insert(
            int(mine.cnp is not None), PatientIdentity.id.in_(select(IdentityAlias.identity_id).where(known_as))
        )
    if block:
        same.append(PatientIdentity.block_key == block)
    if not same:
        return _IDENTITY.where(PatientIdentity.id.is_(None))
    return (
        _IDENTITY.where(
            or_(*same),
            PatientIdentity.id != row.id,
            PatientIdentity.issuer_kind != NONE,
            ~and_(PatientIdentity.issuer_kind == row.issuer_kind, PatientIdentity.issuer == row.issuer),
        )
        .order_by(*(case((key, 0), else_=1) for key in same), PatientIdentity.id)
        .limit(MAX_COMPARED)
    )


def _link_or_review(conn: Connection, identity_id: int, person: int, other: Any, verdict: Verdict) -> int:
    """Merge `other`'s person into `person` (the survivor's ID), or review the pair when the
    merged person would hold two CNPs or a pair decided apart."""
    theirs = conn.scalar(select(PatientIdentity.person_id).where(PatientIdentity.id == other.id))
    if theirs == person:  # joined this person by an earlier link of this turn
        return person
    theirs = theirs or new_person(conn, identities=[other.id])
    blocked = merge_conflict(conn, person, theirs)
    if blocked is not None:
        add_candidate(conn, identity_id, other.id, verdict, why=blocked)
        return person
    return merge(conn, person, theirs, identity_id, other.id, rule=verdict.rule, score=verdict.score, actor="linker")


def new_person(conn: Connection, identities: list[int] | None = None, *, sharing: str = OPT_IN) -> int:
    """A new person, holding `identities` if given, with the choice `sharing` about
    cross-organization sharing (a split keeps the patient's choice on both sides)."""
    values = {"created_at": utcnow(), "cross_org_sharing": sharing}
    person = int(conn.execute(insert(Person).values(**values).returning(Person.id)).scalar_one())
    if identities:
        conn.execute(update(PatientIdentity).where(PatientIdentity.id.in_(identities)).values(person_id=person))
        follow_persons(conn, identities)
    return person


def merge_conflict(conn: Connection, one: int, other: int) -> str | None:
    """Why persons `one` and `other` cannot be one, or None: two different CNPs, a pair decided
    apart, or a pair of their identities that contradict each other (`model.contradiction`:
    other birth dates, possible twins), compared for up to `MAX_CROSS_CHECKED` identities a side."""
    members = conn.execute(_IDENTITY.where(PatientIdentity.person_id.in_([one, other]))).all()
    cnps = {m.cnp for m in members if m.cnp}
    if len(cnps) > 1:
        return CNP_CONFLICT
    left = [m for m in members if m.person_id == one]
    right = [m for m in members if m.person_id == other]
    apart = conn.scalar(
        select(LinkDecision.identity_a).where(
            LinkDecision.decision == APART,
            or_(
                and_(
                    LinkDecision.identity_a.in_([m.id for m in left]),
                    LinkDecision.identity_b.in_([m.id for m in right]),
                ),
                and_(
                    LinkDecision.identity_a.in_([m.id for m in right]),
                    LinkDecision.identity_b.in_([m.id for m in left]),
                ),
            ),
        )
    )
    if apart is not None:
        return "a reviewer decided that two of their identities are two people"
    if cnps and {m.cnp for m in left} & {m.cnp for m in right} & cnps:
        return None  # one CNP on both sides: one person by the deterministic rule
    theirs = [demographics_of(m) for m in right[:MAX_CROSS_CHECKED]]
    for mine in (demographics_of(m) for m in left[:MAX_CROSS_CHECKED]):
        for other_side in theirs:
            why = contradiction(mine, other_side)
            if why is not None:
                return why
    return None


def merge(
    conn: Connection, one: int, other: int, a: int | None, b: int | None, *, rule: str, score: float, actor: str
) -> int:
    """Make persons `one` and `other` one (the lower ID survives); the survivor's ID."""
    keep, gone = min(one, other), max(one, other)
    if keep == gone:
        return keep
    conn.execute(update(PatientIdentity).where(PatientIdentity.person_id == gone).values(person_id=keep))
    conn.execute(update(StudyOwner).where(StudyOwner.person_id == gone).values(person_id=keep))
    conn.execute(update(Person).where(Person.id == gone).values(merged_into=keep))
    conn.execute(update(Person).where(Person.merged_into == gone).values(merged_into=keep))
    # one person, one choice: an opt-out of either side holds for the whole person
    opted_out = select(Person.id).where(Person.id.in_([keep, gone]), Person.cross_org_sharing == OPT_OUT)
    if conn.scalar(opted_out.limit(1)) is not None:
        conn.execute(update(Person).where(Person.id == keep).values(cross_org_sharing=OPT_OUT))
    record(conn, keep, "link", a, b, rule=rule, score=score, actor=actor)
    event(log, "mpi.linked", person=keep, merged=gone, rule=rule, score=score if math.isfinite(score) else None)
    return keep


def add_candidate(conn: Connection, a: int, b: int, verdict: Verdict, why: str | None = None) -> None:
    """Queue the pair for review (once: a pair already reviewed or queued stays as it is)."""
    low, high = min(a, b), max(a, b)
    reasons = [asdict(r) for r in verdict.reasons]
    if why:
        reasons.append({"field": "merge", "level": why, "weight": 0.0})
    ins = dialect_insert(conn.dialect.name, LinkCandidate)
    score = verdict.score if math.isfinite(verdict.score) else 0.0
    conn.execute(
        ins.values(
            identity_a=low,
            identity_b=high,
            score=score,
            reasons=json.dumps(reasons),
            status="open",
            created_at=utcnow(),
        ).on_conflict_do_nothing(index_elements=["identity_a", "identity_b"])
    )


def decide(conn: Connection, a: int, b: int, decision: str, actor: str) -> None:
    """Keep a person's decision about the pair (it replaces an earlier one)."""
    low, high = min(a, b), max(a, b)
    conn.execute(delete(LinkDecision).where(LinkDecision.identity_a == low, LinkDecision.identity_b == high))
    conn.execute(
        insert(LinkDecision).values(
            identity_a=low, identity_b=high, decision=decision, decided_by=actor, decided_at=utcnow()
        )
    )


def record(
    conn: Connection,
    person: int,
    action: str,
    a: int | None,
    b: int | None,
    *,
    rule: str = "",
    score: float | None = None,
    actor: str = "",
) -> None:
    """One entry of a person's link history."""
    finite = score if score is not None and math.isfinite(score) else None
    conn.execute(
        insert(LinkEvent).values(
            time=utcnow(), person_id=person, action=action, identity_a=a, identity_b=b, rule=rule, score=finite,
            actor=actor[:256],
        )
    )  # fmt: skip


def _decisions_of(conn: Connection, identity_id: int) -> dict[int, str]:
    rows = conn.execute(
        select(LinkDecision.identity_a, LinkDecision.identity_b, LinkDecision.decision).where(
            or_(LinkDecision.identity_a == identity_id, LinkDecision.identity_b == identity_id)
        )
    ).all()
    return {(b if a == identity_id else a): decision for a, b, decision in rows}


def model_of(settings: Settings) -> Model:
    """The model with the thresholds of `settings` (`PACS_MPI_LINK_AT`, `PACS_MPI_REVIEW_AT`)."""
    return Model(link_at=settings.mpi_link_at, review_at=settings.mpi_review_at)


def link_until(db: Database, model: Model, interval: float, stopped: Callable[[], bool]) -> None:
    """Link what ingest queues, a turn every `interval` seconds, until `stopped()` (the loop of the
    linker process `pacs serve` runs, `pacs.linking`)."""
    while not stopped():
        try:
            while link_pending(db, model, limit=200) and not stopped():
                pass
        except Exception as exc:  # noqa: BLE001 - the queue keeps the identity; the next turn retries
            event(log, "mpi.link_failed", level=logging.ERROR, error=type(exc).__name__)
        deadline = time.monotonic() + interval
        while not stopped() and time.monotonic() < deadline:
            time.sleep(min(0.2, interval))
