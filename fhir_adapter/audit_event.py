"""AuditEvent: the audit trail for the data-protection officer's systems (admins only).

Each record of `storage.audit` (the same trail `/api/audit` and the ATNA forwarder read) as an
R4 AuditEvent shaped after IHE BALP where the record allows: the DICOM event of the record
(`storage.audit.atna.classify`, as the ATNA messages carry it) as `type` and `subtype`, the
action code, the outcome (0, 4, 8), the requestor agent (the token's subject or the calling AE,
its organization, its address), the patient and the study as entities, an emergency access's
reason as the purpose of use (ETREAT). Newest first, paged on the record id (`_cursor`, `_before`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, time
from typing import Any

from fhir.resources.R4B.auditevent import AuditEvent

from fhir_adapter.meta import fhir_instant, versioned
from fhir_adapter.outcome import FhirError
from fhir_adapter.params import RESULT_PARAMS, Cursors, count, date_range, local_id, values
from storage.audit import atna
from storage.audit.records import Filters

SEARCH_PARAMS: dict[str, tuple[str, str]] = {
    "patient": ("string", "the patient ID as the record names it"),
    "agent": ("string", "who asked: a token's subject or a calling AE title"),
    "entity-identifier": ("token", "a Study Instance UID (urn:dicom:uid|urn:oid:<uid> or the UID)"),
    "date": ("date", "when, with ge, gt, le, lt prefixes"),
}
DCM = "http://dicom.nema.org/resources/ontology/DCM"
_SYSTEMS = {"DCM": DCM, "RFC-3881": "http://terminology.hl7.org/CodeSystem/audit-entity-type"}
_OUTCOMES = {"ok": "0", "not-found": "4", "refused": "4", "denied": "4", "limited": "4", "failed": "8", "error": "8"}
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
ENTITY_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"


def resource(record: Mapping[str, Any]) -> dict[str, Any]:
    """The AuditEvent of one audit record (a row of `storage.audit.records.search`), validated."""
    event = atna.classify(_Row(record))
    agent: dict[str, Any] = {
        "who": {"identifier": {"value": record["actor"] or "anonymous"}},
        "requestor": True,
        "network": {"address": record["source"] or "unknown", "type": "2"},
    }
    if record["org"]:
        agent["name"] = f"{record['actor']} ({record['org']})"
    if event.requestor_role is not None:
        agent["type"] = {"coding": [_coding(event.requestor_role)]}
    data: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(record["id"]),
        "type": _coding(event.id),
        "action": event.action,
        "recorded": fhir_instant(record["time"]),
        "outcome": _OUTCOMES.get(record["outcome"], "8"),
        "outcomeDesc": f"{record['outcome']}: {record['action']}; {record['detail']}"[:1000],
        "agent": [agent],
        "source": {
            "site": record["channel"],
            "observer": {"display": "Municipal PACS"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}],
        },
    }
    if event.types:
        data["subtype"] = [_coding(t) for t in event.types]
    if record["reason"]:
        data["purposeOfEvent"] = [{"coding": [_coding(atna.EMERGENCY_TREATMENT)], "text": record["reason"]}]
    entities = []
    if record["patient"]:
        entities.append(
            {
                "what": {"identifier": {"value": record["patient"]}},
                "type": {"system": ENTITY_TYPE, "code": "1"},
                "role": {"system": ENTITY_ROLE, "code": "1"},
            }
        )
    if record["study"]:
        entity: dict[str, Any] = {
            "what": {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{record['study']}"}},
            "type": {"system": ENTITY_TYPE, "code": "2"},
            "role": {"system": ENTITY_ROLE, "code": "3"},
        }
        if record["owner_org"]:
            entity["description"] = f"a study of {record['owner_org']}"
        entities.append(entity)
    if entities:
        data["entity"] = entities
    return AuditEvent.model_validate(versioned(data)).model_dump(mode="json", exclude_none=True)


def filters_of(query: Mapping[str, list[str]]) -> Filters:
    """The audit search of an AuditEvent search.

    Raises
    ------
    FhirError
        400: an unknown parameter, or a value that cannot be read.
    """
    for name in query:
        if name not in SEARCH_PARAMS and name not in RESULT_PARAMS:
            raise FhirError(400, f"unknown search parameter for AuditEvent: {name}")
    since: datetime | None = None
    until: datetime | None = None
    for value in values("date", query.get("date", [])):
        found = date_range("date", value)
        low, high = _day(found.low), _day(found.high, end=True)
        if found.op in ("ge", "gt"):
            since = high if found.op == "gt" else low
        elif found.op in ("le", "lt"):
            until = low if found.op == "lt" else high
        elif found.op == "eq":
            since, until = low, high
        else:
            raise FhirError(400, f"date: the prefix {found.op} is not supported")
    study = _last(query, "entity-identifier")
    if study is not None:
        study = study.split("|", 1)[-1].removeprefix("urn:oid:")
    at = Cursors.of(query)
    before, after = (local_id(c) if c is not None else None for c in (at.after, at.before))
    if (at.after is not None and before is None) or (at.before is not None and after is None):
        raise FhirError(400, "_cursor: not a cursor this server gave")
    return Filters(
        patient=_last(query, "patient"),
        study=study,
        actor=_last(query, "agent"),
        since=since,
        until=until,
        before=before,  # newest first: the next page holds older records, the previous newer ones
        after=after,
        limit=count(query.get("_count", [])),
    )


def _last(query: Mapping[str, list[str]], name: str) -> str | None:
    given = values(name, query.get(name, []))
    return given[-1] if given else None


class _Row:
    """A record mapping read as the attributes `atna.classify` reads."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return self._record[name]


def _coding(code: atna.Code) -> dict[str, str]:
    return {"system": _SYSTEMS.get(code.system, code.system), "code": code.code, "display": code.meaning}


def _day(day: str, *, end: bool = False) -> datetime:
    moment = datetime(int(day[:4]), int(day[4:6]), int(day[6:]), tzinfo=UTC)
    if end:
        return datetime.combine(moment.date(), time.max, tzinfo=UTC)
    return moment
