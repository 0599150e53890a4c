"""What a match answers: the attributes each level returns by default, and how they are built.

An answer is DICOM JSON (PS3.18 F.2) made from what ingest kept: the patient identity's
columns, the study and series attributes of their first instance (`storage.dicom.parse`'s
STUDY_TAGS and SERIES_TAGS), each instance's JSON without bulk data, and the counts ingest
maintains. Attributes that are not stored but computed (PS3.4 C.3.4: counts, ModalitiesInStudy,
SOPClassesInStudy, InstanceAvailability, RetrieveURL) are added here or by the edge. These are
pure functions of rows and stored JSON; the statements that fetch them are `storage.query.search`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydicom.datadict import dictionary_has_tag, dictionary_VR

from storage.query.keys import PATIENT_KEYS

#: PS3.18 Table 10.6.3-3, plus Study Description, which every viewer's study list shows
STUDY_DEFAULTS = frozenset(
    "00080005 00080020 00080030 00080050 00080056 00080061 00080090 00080201 00081030 00081190 "
    "00100010 00100020 00100030 00100040 0020000D 00200010 00201206 00201208".split()
)
#: PS3.18 Table 10.6.3-4 (Study Instance UID too, so a series can be addressed)
SERIES_DEFAULTS = frozenset(
    "00080005 00080060 00080201 0008103E 00081190 0020000D 0020000E 00200011 00201209 "
    "00400244 00400245 00400275".split()
)
#: PS3.18 Table 10.6.3-5 (Study and Series Instance UIDs too)
INSTANCE_DEFAULTS = frozenset(
    "00080005 00080016 00080018 00080056 00080201 00081190 0020000D 0020000E 00200013 "
    "00280008 00280010 00280011 00280100".split()
)
#: attributes of the Patient IE that a study's kept attributes may hold (PATIENT level answers)
PATIENT_TAGS = frozenset(
    "00100010 00100020 00100021 00100024 00100030 00100032 00100040 00101000 00101001 00101002 "
    "00101040 00102160 00104000".split()
)
SOP_CLASSES = "00080062"  # SOPClassesInStudy
PATIENT_COUNTS = frozenset({"00201200", "00201202", "00201204"})  # NumberOfPatientRelated*
#: computed attributes that need a query over the whole batch of rows
COMPUTED_PER_BATCH = PATIENT_COUNTS | {SOP_CLASSES}
#: answered from columns and counts, or added by the edge, never read from stored JSON
COMPUTED_TAGS = COMPUTED_PER_BATCH | frozenset(
    "00080052 00080054 00080056 00080061 00081190 00083002 00201206 00201208 00201209".split()
)
#: what a PATIENT row answers by itself, from the identity's columns and the counts
IDENTITY_TAGS = frozenset(PATIENT_KEYS) | PATIENT_COUNTS
#: what a study (or a series) never answers from the first instance it answers lower attributes
#: from: the keys that name one series or one instance
LOWER_IDENTITY = {
    "STUDY": frozenset("0020000E 00200011 00080016 00080018 00200013".split()),
    "SERIES": frozenset("00080016 00080018 00200013".split()),
}


def is_per_image(tag: str) -> bool:
    """Group 0028 (Image Pixel, Modality and VOI LUT): one image's, left out of `includefield=all`
    at study and series level, where they would describe an arbitrary image as the whole."""
    return tag.startswith("0028")


def identity_attrs(row: Any) -> dict[str, Any]:
    """The patient attributes kept on the identity row (`PatientIdentity` columns), as DICOM JSON."""
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), row.patient_name.split("="), strict=False))
    name = {group: text for group, text in groups.items() if text}
    attrs: dict[str, Any] = {"00100010": {"vr": "PN", "Value": [name]} if name else {"vr": "PN"}}
    for tag, vr, value in (
        ("00100020", "LO", row.patient_id),
        ("00100021", "LO", row.issuer if row.issuer_kind == "dicom" else ""),
        ("00100030", "DA", row.birth_date),
        ("00100040", "CS", row.sex),
    ):
        attrs[tag] = {"vr": vr, "Value": [value]} if value else {"vr": vr}
    return attrs


def patient_counts(studies: int, series: int, instances: int) -> dict[str, Any]:
    """NumberOfPatientRelatedStudies/Series/Instances (PS3.4 C.3.4)."""
    return {
        "00201200": {"vr": "IS", "Value": [studies]},
        "00201202": {"vr": "IS", "Value": [series]},
        "00201204": {"vr": "IS", "Value": [instances]},
    }


def study_computed(row: Any) -> dict[str, Any]:
    """NumberOfStudyRelatedSeries/Instances, ModalitiesInStudy, InstanceAvailability of a study row."""
    modalities = [v for v in (row.modalities or "").split("\\") if v]
    return {
        "00080056": {"vr": "CS", "Value": ["ONLINE"]},
        "00080061": {"vr": "CS", "Value": modalities} if modalities else {"vr": "CS"},
        "00201206": {"vr": "IS", "Value": [row.num_series]},
        "00201208": {"vr": "IS", "Value": [row.num_instances]},
    }


def requested(keys: Mapping[str, str], include: frozenset[str]) -> frozenset[str]:
    """The attributes a query names: its keys and its return keys."""
    return include | frozenset(keys)


def wanted(requested_tags: frozenset[str], defaults: frozenset[str], *, only_requested: bool) -> frozenset[str]:
    """What an answer carries: what was asked (C-FIND), or that and the level's defaults (QIDO-RS)."""
    return requested_tags if only_requested else defaults | requested_tags


def empties(wanted_tags: frozenset[str], *, only_requested: bool) -> dict[str, dict[str, Any]]:
    """Zero-length elements for the requested keys a match has no value for (C-FIND answers)."""
    if not only_requested:
        return {}
    out = {}
    for tag in wanted_tags:
        if "." in tag or not dictionary_has_tag(int(tag, 16)):
            continue  # a sequence path, or a private tag whose VR is unknown
        out[tag] = {"vr": dictionary_VR(int(tag, 16)).split(" ")[0]}
    return out


def set_value(attrs: dict[str, Any], tag: str, vr: str, value: object) -> None:
    """Put one single-valued element in `attrs`, or take it out when `value` is None."""
    if value is None:
        attrs.pop(tag, None)
    else:
        attrs[tag] = {"vr": vr, "Value": [value]}


def select(
    attrs: dict[str, Any],
    wanted_tags: frozenset[str],
    *,
    include_all: bool,
    only_requested: bool,
    empty: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    """The answer: every attribute (`includefield=all`), exactly the requested ones with empty
    elements for the unknown (C-FIND), or the wanted ones that have a value (QIDO-RS)."""
    if include_all:
        return {tag: attrs[tag] for tag in sorted(attrs)}
    if only_requested:
        return {tag: attrs.get(tag) or empty[tag] for tag in sorted(wanted_tags) if tag in attrs or tag in empty}
    return {tag: attrs[tag] for tag in sorted(wanted_tags & attrs.keys())}


def without_bulk(dataset: dict[str, Any]) -> dict[str, Any]:
    """The data set without bulk data references, at every depth (QIDO answers carry none)."""
    out: dict[str, Any] = {}
    for tag, element in dataset.items():
        if "BulkDataURI" in element:
            continue
        if element.get("vr") == "SQ" and element.get("Value"):
            element = {**element, "Value": [without_bulk(item) for item in element["Value"]]}
        out[tag] = element
    return out
