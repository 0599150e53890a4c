"""One audit record as a DICOM Audit Message (PS3.15 A.5), the XML an IHE ATNA repository takes.

A city's SIEM reads what every archive, viewer and modality did in one vocabulary: the DICOM
audit message schema (PS3.15 A.5.1, RFC 3881's successor), whose codes come from the DCM code
system (PS3.16 CID 400 Audit Event ID, CID 403 Security Alert Type). `message` builds that XML
from one `audit_records` row; `storage.audit.syslog` carries it, `storage.audit.forward` sends it.

What a record becomes (the first matching rule wins)::

    outcome refused / denied                 110113 Security Alert, E, type 110126 Node
                                             Authentication for "association", else 110132
                                             Use of Restricted Function
    action "emergency", or any record with   110113 Security Alert, E, type 110127 Emergency
      an emergency `reason`                  Override Started; PurposeOfUse ETREAT
    "share", "revoke", "claim"               110113 Security Alert, E, type 110135 Object
                                             Security Attributes Changed (who may see a study)
    "association"                            110114 User Authentication, E, type 110122 Login
    "C-FIND", "worklist"; GET/HEAD of a      110112 Query, E
      search route (the path ends in
      studies, series or instances: QIDO-RS;
      a FHIR search without an id); a FHIR
      `$operation` ($match)
    "C-STORE"; POST of a STOW-RS route       110104 DICOM Instances Transferred, C
    "C-MOVE", "C-GET"                        110104 DICOM Instances Transferred, R
    "import"                                 110107 Import, C
    "export"                                 110106 Export, R
    DELETE; "delete"                         110105 DICOM Study Deleted, D
    "consent", "opt-out", "opt-in", "link",  110110 Patient Record, U
      "unlink"; GET of a FHIR Patient by id  110110 Patient Record, R
    "N-ACTION" (storage commitment)          110103 DICOM Instances Accessed, R (the archive
                                             reads which instances it keeps)
    any other GET/HEAD (WADO-RS, WADO-URI,   110103 DICOM Instances Accessed, R
      metadata, rendered, FHIR read)
    anything else                            110103 DICOM Instances Accessed, with C for
                                             POST, U for PUT/PATCH, E otherwise

Every message also carries the record's own action as an EventTypeCode of the local code system
"PACS" (`csd-code` the action, `originalText` channel and action), so the SIEM keeps the exact
request kind whatever the DCM code says.

EventOutcomeIndicator: "ok" 0 (success); "not-found", "refused", "denied", "limited" 4 (minor
failure: the request was turned away, nothing broke); "failed", "error" and anything unknown 8
(serious failure).
EventOutcomeDescription: the outcome word, the record's `detail` (clipped) and the emergency
reason.

Participants: the requestor (UserID the actor, UserName its organization, NetworkAccessPointID
its address, UserIsRequestor true) and the archive (UserID its AE title, NetworkAccessPointID
its host name, UserIsRequestor false); for transfers, queries and reads each also gets the
RoleIDCode 110153 Source or 110152 Destination. Objects: the patient (type 1, role 1, ID type
RFC-3881 "2" Patient Number) and the study (type 2, role 3, ID type DCM 110180 Study Instance
UID; a cross-organization read adds a ParticipantObjectDetail "OwnerOrganization").

Size: RFC 5425 4.3.1 receivers need only take 8192 octets, so the XML is kept under `LIMIT`: the
detail is clipped first, then left out, then every free text is cut short. Characters XML 1.0
cannot carry (most C0 controls) are dropped and line breaks become spaces: the message stays
one well-formed line, which line-oriented receivers store whole.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

#: the most UTF-8 bytes of one message's XML (RFC 5425 4.3.1's 8192, less the syslog header)
LIMIT = 7680
#: the most UTF-8 bytes of a record's `detail` carried
DETAIL_BYTES = 2048
#: what every free text is cut to when even a message without detail is too long
SHORT_BYTES = 64

XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'

_NOT_XML = re.compile("[^\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_HTTP = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
_SEARCH_ENDS = frozenset({"studies", "series", "instances"})


class Record(Protocol):
    """What `message` reads: an `AuditRecord` row, or any object with these attributes."""

    @property
    def time(self) -> datetime: ...
    @property
    def actor(self) -> str: ...
    @property
    def org(self) -> str | None: ...
    @property
    def source(self) -> str: ...
    @property
    def channel(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def patient(self) -> str | None: ...
    @property
    def study(self) -> str | None: ...
    @property
    def outcome(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def owner_org(self) -> str | None: ...
    @property
    def detail(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Code:
    """A CodedValueType (PS3.15 A.5.1): code, code system and meaning (`originalText`)."""

    code: str
    system: str
    meaning: str


def dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


QUERY = dcm("110112", "Query")
INSTANCES_ACCESSED = dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = dcm("110104", "DICOM Instances Transferred")
STUDY_DELETED = dcm("110105", "DICOM Study Deleted")
EXPORT = dcm("110106", "Export")
IMPORT = dcm("110107", "Import")
PATIENT_RECORD = dcm("110110", "Patient Record")
SECURITY_ALERT = dcm("110113", "Security Alert")
USER_AUTHENTICATION = dcm("110114", "User Authentication")

LOGIN = dcm("110122", "Login")
NODE_AUTHENTICATION = dcm("110126", "Node Authentication")
EMERGENCY_OVERRIDE = dcm("110127", "Emergency Override Started")
RESTRICTED_FUNCTION = dcm("110132", "Use of Restricted Function")
SECURITY_ATTRIBUTES_CHANGED = dcm("110135", "Object Security Attributes Changed")

SOURCE_ROLE = dcm("110153", "Source Role ID")
DESTINATION_ROLE = dcm("110152", "Destination Role ID")

PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
STUDY_INSTANCE_UID = dcm("110180", "Study Instance UID")
#: HL7 v3 ActReason, the purpose of use of an emergency access
EMERGENCY_TREATMENT = Code("ETREAT", "2.16.840.1.113883.5.8", "Emergency Treatment")

_OUTCOMES = {"ok": "0", "not-found": "4", "refused": "4", "denied": "4", "limited": "4", "failed": "8"}
_SERIOUS_FAILURE = "8"


@dataclass(frozen=True, slots=True)
class Event:
    """How one record is classified: EventID, EventActionCode, extra EventTypeCodes, and the
    role the requestor played in a transfer (None: none applies)."""

    id: Code
    action: str
    types: tuple[Code, ...] = ()
    requestor_role: Code | None = None


def classify(record: Record) -> Event:
    """The DICOM event a record is (the table of the module docstring)."""
    action = record.action.strip()
    verb, _, path = action.partition(" ")
    name = action.lower()
    if record.outcome in ("refused", "denied"):
        return Event(SECURITY_ALERT, "E", (NODE_AUTHENTICATION if name == "association" else RESTRICTED_FUNCTION,))
    if name == "emergency" or record.reason:
        return Event(SECURITY_ALERT, "E", (EMERGENCY_OVERRIDE,))
    if name in ("share", "revoke", "claim"):
        return Event(SECURITY_ALERT, "E", (SECURITY_ATTRIBUTES_CHANGED,))
    if name == "association":
        return Event(USER_AUTHENTICATION, "E", (LOGIN,))
    if verb in _HTTP:
        return _http(verb, path, record.channel)
    return _named(name)


def _named(name: str) -> Event:
    """A DIMSE service or a console operation."""
    if name in ("c-find", "worklist"):
        return Event(QUERY, "E", requestor_role=SOURCE_ROLE)
    if name == "c-store":
        return Event(INSTANCES_TRANSFERRED, "C", requestor_role=SOURCE_ROLE)
    if name in ("c-move", "c-get"):
        return Event(INSTANCES_TRANSFERRED, "R", requestor_role=DESTINATION_ROLE)
    if name == "import":
        return Event(IMPORT, "C")
    if name == "export":
        return Event(EXPORT, "R")
    if name == "delete":
        return Event(STUDY_DELETED, "D")
    if name in ("consent", "opt-out", "opt-in", "link", "unlink"):
        return Event(PATIENT_RECORD, "U")
    if name == "n-action":
        return Event(INSTANCES_ACCESSED, "R", requestor_role=DESTINATION_ROLE)
    return Event(INSTANCES_ACCESSED, "E")


def _http(verb: str, path: str, channel: str) -> Event:
    """A DICOMweb, WADO-URI, FHIR or API route, as recorded: `GET /dicomweb/studies/{study}`."""
    route = path.split("?", 1)[0].rstrip("/")
    segments = [s for s in route.split("/") if s]
    last = segments[-1] if segments else ""
    fhir = channel == "fhir" or "fhir" in segments
    if verb == "DELETE":
        return Event(STUDY_DELETED, "D")
    if last.startswith("$"):  # a FHIR operation ($match): a search, whatever its verb
        return Event(QUERY, "E", requestor_role=SOURCE_ROLE)
    if verb in ("GET", "HEAD"):
        by_id = last.startswith("{") or (fhir and len(segments) >= 2 and segments[-2][:1].isupper())
        if fhir and not by_id:
            return Event(QUERY, "E", requestor_role=SOURCE_ROLE)
        if last in _SEARCH_ENDS:
            return Event(QUERY, "E", requestor_role=SOURCE_ROLE)
        if fhir and "Patient" in segments:
            return Event(PATIENT_RECORD, "R", requestor_role=DESTINATION_ROLE)
        return Event(INSTANCES_ACCESSED, "R", requestor_role=DESTINATION_ROLE)
    if verb == "POST" and not fhir and (last == "studies" or "studies" in segments[-2:-1]):
        return Event(INSTANCES_TRANSFERRED, "C", requestor_role=SOURCE_ROLE)  # STOW-RS
    return Event(INSTANCES_ACCESSED, "C" if verb == "POST" else "U" if verb in ("PUT", "PATCH") else "E")


def message(record: Record, *, ae_title: str = "MUNIPACS", host: str | None = None) -> bytes:
    """The DICOM Audit Message of one record: UTF-8 XML with its declaration, under `LIMIT` bytes.

    Parameters
    ----------
    record
        An `AuditRecord` row, or any object with its attributes (`Record`).
    ae_title
        The archive's AE title: its AuditSourceID and the UserID of its participant.
    host
        The archive's host name (its participant's NetworkAccessPointID); this host's by default.
    """
    host = host or socket.gethostname()
    xml = b""
    for detail_bytes, clip in ((DETAIL_BYTES, None), (0, None), (0, SHORT_BYTES)):
        root = _build(record, ae_title, host, detail_bytes, clip)
        xml = XML_DECLARATION + ET.tostring(root, encoding="utf-8", xml_declaration=False)
        if len(xml) <= LIMIT:
            break
    return xml


def _build(record: Record, ae_title: str, host: str, detail_bytes: int, clip: int | None) -> ET.Element:
    def text(value: str | None, limit: int = 1024) -> str:
        return _clean(value or "", limit if clip is None else min(limit, clip))

    event = classify(record)
    root = ET.Element("AuditMessage")

    ident = ET.SubElement(
        root,
        "EventIdentification",
        EventActionCode=event.action,
        EventDateTime=_datetime(record.time),
        EventOutcomeIndicator=_OUTCOMES.get(record.outcome, _SERIOUS_FAILURE),
    )
    _code(ident, "EventID", event.id)
    for code in event.types:
        _code(ident, "EventTypeCode", code)
    channel, action = text(record.channel, 16), text(record.action, 128)
    if action:
        _code(ident, "EventTypeCode", Code(action, "PACS", f"{channel} {action}".strip()))
    outcome = [text(record.outcome, 32)]
    if detail_bytes and record.detail:
        outcome.append(text(record.detail, detail_bytes))
    if record.reason:
        outcome.append("emergency access: " + text(record.reason, 256))
    ET.SubElement(ident, "EventOutcomeDescription").text = "; ".join(o for o in outcome if o)
    if record.reason:
        _code(ident, "PurposeOfUse", EMERGENCY_TREATMENT)

    requestor = ET.SubElement(root, "ActiveParticipant", UserID=text(record.actor, 256) or "unknown")
    if record.org:
        requestor.set("UserName", text(record.org, 64))
    requestor.set("UserIsRequestor", "true")
    if record.source:
        source = text(record.source, 64)
        requestor.set("NetworkAccessPointID", source)
        requestor.set("NetworkAccessPointTypeCode", "2" if _is_ip(source) else "1")
    archive = ET.SubElement(
        root,
        "ActiveParticipant",
        UserID=text(ae_title, 64),
        UserIsRequestor="false",
        NetworkAccessPointID=text(host, 255),
        NetworkAccessPointTypeCode="2" if _is_ip(host) else "1",
    )
    if event.requestor_role is not None:
        _code(requestor, "RoleIDCode", event.requestor_role)
        _code(archive, "RoleIDCode", DESTINATION_ROLE if event.requestor_role == SOURCE_ROLE else SOURCE_ROLE)

    ET.SubElement(root, "AuditSourceIdentification", AuditSourceID=text(ae_title, 64))

    if record.patient:
        patient = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            ParticipantObjectID=text(record.patient, 64),
            ParticipantObjectTypeCode="1",
            ParticipantObjectTypeCodeRole="1",
        )
        _code(patient, "ParticipantObjectIDTypeCode", PATIENT_NUMBER)
    if record.study:
        study = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            ParticipantObjectID=text(record.study, 64),
            ParticipantObjectTypeCode="2",
            ParticipantObjectTypeCodeRole="3",
        )
        _code(study, "ParticipantObjectIDTypeCode", STUDY_INSTANCE_UID)
        if record.owner_org:
            value = base64.b64encode(text(record.owner_org, 64).encode()).decode("ascii")
            ET.SubElement(study, "ParticipantObjectDetail", type="OwnerOrganization", value=value)
    return root


def _code(parent: ET.Element, tag: str, code: Code) -> None:
    ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.system, "originalText": code.meaning})


def _clean(value: str, limit: int) -> str:
    """`value` as one line of XML-safe text of at most `limit` UTF-8 bytes (an ellipsis if cut)."""
    value = _NOT_XML.sub(lambda m: " " if m.group() in "\t\n\r" else "", value)
    raw = value.encode("utf-8")
    if len(raw) <= limit:
        return value
    return raw[: max(0, limit - 3)].decode("utf-8", "ignore") + "…"


def _datetime(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds (xsd:dateTime); a naive time (SQLite's) is UTC."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
