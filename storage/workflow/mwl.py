"""Modality Worklist C-FIND (PS3.4 K.6.1.2): the scheduled steps a modality asks for.

A modality's identifier names keys at the top level (Patient, Visit, Imaging Service Request,
Requested Procedure) and in the one item of the Scheduled Procedure Step Sequence; they match
with the PS3.4 C.2.2.2 rules of `storage.query.matching` (person names folded, as study
searches do), over the steps of the modality's own organization that are still SCHEDULED
(`storage.access.policy.worklist_visible_to`). The steps themselves are kept by
`storage.workflow.worklist`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from storage.access.context import Context
from storage.access.policy import worklist_visible_to
from storage.index.models import ScheduledProcedureStep
from storage.query import matching as m
from storage.query.matching import InvalidQuery
from storage.workflow.worklist import SCHEDULE_ORDER

SPS = ScheduledProcedureStep

Matcher = Callable[[Any, str], ColumnElement[bool] | None]


def _pn(column: InstrumentedAttribute[str], folded: InstrumentedAttribute[str]) -> tuple[str, Any, Matcher]:
    return column.key, folded, lambda c, value: m.person_name(c, value)


def _key(column: InstrumentedAttribute[str], match: Matcher) -> tuple[str, Any, Matcher]:
    return column.key, column, match


#: keyword -> (attribute answered, column matched, matcher): Patient, Visit, Imaging Service
#: Request and Requested Procedure keys at the top level of the identifier (PS3.4 Table K.6-1)
TOP_KEYS: dict[str, tuple[str, Any, Matcher]] = {
    "PatientName": _pn(SPS.patient_name, SPS.patient_name_folded),
    "PatientID": _key(SPS.patient_id, m.string),
    "IssuerOfPatientID": _key(SPS.issuer_of_patient_id, m.string),
    "PatientBirthDate": _key(SPS.patient_birth_date, m.date),
    "PatientSex": _key(SPS.patient_sex, m.string),
    "AccessionNumber": _key(SPS.accession_number, m.string),
    "ReferringPhysicianName": _pn(SPS.referring_physician_name, SPS.referring_physician_folded),
    "RequestedProcedureID": _key(SPS.requested_procedure_id, m.string),
    "RequestedProcedureDescription": _key(SPS.requested_procedure_description, m.string),
    "StudyInstanceUID": _key(SPS.study_instance_uid, m.uid_list),
    # belongs in the step item; some modalities send it at the top level, so it is honoured there too
    "Modality": _key(SPS.modality, m.string),
}
#: the keys of the Scheduled Procedure Step Sequence item
STEP_KEYS: dict[str, tuple[str, Any, Matcher]] = {
    "ScheduledStationAETitle": _key(SPS.scheduled_station_ae_title, m.string),
    "ScheduledProcedureStepStartDate": _key(SPS.scheduled_procedure_step_start_date, m.date),
    "ScheduledProcedureStepStartTime": _key(SPS.scheduled_procedure_step_start_time, m.time),
    "Modality": _key(SPS.modality, m.string),
    "ScheduledPerformingPhysicianName": _pn(
        SPS.scheduled_performing_physician_name, SPS.scheduled_performing_physician_folded
    ),
    "ScheduledProcedureStepDescription": _key(SPS.scheduled_procedure_step_description, m.string),
    "ScheduledProcedureStepID": _key(SPS.scheduled_procedure_step_id, m.string),
    "ScheduledProcedureStepStatus": _key(SPS.status, m.string),
}
_STEP_SEQUENCE = "ScheduledProcedureStepSequence"


def _text_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):  # MultiValue: a list of values, `\`-joined as on the wire
        return "\\".join(str(v) for v in value)
    return str(value)


def _step_item(identifier: Dataset) -> Dataset | None:
    """The one item of the Scheduled Procedure Step Sequence; None if the sequence is empty or absent."""
    if _STEP_SEQUENCE not in identifier:
        return None
    items = identifier[_STEP_SEQUENCE].value or []
    if len(items) > 1:
        raise InvalidQuery("Scheduled Procedure Step Sequence: at most one item (PS3.4 C.2.2.2.6)")
    return items[0] if items else None


def _conditions(identifier: Dataset) -> list[ColumnElement[bool]]:
    out = []
    item = _step_item(identifier)
    for keys, ds in ((TOP_KEYS, identifier), (STEP_KEYS, item)):
        for keyword, (_, column, match) in keys.items():
            if ds is not None and keyword in ds and ds[keyword].VR != "SQ":
                try:
                    condition = match(column, _text_value(ds[keyword].value))
                except InvalidQuery as exc:
                    raise InvalidQuery(f"{keyword}: {exc.detail}") from None
                if condition is not None:
                    out.append(condition)
    return out


def find_worklist(identifier: Dataset, ctx: Context, *, session: Session) -> list[Dataset]:
    """Match a Modality Worklist C-FIND identifier; answer one identifier per SCHEDULED step.

    Keys at the top level and in the Scheduled Procedure Step Sequence item match with PS3.4
    C.2.2.2 rules (person names folded); each answer holds exactly the keys asked for, those the
    archive does not keep with a zero-length value (PS3.4 C.4.1.1.3.2). An empty step sequence
    asks for the whole item. SpecificCharacterSet is ISO_IR 192 when some answered text is not ASCII.

    Raises
    ------
    InvalidQuery
        A malformed key value, or more than one step item (C-FIND 0xA900).
    """
    query = select(SPS).where(worklist_visible_to(ctx), SPS.status == "SCHEDULED", *_conditions(identifier))
    return [_answer(row, identifier) for row in session.scalars(query.order_by(*SCHEDULE_ORDER))]


def _fill(
    target: Dataset, request: Dataset, row: ScheduledProcedureStep, keys: dict[str, tuple[str, Any, Matcher]]
) -> None:
    for elem in request:
        if elem.tag.is_private or elem.tag.element == 0 or elem.keyword == "SpecificCharacterSet":
            continue
        if elem.keyword in keys:
            target.add_new(elem.tag, elem.VR, getattr(row, keys[elem.keyword][0]) or None)
        elif elem.keyword == _STEP_SEQUENCE:
            target.add_new(elem.tag, "SQ", Sequence([_answer_item(row, _step_item(request))]))
        else:
            target.add_new(elem.tag, elem.VR, Sequence() if elem.VR == "SQ" else None)


def _answer_item(row: ScheduledProcedureStep, request: Dataset | None) -> Dataset:
    item = Dataset()
    if request is None:
        request = Dataset()
        for keyword in STEP_KEYS:
            setattr(request, keyword, None)
    _fill(item, request, row, STEP_KEYS)
    return item


def _answer(row: ScheduledProcedureStep, identifier: Dataset) -> Dataset:
    answer = Dataset()
    _fill(answer, identifier, row, TOP_KEYS)
    if not _ascii(answer):
        answer.SpecificCharacterSet = "ISO_IR 192"
    return answer


def _ascii(ds: Dataset) -> bool:
    for elem in ds:
        if elem.VR == "SQ":
            if not all(_ascii(item) for item in elem.value):
                return False
        elif not _text_value(elem.value).isascii():
            return False
    return True
