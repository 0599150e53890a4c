"""The keys a search matches on: which attribute lives in which index column, at which level.

A key is a tag (8 upper-case hex digits, as in DICOM JSON) or a sequence path of tags joined by
dots, with its value as the peer sent it. `filters` turns the keys of a `Query` into SQL on
indexed columns (`storage.query.matching`) or on the DICOM JSON kept at ingest
(`storage.query.sequences`). A key this archive cannot match on at the query's level (a valid
attribute with no index column, or a sequence the level does not keep) is matched universally,
as PS3.4 C.2.2.2.3 does for unsupported optional keys, and named in the `ignored` list, so the
edge can warn (QIDO-RS Warning 299, C-FIND 0xFF01).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, and_, select

from storage.dicom.parse import SERIES_TAGS, STUDY_TAGS
from storage.index.models import Instance, PatientIdentity, Series, Study
from storage.query import matching as m
from storage.query.matching import InvalidQuery
from storage.query.sequences import sequence_keys

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
#: how deep each level is: a key of a level deeper than the query's is not matched there
DEPTH = {PATIENT: -1, STUDY: 0, SERIES: 1, IMAGE: 2}
_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")

Builder = Callable[[str, bool], ColumnElement[bool] | None]


def _plain(column: Any, fn: Callable[[Any, str], ColumnElement[bool] | None]) -> Builder:
    return lambda value, _fuzzy: fn(column, value)


def _name(column: Any) -> Builder:
    return lambda value, fuzzy: m.person_name(column, value, fuzzy=fuzzy)


def _issuer(column: Any, value: str) -> ColumnElement[bool] | None:
    """IssuerOfPatientID matches only identities whose issuer the sender gave (not an org or AE)."""
    expr = m.string(column, value)
    return None if expr is None else and_(PatientIdentity.issuer_kind == "dicom", expr)


def _patient(column: Any, fn: Callable[[Any, str], ColumnElement[bool] | None]) -> Builder:
    """A key kept on the patient identity of the study, not on the study row."""

    def build(value: str, _fuzzy: bool) -> ColumnElement[bool] | None:
        expr = fn(column, value)
        return None if expr is None else Study.identity_id.in_(select(PatientIdentity.id).where(expr))

    return build


#: tag -> (level, SQL builder): the keys this archive matches on at STUDY level and below
MATCH_KEYS: dict[str, tuple[str, Builder]] = {
    "00080020": (STUDY, _plain(Study.study_date, m.date)),
    "00080030": (STUDY, _plain(Study.study_time, m.time)),
    "00080050": (STUDY, _plain(Study.accession_number, m.string)),
    "00080061": (STUDY, _plain(Study.modalities, m.multi_valued)),
    "00080090": (STUDY, _name(Study.referring_physician_folded)),
    "00081030": (STUDY, _plain(Study.description, m.string)),
    "00100010": (STUDY, _name(Study.patient_name_folded)),
    "00100020": (STUDY, _plain(Study.patient_id, m.string)),
    "00100021": (STUDY, _patient(PatientIdentity.issuer, _issuer)),
    "00100030": (STUDY, _patient(PatientIdentity.birth_date, m.date)),
    "00100040": (STUDY, _patient(PatientIdentity.sex, m.string)),
    "0020000D": (STUDY, _plain(Study.study_uid, m.uid_list)),
    "00200010": (STUDY, _plain(Study.study_id, m.string)),
    "00080021": (SERIES, _plain(Series.series_date, m.date)),
    "00080031": (SERIES, _plain(Series.series_time, m.time)),
    "00080060": (SERIES, _plain(Series.modality, m.string)),
    "0008103E": (SERIES, _plain(Series.description, m.string)),
    "00180015": (SERIES, _plain(Series.body_part, m.string)),
    "0020000E": (SERIES, _plain(Series.series_uid, m.uid_list)),
    "00200011": (SERIES, _plain(Series.series_number, m.integer)),
    "00080016": (IMAGE, _plain(Instance.sop_class_uid, m.uid_list)),
    "00080018": (IMAGE, _plain(Instance.sop_uid, m.uid_list)),
    "00200013": (IMAGE, _plain(Instance.instance_number, m.integer)),
    "00280008": (IMAGE, _plain(Instance.number_of_frames, m.integer)),
    "00280010": (IMAGE, _plain(Instance.rows, m.integer)),
    "00280011": (IMAGE, _plain(Instance.columns, m.integer)),
}
#: the keys matched at PATIENT level (PS3.4 Table C.6-1), on the patient identity
PATIENT_KEYS: dict[str, tuple[str, Builder]] = {
    "00100010": (PATIENT, _name(PatientIdentity.patient_name_folded)),
    "00100020": (PATIENT, _plain(PatientIdentity.patient_id, m.string)),
    "00100021": (PATIENT, _plain(PatientIdentity.issuer, _issuer)),
    "00100030": (PATIENT, _plain(PatientIdentity.birth_date, m.date)),
    "00100040": (PATIENT, _plain(PatientIdentity.sex, m.string)),
}


def attribute_tag(name: str) -> str:
    """The tag of a keyword (``PatientAge``) or of a tag written as 8 hex digits (``00101010``).

    Raises
    ------
    InvalidQuery
        `name` is neither a keyword nor a tag of the data dictionary (PS3.6 Table 6-1); private
        tags (odd groups) are accepted.
    """
    text = name.strip()
    if _HEX_TAG.match(text):
        tag = int(text, 16)
        if dictionary_has_tag(tag) or (tag >> 16) % 2 == 1:
            return f"{tag:08X}"
        raise InvalidQuery(f"unknown attribute {name!r}: not a tag of the DICOM data dictionary")
    found = tag_for_keyword(text)
    if found is None:
        raise InvalidQuery(f"unknown attribute {name!r}: not a keyword or tag of the DICOM data dictionary")
    return f"{found:08X}"


def keyword(tag: str) -> str:
    """``00100010`` -> ``PatientName``; a sequence path ``0040A730.0040A040`` keyword by keyword."""
    return ".".join(keyword_for_tag(int(t, 16)) or t for t in tag.split("."))


def filters(
    keys: Mapping[str, str], level: str, *, fuzzy: bool = False
) -> tuple[list[ColumnElement[bool]], tuple[str, ...]]:
    """SQL conditions for the keys matchable at `level`; the others are named as ignored.

    Raises
    ------
    InvalidQuery
        A key's value cannot be matched; the message names the key.
    """
    table = PATIENT_KEYS if level == PATIENT else MATCH_KEYS
    conditions: list[ColumnElement[bool]] = []
    ignored: list[str] = []
    sequences: dict[Any, dict[str, str]] = {}  # JSON column -> the sequence keys matched in it
    for tag, value in keys.items():
        if "." in tag:
            column = _sequence_column(tag.split(".", 1)[0], level)
            if column is None:
                if value.strip(" *"):
                    ignored.append(keyword(tag))
            else:
                sequences.setdefault(column, {})[tag] = value
            continue
        spec = table.get(tag)
        if spec is None or DEPTH[spec[0]] > DEPTH[level]:
            if value.strip(" *"):
                ignored.append(keyword(tag))
            continue
        try:
            expr = spec[1](value, fuzzy)
        except InvalidQuery as exc:
            raise InvalidQuery(f"{keyword(tag)}: {exc.detail}") from None
        if expr is not None:
            conditions.append(expr)
    for column, in_sequences in sequences.items():
        expr = sequence_keys(column, in_sequences)  # its errors already name the path
        if expr is not None:
            conditions.append(expr)
    return conditions, tuple(ignored)


def _is_sequence(tag: str) -> bool:
    return dictionary_has_tag(int(tag, 16)) and dictionary_VR(int(tag, 16)) == "SQ"


#: sequences kept with the study's and the series' attributes at ingest (storage.dicom.parse)
_STUDY_SEQUENCES = frozenset(t for t in STUDY_TAGS if _is_sequence(t))
_SERIES_SEQUENCES = frozenset(t for t in SERIES_TAGS if _is_sequence(t))


def _sequence_column(sequence_tag: str, level: str) -> Any:
    """The stored DICOM JSON a sequence key is matched in at `level`, or None if not kept there.

    An instance's JSON holds every sequence; a study's and a series' only those ingest keeps at
    that level (ProcedureCodeSequence, OtherPatientIDsSequence..., RequestAttributesSequence).
    A sequence kept only per instance is not matched at study or series level, where it would
    mean parsing every instance's JSON: it is reported as ignored instead.
    """
    if level == IMAGE:
        return Instance.dicom_json
    if sequence_tag in _STUDY_SEQUENCES and level in (STUDY, SERIES):
        return Study.attrs_json
    if sequence_tag in _SERIES_SEQUENCES and level == SERIES:
        return Series.attrs_json
    return None
