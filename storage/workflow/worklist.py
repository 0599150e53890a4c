"""The Modality Worklist's steps: scheduled, listed and moved on over the admin API (PS3.4 K.6.1).

An integrator (the hospital's RIS or HIS interface) schedules steps over the admin API; a
modality asks for its worklist with C-FIND and gets the patient's identity and the order's
Study Instance UID, so nobody types them at the console and the images land in the study the
order expects. Fewer typed names means fewer identity errors for the patient index to undo.

A step belongs to its performing organization: only that organization's AEs see it over DICOM,
only that organization's integrators (and admins) manage it over HTTP (`storage.access.policy`).
A modality's C-FIND of its worklist is `storage.workflow.mwl`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from datetime import date as _date
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.access.context import Context
from storage.access.policy import require_schedule_for, worklist_managed_by
from storage.dicom.charset import fold
from storage.dicom.uids import is_uid
from storage.errors import NotFound, RejectedInput
from storage.index.models import ApplicationEntity, Organization, ScheduledProcedureStep, utcnow
from storage.patients import identities
from storage.query import matching as m
from storage.query.matching import InvalidQuery
from storage.settings import AE_TITLE_RE

SPS = ScheduledProcedureStep
STATUSES = ("SCHEDULED", "STARTED", "COMPLETED", "DISCONTINUED")
Status = Literal["SCHEDULED", "STARTED", "COMPLETED", "DISCONTINUED"]
#: a step that was done or given up stays so; schedule a new one instead
FINAL = frozenset({"COMPLETED", "DISCONTINUED"})
#: PS3.3 C.7.3.1.1.1 Modality, defined terms of the current edition (retired ones excluded)
MODALITIES = frozenset(
    "ANN AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DG DMS DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD "
    "IO IOL IVOCT IVUS KER KO LEN LS M3D MG MR NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA PLAN "
    "POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV "
    "SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC".split()
)
#: schedule order: the worklist a modality shows, top to bottom
SCHEDULE_ORDER = (SPS.scheduled_procedure_step_start_date, SPS.scheduled_procedure_step_start_time, SPS.id)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")


class InvalidStep(RejectedInput):
    """A step the archive cannot schedule or change (HTTP 400); `detail` names the field."""

    reason = "invalid_step"


# --- value checks: PS3.5 6.2 value representations, as the modality will receive them ---------


def _text(limit: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) > limit:
            raise ValueError(f"at most {limit} characters")
        if _CONTROL.search(value):
            raise ValueError("no backslash or control characters")
        return value

    return check


def _person_name(value: str) -> str:
    """PN: up to three component groups of up to five `^`-separated components, 64 characters each."""
    groups = value.split("=")
    if len(groups) > 3 or any(len(g) > 64 or g.count("^") > 4 for g in groups):
        raise ValueError("a DICOM person name: Family^Given^Middle^Prefix^Suffix, at most 64 characters")
    return _text(3 * 64 + 2)(value)


def _dicom_date(value: str) -> str:
    """DA as `YYYYMMDD`; the ISO form `YYYY-MM-DD` that JSON clients write is accepted too."""
    if not value:
        return value
    iso = _ISO_DATE.match(value)
    text = "".join(iso.groups()) if iso else value
    try:
        if len(text) != 8 or not text.isdigit():
            raise ValueError
        _date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise ValueError("a date YYYYMMDD (or YYYY-MM-DD)") from None
    return text


def _dicom_time(value: str) -> str:
    """TM as `HHMM[SS[.FFFFFF]]`; `HH:MM[:SS]` is accepted too."""
    if not value:
        return value
    text = value.replace(":", "") if re.fullmatch(r"\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?", value) else value
    t = _TIME.match(text)
    if not t or not t.group(2) or int(t.group(1)) > 23 or int(t.group(2)) > 59 or int(t.group(3) or 0) > 59:
        raise ValueError("a time HHMM[SS] (or HH:MM[:SS])")
    if t.group(4) and not t.group(3):
        raise ValueError("a fraction of a second needs seconds")
    return text


def _uid(value: str) -> str:
    if value and not is_uid(value):
        raise ValueError("a valid UID (PS3.5 9.1): digits and dots, at most 64 characters")
    return value


def _ae_title(value: str) -> str:
    if value and not AE_TITLE_RE.match(value):
        raise ValueError("an AE title: 1 to 16 printable ASCII characters without a backslash")
    return value


def _modality(value: str) -> str:
    value = value.upper()
    if value not in MODALITIES:
        raise ValueError(f"a DICOM modality (PS3.3 C.7.3.1.1.1) such as CT, MR, US, CR, DX, MG; not {value!r}")
    return value


def _required(value: str) -> str:
    if not value:
        raise ValueError("required")
    return value


PN = Annotated[str, AfterValidator(_person_name)]
LO = Annotated[str, AfterValidator(_text(64))]
SH = Annotated[str, AfterValidator(_text(16))]
DA = Annotated[str, AfterValidator(_dicom_date)]


class NewStep(BaseModel):
    """A step to schedule: the admin API's request body, in DICOM keywords written snake_case.

    `org` is the performing organization (default: the caller's own). Left out,
    `study_instance_uid` is generated, and both IDs default to the step's number.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    org: Annotated[str, AfterValidator(_text(64))] | None = None
    patient_name: Annotated[PN, AfterValidator(_required)]
    patient_id: Annotated[LO, AfterValidator(_required)]
    issuer_of_patient_id: LO = ""
    patient_birth_date: DA = ""
    patient_sex: Literal["M", "F", "O", ""] = ""
    accession_number: SH = ""
    requested_procedure_id: SH = ""
    requested_procedure_description: LO = ""
    study_instance_uid: Annotated[str, AfterValidator(_uid)] = ""
    scheduled_procedure_step_id: SH = ""
    scheduled_procedure_step_description: LO = ""
    modality: Annotated[str, AfterValidator(_modality)]
    scheduled_station_ae_title: Annotated[str, AfterValidator(_ae_title)] = ""
    scheduled_procedure_step_start_date: Annotated[DA, AfterValidator(_required)]
    scheduled_procedure_step_start_time: Annotated[str, AfterValidator(_dicom_time)] = ""
    scheduled_performing_physician_name: PN = ""
    referring_physician_name: PN = ""


class Step(BaseModel):
    """A scheduled step as the admin API answers it."""

    id: int
    org: str
    status: Status
    patient_name: str
    patient_id: str
    issuer_of_patient_id: str
    patient_birth_date: str
    patient_sex: str
    accession_number: str
    requested_procedure_id: str
    requested_procedure_description: str
    study_instance_uid: str
    scheduled_procedure_step_id: str
    scheduled_procedure_step_description: str
    modality: str
    scheduled_station_ae_title: str
    scheduled_procedure_step_start_date: str
    scheduled_procedure_step_start_time: str
    scheduled_performing_physician_name: str
    referring_physician_name: str
    created_at: datetime
    updated_at: datetime


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite returns naive datetimes


def _view(row: ScheduledProcedureStep) -> Step:
    fields = {name: getattr(row, "org_id" if name == "org" else name) for name in Step.model_fields}
    return Step.model_validate(fields | {"created_at": _utc(row.created_at), "updated_at": _utc(row.updated_at)})


# --- the admin API's operations -------------------------------------------------------------


def create_step(spec: NewStep, ctx: Context, *, session: Session) -> Step:
    """Schedule a step for `spec.org` (admin) or the caller's own organization (integrator).

    Raises
    ------
    NotAuthorized
        The caller may not manage the worklist, or an integrator names another organization.
    InvalidStep
        No such organization, or the station AE title is registered to another one.
    """
    org = spec.org or ctx.principal.org
    require_schedule_for(ctx, org)
    if not org:
        raise InvalidStep("org: required (the performing organization)")
    if session.get(Organization, org) is None:
        raise InvalidStep(f"org: no organization {org!r}")
    station = spec.scheduled_station_ae_title
    owner = session.scalar(select(ApplicationEntity.org_id).where(ApplicationEntity.ae_title == station))
    if station and owner is not None and owner != org:
        raise InvalidStep(f"scheduled_station_ae_title: {station} is registered to another organization")
    row = SPS(org_id=org, **spec.model_dump(exclude={"org"}))
    row.study_instance_uid = spec.study_instance_uid or generate_uid()
    row.patient_name_folded = fold(spec.patient_name)
    row.scheduled_performing_physician_folded = fold(spec.scheduled_performing_physician_name)
    row.referring_physician_folded = fold(spec.referring_physician_name)
    row.status = "SCHEDULED"
    row.created_at = row.updated_at = utcnow()
    session.add(row)
    session.flush()
    _give_identity(session, row)
    row.scheduled_procedure_step_id = row.scheduled_procedure_step_id or str(row.id)
    row.requested_procedure_id = row.requested_procedure_id or str(row.id)
    session.flush()
    return _view(row)


def _give_identity(session: Session, row: ScheduledProcedureStep) -> None:
    """Make the step's patient an identity of the patient index (queued for linking, as ingest
    does), so that the performing organization's care relationship with the person holds from
    the order on, before any image arrives (`storage.access.policy`)."""
    if not row.patient_id:
        return
    key = identities.identity_key(
        row.patient_id, row.issuer_of_patient_id, study_uid=row.study_instance_uid, org=row.org_id, sender=""
    )
    demographics = identities.Demographics(row.patient_name, row.patient_birth_date, row.patient_sex)
    identities.upsert(session.connection(), key, demographics)


def list_steps(
    ctx: Context,
    *,
    session: Session,
    date: str = "",
    modality: str = "",
    station_ae: str = "",
    status: str = "",
    org: str = "",
    limit: int = 1000,
) -> list[Step]:
    """The steps the caller manages, in schedule order; filters match as C-FIND keys do.

    `date` takes `YYYYMMDD`, `YYYY-MM-DD` or a range `D1-D2`, `D-`, `-D` (PS3.4 C.2.2.2.5);
    `modality` and `station_ae` take `*`/`?` wild cards.

    Raises
    ------
    InvalidQuery
        A malformed date, range or status, or an org with control characters.
    """
    if status and status not in STATUSES:
        raise InvalidQuery(f"status: one of {', '.join(STATUSES)}")
    if _CONTROL.search(org):
        raise InvalidQuery("org: no backslash or control characters")
    iso = _ISO_DATE.match(date)
    filters = [
        m.date(SPS.scheduled_procedure_step_start_date.expression, "".join(iso.groups()) if iso else date),
        m.string(SPS.modality.expression, modality),
        m.string(SPS.scheduled_station_ae_title.expression, station_ae),
        SPS.status == status if status else None,
        SPS.org_id == org if org else None,
    ]
    query = select(SPS).where(worklist_managed_by(ctx), *(f for f in filters if f is not None))
    return [_view(r) for r in session.scalars(query.order_by(*SCHEDULE_ORDER).limit(limit))]


def _managed(step_id: int, ctx: Context, session: Session) -> ScheduledProcedureStep:
    """The step, if the caller manages it; another organization's step does not exist for it."""
    row = session.scalar(select(SPS).where(SPS.id == step_id, worklist_managed_by(ctx)))
    if row is None:
        raise NotFound(f"no scheduled procedure step {step_id}")
    return row


def get_step(step_id: int, ctx: Context, *, session: Session) -> Step:
    """Raises `NotFound` for a step the caller does not manage, `NotAuthorized` for a non-manager."""
    return _view(_managed(step_id, ctx, session))


def set_status(step_id: int, status: Status, ctx: Context, *, session: Session) -> Step:
    """Move a step on (SCHEDULED, STARTED, COMPLETED, DISCONTINUED); only SCHEDULED is offered to modalities.

    Raises
    ------
    InvalidStep
        The step is already COMPLETED or DISCONTINUED, which are final.
    """
    row = _managed(step_id, ctx, session)
    if row.status in FINAL and status != row.status:
        raise InvalidStep(f"status: step {step_id} is {row.status}, which is final")
    row.status, row.updated_at = status, utcnow()
    session.flush()
    return _view(row)


def delete_step(step_id: int, ctx: Context, *, session: Session) -> None:
    session.delete(_managed(step_id, ctx, session))
    session.flush()
