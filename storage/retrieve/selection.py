"""Which stored instances a C-MOVE or C-GET identifier names, and in which syntax each goes out.

A retrieve identifier (PS3.4 C.4.2.1.4.1, C.4.3.1.3.1) carries the Query/Retrieve Level and
the unique keys down to that level; the key of the level itself may be a list of UIDs
(PS3.4 C.4.2.2.1), the keys above it one value each. This module turns it into one SQL
statement over the index, scoped by `storage.access.policy.visible_to`, so a study the caller may
not see is as absent as one that does not exist (it is simply not sent).

Choices where the standard leaves room, written down in the README:

- keys of the levels above the retrieve level are optional (many SCUs send only the UID
  list of the level); when given with a value they narrow the match;
- a unique key of a level *below* the retrieve level with a value is refused (0xA900)
  instead of being ignored, so a request is never answered with more than it named;
- IssuerOfPatientID, when given, narrows the patient to the identities of that issuer.

The transfer syntax rule (`delivery_for`) is the archive's: as stored when the peer accepted
it, else decoded to explicit or implicit VR little endian, never re-compressed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from storage.access.context import Context
from storage.access.policy import visible_to
from storage.dicom.uids import check_uid
from storage.errors import InvalidIdentifier
from storage.index.models import Instance, PatientIdentity, Series, Study
from storage.retrieve.retrieval import STORED_INSTANCE_COLUMNS, Delivery, StoredInstance, plan

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
#: the levels of each information model, top down (PS3.4 C.3.1, C.3.2)
MODEL_LEVELS = {PATIENT: (PATIENT, STUDY, SERIES, IMAGE), STUDY: (STUDY, SERIES, IMAGE)}
#: the unique key of each level (PS3.4 C.3)
UNIQUE_KEY = {PATIENT: "PatientID", STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID", IMAGE: "SOPInstanceUID"}
#: what an instance may be decoded to when the peer did not accept its stored syntax, preferred first
FALLBACK_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True, slots=True)
class RetrieveKeys:
    """What a C-MOVE/C-GET identifier asks for; empty tuples and None match anything."""

    level: str
    patient_id: str | None = None
    issuer: str | None = None
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = field(default=())


def parse_identifier(identifier: Dataset, model: str) -> RetrieveKeys:
    """Read the level and unique keys of a retrieve identifier of the `model` root (PATIENT or STUDY).

    Raises
    ------
    InvalidIdentifier
        No or an unknown level for the model, the level's unique key missing, a list where
        one value is allowed, a wildcard in a Patient ID, or a key below the level.
    InvalidUid
        A UID key that is not a UID (PS3.5 9.1).
    """
    levels = MODEL_LEVELS[model]
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in levels:
        raise InvalidIdentifier(f"QueryRetrieveLevel {level or '(missing)'!r} is not {'/'.join(levels)}")
    depth = levels.index(level)
    values = {name: _values(identifier, UNIQUE_KEY[name]) for name in levels}
    if not values[level]:
        raise InvalidIdentifier(f"{UNIQUE_KEY[level]} is required at level {level}")
    for name in levels[:depth]:
        if len(values[name]) > 1:
            raise InvalidIdentifier(f"{UNIQUE_KEY[name]}: one value only above the retrieve level")
    for name in levels[depth + 1 :]:
        if values[name]:
            raise InvalidIdentifier(f"{UNIQUE_KEY[name]} is below the retrieve level {level}")
    patient = values.get(PATIENT, ())
    if len(patient) > 1 or any(c in p for p in patient for c in "*?"):
        raise InvalidIdentifier("PatientID must be a single value without wildcards")
    for name in (STUDY, SERIES, IMAGE):
        for uid in values[name]:
            check_uid(UNIQUE_KEY[name], uid)
    issuer = str(identifier.get("IssuerOfPatientID", "") or "").strip() or None
    return RetrieveKeys(
        level=level,
        patient_id=patient[0] if patient else None,
        issuer=issuer,
        study_uids=values[STUDY],
        series_uids=values[SERIES],
        sop_uids=values[IMAGE],
    )


def _values(identifier: Dataset, keyword: str) -> tuple[str, ...]:
    """The non-empty values of a key: a UID list comes as a MultiValue, one value as a str."""
    raw = identifier.get(keyword)
    if raw is None:
        return ()
    items: Iterable[object] = raw if isinstance(raw, MultiValue | list | tuple) else [raw]
    return tuple(s for s in (str(v).strip().rstrip("\0") for v in items if v is not None) if s)


def select_instances(session: Session, ctx: Context, keys: RetrieveKeys) -> list[StoredInstance]:
    """The instances `keys` names that `ctx` may read, study by study, in series and instance order.

    One statement on indexed columns; no blob is opened. An empty list is a valid answer
    (the retrieve then completes with no sub-operations).
    """
    q = (
        select(*STORED_INSTANCE_COLUMNS)
        .join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Instance.study_id)
        .where(visible_to(ctx), *_filters(keys))
        .order_by(
            Study.id,
            Series.series_number.asc().nulls_last(),
            Series.id,
            Instance.instance_number.asc().nulls_last(),
            Instance.id,
        )
    )
    return [StoredInstance(**row._asdict()) for row in session.execute(q).all()]


def _filters(keys: RetrieveKeys) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if keys.patient_id is not None:
        out.append(Study.patient_id == keys.patient_id)
    if keys.issuer is not None:
        issuers = select(PatientIdentity.id).where(
            PatientIdentity.issuer_kind == "dicom", PatientIdentity.issuer == keys.issuer
        )
        out.append(Study.identity_id.in_(issuers))
    if keys.study_uids:
        out.append(Study.study_uid.in_(keys.study_uids))
    if keys.series_uids:
        out.append(Series.series_uid.in_(keys.series_uids))
    if keys.sop_uids:
        out.append(Instance.sop_uid.in_(keys.sop_uids))
    return out


def proposal(instances: Iterable[StoredInstance]) -> dict[str, list[str]]:
    """Per SOP class, the syntaxes worth proposing to a C-MOVE destination (preferred first).

    Each stored syntax (so those objects can go as stored), then the uncompressed ones they
    can be decoded to, for a destination that accepts nothing else.
    """
    out: dict[str, list[str]] = {}
    for inst in instances:
        syntaxes = out.setdefault(inst.sop_class_uid, [])
        if inst.transfer_syntax_uid not in syntaxes:
            syntaxes.append(inst.transfer_syntax_uid)
    for syntaxes in out.values():
        syntaxes.extend(ts for ts in FALLBACK_SYNTAXES if ts not in syntaxes)
    return out


def delivery_for(inst: StoredInstance, accepted: Collection[str]) -> Delivery | None:
    """How `inst` goes to a peer that accepted `accepted` for its SOP class, or None if it cannot.

    As stored when the peer accepted the stored syntax (the stored bytes are sent unchanged),
    else decoded to the first uncompressed little endian syntax it accepted
    (`storage.retrieve.retrieval.transcode`); nothing is ever re-compressed.
    """
    wanted = [inst.transfer_syntax_uid, *FALLBACK_SYNTAXES]
    return plan(inst, [ts for ts in wanted if ts in accepted])
