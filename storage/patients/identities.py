"""Patient identities: one institution's identifier for a patient, in the namespace it belongs to.

A patient ID means nothing without its issuer: PID 123 at the county hospital and PID 123 at a
clinic are two people. Each identity is therefore keyed by (issuer kind, issuer, patient ID),
where the issuer is IssuerOfPatientID as sent (`dicom`), else the sending organization (`org`),
else, for an unregistered sender, its AE title (`ae`); a study without a patient ID gets an
identity of its own, keyed by its Study Instance UID (`none`), so it is never merged with
another. The master patient index links identities into persons; it never rewrites them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, select, update

from storage.dicom.charset import fold
from storage.index.db import dialect_insert, insert_or_get_new
from storage.index.models import IdentityAlias, LinkQueueItem, PatientIdentity, Study, StudyOwner, utcnow
from storage.patients import cnp

#: issuer kinds, in the order they are chosen
DICOM, ORG, AE, NONE = "dicom", "org", "ae", "none"


@dataclass(frozen=True, slots=True)
class IdentityKey:
    """The unique key of a patient identity (`PatientIdentity`'s `uq_identity`)."""

    issuer_kind: str
    issuer: str
    patient_id: str


@dataclass(frozen=True, slots=True)
class Demographics:
    """What a received object says about its patient, kept with the identity as first received."""

    patient_name: str
    birth_date: str
    sex: str
    address: str = ""
    #: a national ID the sender gave (`national_id_of`), unchecked
    national_id: str = ""
    #: OtherPatientIDsSequence as parsed: (PatientID, IssuerOfPatientID) items
    other_ids: tuple[tuple[str, str], ...] = ()


#: the most other identifiers an identity keeps
MAX_OTHER_IDS = 8


def other_identifiers(items: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The (issuer, value) pairs of OtherPatientIDsSequence items the patient index compares:
    those with an issuer (a value without one means nothing across institutions), the CNP aside
    (it has its own rule), at most `MAX_OTHER_IDS`, sorted."""
    kept = {(issuer, value) for value, issuer in items if issuer and value and issuer != cnp.ISSUER}
    return sorted(kept)[:MAX_OTHER_IDS]


def encode_other_ids(pairs: list[tuple[str, str]]) -> str:
    return json.dumps(pairs) if pairs else ""


def decode_other_ids(text: str) -> list[tuple[str, str]]:
    return [(str(i), str(v)) for i, v in json.loads(text)] if text else []


def national_id_of(patient_id: str, issuer: str, other_ids: tuple[tuple[str, str], ...]) -> str:
    """The CNP a sender gave, unchecked: PatientID issued by `RO-CNP`, else the first
    OtherPatientIDsSequence item so issued (DESIGN.md "Patients across institutions")."""
    if issuer == cnp.ISSUER:
        return patient_id
    return next((value for value, item_issuer in other_ids if item_issuer == cnp.ISSUER), "")


def identity_key(patient_id: str, issuer: str, *, study_uid: str, org: str | None, sender: str) -> IdentityKey:
    """The namespace of a patient ID: the sender's issuer, else its organization, else `sender`."""
    if not patient_id:
        return IdentityKey(NONE, study_uid, "")
    if issuer:
        return IdentityKey(DICOM, issuer[:128], patient_id[:64])
    if org:
        return IdentityKey(ORG, org, patient_id[:64])
    return IdentityKey(AE, sender, patient_id[:64])


def upsert(conn: Connection, key: IdentityKey, demographics: Demographics) -> int:
    """The id of the identity `key`, created with `demographics` if it is new (race-free).

    Called once per new study. A new identity with a patient ID is queued for the patient
    index's linker in the caller's transaction (`storage.patients.linker`): linking never slows
    ingest, and is never lost. An existing identity whose new study says something else of its
    patient (a corrected name, a birth date or CNP now given, an address, another identifier)
    takes the newer values and is queued again, so the index scores what the institution says
    now; its links stay (the linker adds links, only a person splits one).
    """
    now = utcnow()
    values = _columns(demographics)
    identity_id, created = insert_or_get_new(conn, PatientIdentity, asdict(key), values | {"created_at": now})
    if key.issuer_kind == NONE:
        return identity_id
    others = other_identifiers(demographics.other_ids)
    if created:
        own = [(key.issuer, key.patient_id)] if key.issuer_kind == DICOM and len(key.issuer) <= 64 else []
        _add_aliases(conn, identity_id, own + others)
    else:
        kept = conn.execute(select(*_DEMOGRAPHICS).where(PatientIdentity.id == identity_id)).one()
        changed = {name: value for name, value in values.items() if value and value != getattr(kept, name)}
        known = decode_other_ids(kept.other_ids)
        added = [pair for pair in others if pair not in known]
        if added:
            changed["other_ids"] = encode_other_ids(sorted(known + added)[:MAX_OTHER_IDS])
            _add_aliases(conn, identity_id, added)
        if not changed:
            return identity_id
        conn.execute(update(PatientIdentity).where(PatientIdentity.id == identity_id).values(**changed))
    _queue(conn, identity_id, now)
    return identity_id


#: the demographics an identity keeps (what `upsert` compares when a new study of it arrives)
_DEMOGRAPHICS = (
    PatientIdentity.patient_name,
    PatientIdentity.patient_name_folded,
    PatientIdentity.birth_date,
    PatientIdentity.sex,
    PatientIdentity.address,
    PatientIdentity.national_id,
    PatientIdentity.other_ids,
)


def _columns(demographics: Demographics) -> dict[str, str]:
    return {
        "patient_name": demographics.patient_name,
        "patient_name_folded": fold(demographics.patient_name),
        "birth_date": demographics.birth_date,
        "sex": demographics.sex,
        "address": demographics.address,
        "national_id": demographics.national_id[:64],
        "other_ids": encode_other_ids(other_identifiers(demographics.other_ids)),
    }


def _add_aliases(conn: Connection, identity_id: int, pairs: list[tuple[str, str]]) -> None:
    """Index the identity under each (issuer, value), once."""
    if not pairs:
        return
    ins = dialect_insert(conn.dialect.name, IdentityAlias)
    rows = [{"identity_id": identity_id, "issuer": issuer[:64], "value": value[:64]} for issuer, value in pairs]
    conn.execute(ins.on_conflict_do_nothing(), rows)


def _queue(conn: Connection, identity_id: int, now: datetime) -> None:
    """Queue the identity for the linker, once (two ingests of one identity may both queue it)."""
    ins = dialect_insert(conn.dialect.name, LinkQueueItem)
    conn.execute(ins.values(identity_id=identity_id, queued_at=now).on_conflict_do_nothing())


def move_to_org(conn: Connection, study_ids: list[int], ae_title: str, org: str) -> None:
    """Give the studies an unregistered AE sent the identities they would have had from `org`.

    An unregistered sender's patient IDs live in its AE title's namespace (`ae`); once the AE is
    claimed by its organization, the same IDs belong to the organization's namespace (`org`), as
    the AE's later studies will. Identities keyed by a DICOM issuer or by the study stay as they
    are; an `ae` identity no study uses any more is removed (nothing else refers to it yet).
    """
    rows = conn.execute(
        select(
            Study.id,
            PatientIdentity.id,
            PatientIdentity.patient_id,
            PatientIdentity.patient_name,
            PatientIdentity.birth_date,
            PatientIdentity.sex,
            PatientIdentity.address,
            PatientIdentity.national_id,
            PatientIdentity.other_ids,
        )
        .join(PatientIdentity, PatientIdentity.id == Study.identity_id)
        .where(Study.id.in_(study_ids), PatientIdentity.issuer_kind == AE, PatientIdentity.issuer == ae_title)
    ).all()
    old: set[int] = set()
    new: set[int] = set()
    for study_id, identity_id, patient_id, name, birth_date, sex, address, national_id, other_ids in rows:
        items = tuple((value, issuer) for issuer, value in decode_other_ids(other_ids))
        demographics = Demographics(name, birth_date, sex, address, national_id, items)
        new_id = upsert(conn, IdentityKey(ORG, org, patient_id), demographics)
        conn.execute(update(Study).where(Study.id == study_id).values(identity_id=new_id))
        old.add(identity_id)
        new.add(new_id)
    follow_persons(conn, sorted(new))
    for identity_id in old:
        still_used = conn.scalar(select(Study.id).where(Study.identity_id == identity_id).limit(1))
        if still_used is None:
            conn.execute(delete(PatientIdentity).where(PatientIdentity.id == identity_id))


def follow_persons(conn: Connection, identities: list[int]) -> None:
    """Copy the person of each of `identities` onto the owner rows of its studies
    (`StudyOwner.person_id`, which the care relationship reads), after the identities changed person.

    Race-free with ingest: an ingest adding an owner row first takes a share lock on the study's
    identity (`storage.ingest.pipeline._add_owner`), so the identity's update here waits for it
    to commit and this statement, run after, sees its row; or it reads the person set here.
    """
    person_of = (
        select(PatientIdentity.person_id)
        .join(Study, Study.identity_id == PatientIdentity.id)
        .where(Study.id == StudyOwner.study_id)
        .scalar_subquery()
    )
    studies = select(Study.id).where(Study.identity_id.in_(identities))
    conn.execute(update(StudyOwner).where(StudyOwner.study_id.in_(studies)).values(person_id=person_of))
