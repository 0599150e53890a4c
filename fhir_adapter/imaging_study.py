"""ImagingStudy: a study of the archive, with its series and instances, read and searched.

Built from the index rows QIDO-RS answers from (`storage.query.imaging`), under the same
visibility: a study the caller may not see is absent. Its id is the Study Instance UID (a valid
FHIR id: digits and dots, at most 64). Every study's `endpoint` is the archive's DICOMweb
WADO-RS root (`Endpoint/dicomweb`), so a client goes from FHIR to the pixels. Searching by
`patient` matches the studies of every identity linked to that patient which the caller may
see (`storage.query.linked`), as QIDO-RS does for a PatientID with its issuer.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

from fhir.resources.R4B.imagingstudy import ImagingStudy

from fhir_adapter.meta import fhir_instant, versioned
from fhir_adapter.outcome import FhirError
from fhir_adapter.params import RESULT_PARAMS, date_range, instant, local_id, token, values
from storage.dicom.uids import is_uid
from storage.query.imaging import StudyPage

DCM = "http://dicom.nema.org/resources/ontology/DCM"
UID_SYSTEM = "urn:dicom:uid"
ACCESSION_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
ENDPOINT_ID = "dicomweb"

#: the search parameters of ImagingStudy (the CapabilityStatement lists these)
SEARCH_PARAMS: dict[str, tuple[str, str]] = {
    "_id": ("token", "the Study Instance UID"),
    "patient": ("reference", "Patient/<id>: the studies of that patient and of its linked identities"),
    "subject": ("reference", "the same as patient"),
    "identifier": ("token", "urn:dicom:uid|urn:oid:<Study Instance UID>, urn:oid:<UID>, or an accession number"),
    "started": ("date", "the study date, with eq, lt, le, gt, ge prefixes"),
    "modality": ("token", "a modality in the study (DCM codes: CT, MR...)"),
    "status": ("token", "available (every stored study is)"),
    "endpoint": ("reference", "Endpoint/dicomweb (every study's)"),
    "_lastUpdated": ("date", "when the study last received an instance, with prefixes"),
}
#: `_summary` values served: the series without instances, or the count alone
SUMMARIES = frozenset({"true", "false", "count"})
#: result parameters of its own (FHIR R4 3.1.1.5), besides those of every search
OWN_RESULT_PARAMS = frozenset({"_sort", "_include", "_summary"})


def resource(row: Any, page: StudyPage) -> dict[str, Any]:
    """The ImagingStudy of a study row of `page` (`storage.query.imaging`), validated by
    fhir.resources: what a read answers."""
    return ImagingStudy.model_validate(data(row, page)).model_dump(mode="json", exclude_none=True)


#: FHIR R4 3.1.1.5.8: a resource summarized (`_summary=true`) says so in a tag
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


def data(row: Any, page: StudyPage, *, summary: bool = False) -> dict[str, Any]:
    """The same ImagingStudy, built without validation: what a search lists.

    Validating a 100-study page (and again inside its Bundle) cost 92-95 % of the search's time
    at 1,500 instances (benchmarks/README.md, [8/10]); what is built here is what `resource`
    answers, field for field, which `tests/gateway/test_fhir.py` checks for every study.
    `summary`: the summary elements only (`_summary=true`): the series without their instances,
    tagged SUBSETTED (a page holds the instances of a hundred studies otherwise)."""
    identifiers: list[dict[str, Any]] = [{"system": UID_SYSTEM, "value": f"urn:oid:{row.study_uid}"}]
    if row.accession_number:
        identifiers.append({"type": ACCESSION_TYPE, "value": row.accession_number})
    study: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": row.study_uid,
        "meta": {"lastUpdated": fhir_instant(row.updated_at), **({"tag": [SUBSETTED]} if summary else {})},
        "identifier": identifiers,
        "status": "available",
        "subject": {"reference": f"Patient/{row.identity_id}"},
        "endpoint": [{"reference": f"Endpoint/{ENDPOINT_ID}"}],
        "numberOfSeries": row.num_series,
        "numberOfInstances": row.num_instances,
    }
    modalities = [m for m in row.modalities.split("\\") if m]
    if modalities:
        study["modality"] = [{"system": DCM, "code": m} for m in modalities]
    started = _date(row.study_date)
    if started:
        study["started"] = started
    if row.description:
        study["description"] = row.description
    series = [_series(s, page.instances.get(s.id, [])) for s in page.series.get(row.id, [])]
    if series:
        study["series"] = series
    return versioned(study)


def _series(row: Any, instances: list[Any]) -> dict[str, Any]:
    series: dict[str, Any] = {
        "uid": row.series_uid,
        "modality": {"system": DCM, "code": row.modality or "OT"},
        "numberOfInstances": row.num_instances,
    }
    if row.series_number is not None and row.series_number >= 0:
        series["number"] = row.series_number
    if row.description:
        series["description"] = row.description
    if row.body_part:
        series["bodySite"] = {"display": row.body_part}
    if instances:
        series["instance"] = [_instance(i) for i in instances]
    return series


def _instance(row: Any) -> dict[str, Any]:
    instance: dict[str, Any] = {
        "uid": row.sop_uid,
        "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{row.sop_class_uid}"},
    }
    if row.instance_number is not None and row.instance_number >= 0:
        instance["number"] = row.instance_number
    return instance


def keys_of(query: Mapping[str, list[str]]) -> tuple[dict[str, str], tuple[tuple[str, datetime], ...]]:
    """The DICOM matching keys (tag -> value, as QIDO-RS takes them) and the `_lastUpdated`
    bounds of an ImagingStudy search; `patient` is resolved by the caller (`patient_of`).

    Raises
    ------
    FhirError
        400: an unknown parameter, or a value that cannot be read (the diagnostics name it).
    """
    for name in query:
        if name not in SEARCH_PARAMS and name not in OWN_RESULT_PARAMS and name not in RESULT_PARAMS:
            raise FhirError(400, f"unknown search parameter for ImagingStudy: {name}")
    keys: dict[str, str] = {}
    uids = [*values("_id", query.get("_id", []))]
    accessions: list[str] = []
    for value in values("identifier", query.get("identifier", [])):
        system, code = token(value)
        code = code or ""
        if system == UID_SYSTEM or (system is None and code.startswith("urn:oid:")):
            uids.append(code.removeprefix("urn:oid:"))
        else:
            accessions.append(code)
    if uids:
        if not all(is_uid(u) for u in uids):
            keys["0020000D"] = "0.0"  # no study has it: matches nothing, as an unknown id should
        else:
            keys["0020000D"] = "\\".join(uids)
    if accessions:
        if len(accessions) > 1:
            raise FhirError(400, "identifier: one accession number at a time")
        keys["00080050"] = accessions[0].replace("*", "").replace("?", "")
    started = values("started", query.get("started", []))
    if started:
        keys["00080020"] = _date_key(started)
    modalities = [token(v)[1] or "" for v in values("modality", query.get("modality", []))]
    if modalities:
        keys["00080061"] = "\\".join(m for m in modalities if m.isalnum()) or "-"
    for name, accepted in (("status", {"available"}), ("endpoint", {"Endpoint/dicomweb", "dicomweb"})):
        given = values(name, query.get(name, []))
        if given and not accepted & {token(v)[1] or "" for v in given}:
            keys["0020000D"] = "0.0"  # asks for what no study here is
    updated = tuple(instant("_lastUpdated", v) for v in values("_lastUpdated", query.get("_lastUpdated", [])))
    sort = values("_sort", query.get("_sort", []))
    if sort and sort != ["-started"]:
        raise FhirError(400, "_sort: only -started (newest first) is supported")
    summaries = values("_summary", query.get("_summary", []))
    if any(v not in SUMMARIES for v in summaries):
        raise FhirError(400, "_summary: true, false or count")
    includes = values("_include", query.get("_include", []))
    if any(i != "ImagingStudy:patient" for i in includes):
        raise FhirError(400, "_include: only ImagingStudy:patient is supported")
    return keys, updated


def patient_of(query: Mapping[str, list[str]]) -> int | None:
    """The Patient id a search's `patient` or `subject` names (-1: one this server never gives)."""
    given = [*values("patient", query.get("patient", [])), *values("subject", query.get("subject", []))]
    if not given:
        return None
    if len(set(given)) > 1:
        raise FhirError(400, "patient: one patient at a time")
    reference = given[0].removeprefix("Patient/")
    return local_id(reference) or -1


def _date_key(given: list[str]) -> str:
    """The StudyDate range of `started` values (each must hold: their intersection)."""
    low, high = "00010101", "99991231"
    for value in given:
        found = date_range("started", value)
        match found.op:
            case "eq":
                low, high = max(low, found.low), min(high, found.high)
            case "ge":
                low = max(low, found.low)
            case "gt":
                low = max(low, _shift(found.high, 1))
            case "le":
                high = min(high, found.high)
            case "lt":
                high = min(high, _shift(found.low, -1))
            case _:
                raise FhirError(400, f"started: the prefix {found.op} is not supported")
    if low > high:
        return "99991231-00010101"  # an empty range: no study
    return f"{low}-{high}"


def _shift(day: str, days: int) -> str:
    moved = date(int(day[:4]), int(day[4:6]), int(day[6:])) + timedelta(days=days)
    return f"{moved.year:04d}{moved.month:02d}{moved.day:02d}"


def _date(study_date: str) -> str | None:
    if len(study_date) != 8 or not study_date.isdigit():
        return None
    try:
        return date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:])).isoformat()
    except ValueError:
        return None
