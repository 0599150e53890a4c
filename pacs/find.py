"""C-FIND SCP (PS3.4 C.4.1): Patient Root and Study Root queries; the Modality Worklist is routed on.

The handler only translates. The identifier becomes a `storage.query.search.Query` (`parse`), every
match is read by `storage.query.search.search_all` from the index (one statement fetched in batches,
never a blob), and each becomes a pending response with exactly the requested keys, plus
QueryRetrieveLevel and RetrieveAETitle (`answer`). Matching is QIDO-RS's: same keys, same rules.

Unique keys above the query level must be single UIDs when present (PS3.4 C.4.1.2.1); when they
are absent the search spans every visible study, as relational queries do, since most SCUs
send series and instance queries without them. The requester's Specific Character Set decodes
its values (refused if unknown or if a value does not decode in it); answers are in UTF-8
(ISO_IR 192) as soon as one text value is not ASCII.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import orjson
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from pacs import worklist
from pacs.policy import audit, context_for, keys_named, limit
from pacs.status import failure
from pacs.wire import identifier
from pacs.wire.pacing import PACE_EVERY, keep_pace
from storage.access.context import Context
from storage.access.policy import require_read
from storage.archive import Archive
from storage.dicom.charset import TEXT_VRS, check_decodes, python_encodings
from storage.dicom.dicomjson import element_vr
from storage.errors import OutOfResources, StorageError
from storage.logs import event as log_event
from storage.outages import outage
from storage.query.keys import IMAGE, PATIENT, SERIES, STUDY, keyword
from storage.query.matching import InvalidQuery
from storage.query.search import Query, search_all

log = logging.getLogger(__name__)

PENDING, PENDING_WARNING, CANCEL, SUCCESS = 0xFF00, 0xFF01, 0xFE00, 0x0000
#: information model -> its levels, top down (PS3.4 Tables C.6.1-1 and C.6.2-1)
MODELS = {
    PatientRootQueryRetrieveInformationModelFind: ("PATIENT", (PATIENT, STUDY, SERIES, IMAGE)),
    StudyRootQueryRetrieveInformationModelFind: ("STUDY", (STUDY, SERIES, IMAGE)),
}
#: the unique key of each level (PS3.4 C.6.1.1)
UNIQUE = {PATIENT: "00100020", STUDY: "0020000D", SERIES: "0020000E", IMAGE: "00080018"}
#: identifier elements that are not keys: the level, the character set, and what every answer has
_NOT_KEYS = frozenset({Tag(0x00080005), Tag(0x00080052), Tag(0x00080054)})


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed C-FIND identifier: the search, and what its answers must echo."""

    query: Query
    charset: Any = None  # the requester's (0008,0005), echoed on ASCII answers
    sequences: dict[str, frozenset[str]] = field(default_factory=dict)  # sequence -> its item's keys


@dataclass
class _Outcome:
    """What the one log line of a C-FIND says."""

    level: str = ""
    matches: int = 0
    by_pydicom: int = 0  # answers `pacs.wire.identifier` declined (sequences, a non-UTF-8 repertoire...)
    status: int = SUCCESS
    detail: str | None = None  # why it failed, whole (the Error Comment may be cut to 64 characters)


def handle(event: Event, archive: Archive) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """Answer one C-FIND request.

    Yields
    ------
    (status, identifier)
        0xFF00 (0xFF01 when a key was matched universally) with each match, 0xFE00 on
        C-CANCEL, or a failure status dataset with an Error Comment: 0x0124 for a calling AE
        that is not registered, 0xA900 for an identifier that cannot be searched.
    """
    sop_class = event.request.AffectedSOPClassUID
    if sop_class == ModalityWorklistInformationFind:
        yield from worklist.find(event, archive)
        return
    started, ctx = time.perf_counter(), context_for(event.assoc, archive)
    model, levels = MODELS[sop_class]
    outcome = _Outcome()
    try:
        require_read(ctx, "C-FIND")
        limit(ctx, archive, "C-FIND")
        request = parse(event.identifier, levels)
        outcome.level = request.query.level
        with archive.db.read() as session:
            found = search_all(request.query, ctx, session=session)
            patient, study = keys_named(event.identifier)
            audit(ctx, "C-FIND", patient=patient, study=study, detail=f"{model} {outcome.level}")
            pending = PENDING_WARNING if found.ignored else PENDING
            responder = _Responder(event)
            for match in found.matches:
                if outcome.matches % PACE_EVERY == 0:
                    keep_pace(event.assoc)
                if event.is_cancelled:
                    outcome.status = CANCEL
                    yield CANCEL, None
                    return
                elements = answer(match, request, archive.settings.ae_title)
                if not responder.send(pending, elements):
                    outcome.by_pydicom += 1
                    yield pending, Dataset.from_json(elements)
                outcome.matches += 1
    except StorageError as exc:
        outcome.status, outcome.detail = exc.status, exc.detail
        yield failure(exc), None
    except Exception as exc:
        backend = outage(exc)
        if backend is None:
            raise  # pynetdicom's guard answers 0xC311 and logs it: a bug to see
        unavailable = OutOfResources(f"the {backend} is unavailable; ask again later")
        outcome.status, outcome.detail = unavailable.status, unavailable.detail
        yield failure(unavailable), None
    finally:
        _log(ctx, model, outcome, started)


def parse(identifier: Dataset, levels: tuple[str, ...]) -> Request:
    """The C-FIND identifier as a query (PS3.4 C.4.1.1.3.1): empty keys return, others match.

    Raises
    ------
    InvalidQuery
        QueryRetrieveLevel is missing or not a level of the model, or a unique key above the
        level is not a single UID.
    BadCharset
        The Specific Character Set is unknown, or a text value does not decode in it.
    """
    charset = _checked_charset(identifier)
    level = str(identifier.get("QueryRetrieveLevel") or "").strip()
    if level not in levels:
        # the Error Comment is an LO: at most 64 characters
        what = f"{level!r} is not in {'/'.join(levels)}" if level else "(0008,0052) is missing"
        raise InvalidQuery(f"QueryRetrieveLevel {what}")
    keys: dict[str, str] = {}
    include: set[str] = set()
    sequences: dict[str, frozenset[str]] = {}
    for elem in identifier:  # decoded in the identifier's own character set
        if elem.tag.group < 0x0008 or elem.tag in _NOT_KEYS or elem.tag.is_private:
            continue
        tag = f"{elem.tag:08X}"
        if elem.VR == "SQ":
            include.add(tag)
            sequences[tag] = _sequence_keys(elem, tag, keys)
        else:
            keys[tag] = _text(elem)
    for above in levels[: levels.index(level)]:
        _single_uid(keys, UNIQUE[above])
    query = Query(level, keys, frozenset(include), only_requested=True)
    return Request(query, charset, sequences)


def answer(match: dict[str, Any], request: Request, ae_title: str) -> dict[str, Any]:
    """One pending identifier (DICOM JSON): the requested keys of a match, its level and where
    to retrieve it."""
    for tag, sub_keys in request.sequences.items():
        if sub_keys and match.get(tag, {}).get("Value"):  # only the item keys the request named
            items = [{k: v for k, v in item.items() if k in sub_keys} for item in match[tag]["Value"]]
            match[tag] = {"vr": "SQ", "Value": items}
    charset: Any = "ISO_IR 192" if not orjson.dumps(match).isascii() else request.charset
    match["00080052"] = {"vr": "CS", "Value": [request.query.level]}
    match["00080054"] = {"vr": "AE", "Value": [ae_title]}
    if charset:
        values = [charset] if isinstance(charset, str) else [str(c) for c in charset]
        match["00080005"] = {"vr": "CS", "Value": values}
    return match


class _Responder:
    """Sends pending responses itself, the identifier written from JSON by `pacs.wire.identifier`.

    Yielded to pynetdicom, each answer would go through `Dataset.from_json` and pydicom's writer,
    most of a C-FIND's time. Sent here through the association's `send_msg` (`pacs.wire.direct_send`
    when installed), in order with what pynetdicom sends, which then only adds the final status.
    """

    def __init__(self, event: Event) -> None:
        self.assoc = event.assoc
        context = event.context
        syntax = context.transfer_syntax  # a PresentationContextTuple: one UID
        self.implicit = syntax == ImplicitVRLittleEndian
        self.writable = syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
        self.context_id = int(context.context_id or 0)
        self.response = C_FIND()
        self.response.MessageIDBeingRespondedTo = event.request.MessageID
        self.response.AffectedSOPClassUID = event.request.AffectedSOPClassUID

    def send(self, status: int, elements: dict[str, Any]) -> bool:
        """Send one pending response; False if `pacs.wire.identifier` cannot write it (yield it instead)."""
        raw = identifier.encode(elements, implicit=self.implicit) if self.writable else None
        if raw is None:
            return False
        self.response.Status = status
        self.response.Identifier = BytesIO(raw)
        self.assoc.dimse.send_msg(self.response, self.context_id)
        return True


def _checked_charset(identifier: Dataset) -> Any:
    """Refuse an unknown character set, or text bytes that do not decode strictly in it."""
    raw = identifier.get_item(0x00080005)
    charset = identifier.SpecificCharacterSet if raw is not None else None
    encodings = python_encodings(charset)
    for elem in identifier.elements():
        value = elem.value
        if isinstance(value, bytes) and value and element_vr(elem) in TEXT_VRS:
            check_decodes(value, encodings, keyword(f"{elem.tag:08X}"))
    return charset


def _text(elem: DataElement) -> str:
    """A key's value as sent, multiple values joined by backslashes (as matching expects)."""
    value = elem.value
    if value is None or isinstance(value, bytes | bytearray):
        return "" if not value else value.decode("ascii", "replace")
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join("" if v is None else str(v) for v in value)
    return str(value)


def _sequence_keys(elem: DataElement, tag: str, keys: dict[str, str]) -> frozenset[str]:
    """The item keys of a sequence key (PS3.4 C.2.2.2.6), for the answer.

    A non-empty item key becomes a ``sequence.attribute`` key, the form QIDO-RS uses, which the
    search matches in the stored DICOM JSON where the level keeps that sequence (any item
    matching all its keys), and otherwise reports as matched universally (0xFF01). Nested
    sequences inside the item are return keys only.
    """
    if not elem.value:
        return frozenset()
    item = elem.value[0]
    for sub in item:
        value = "" if sub.VR == "SQ" else _text(sub)
        if value.strip(" *"):
            keys[f"{tag}.{sub.tag:08X}"] = value
    return frozenset(f"{sub.tag:08X}" for sub in item)


def _single_uid(keys: dict[str, str], tag: str) -> None:
    value = keys.get(tag, "").strip(" \x00")
    if tag == UNIQUE[PATIENT] or not value:
        return  # PatientID is matched like any key; an absent UID searches relationally
    if len(re.split(r"[\\,]", value)) > 1:
        raise InvalidQuery(f"{keyword(tag)} above the level must be a single UID")  # PS3.4 C.4.1.2.1


def _log(ctx: Context, model: str, outcome: _Outcome, started: float) -> None:
    status: int | str = outcome.status
    raised = sys.exc_info()[0]
    if raised is GeneratorExit and status == SUCCESS:
        status = "aborted"  # closed before its end: the association went away while answering
    elif raised is not None and raised is not GeneratorExit:
        status = 0xC311  # pynetdicom answers a handler crash with it
    log_event(
        log,
        "dimse.find",
        calling_ae=ctx.principal.sub,
        model=model,
        query_level=outcome.level,  # `level` is the log level of storage.logs.event
        matches=outcome.matches,
        by_pydicom=outcome.by_pydicom,
        status=status if isinstance(status, str) else f"0x{status:04X}",
        cancelled=status == CANCEL,
        detail=outcome.detail,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
