"""`pacs.wire.command_set` writes the same bytes as pynetdicom's own encoding, or declines.

The reference is pynetdicom itself: `DIMSEMessage.primitive_to_message` then the implicit VR
little endian encoding it sends (`pynetdicom.dsutils.encode`).
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pydicom.tag import Tag
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE, N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import decode, encode

from pacs.wire import command_set
from pacs.wire.direct_send import StoreRequest

CT = "1.2.840.10008.5.1.4.1.1.2"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def reference(primitive: Any) -> tuple[str, bytes]:
    table = _RQ_TO_MESSAGE if primitive.MessageIDBeingRespondedTo is None else _RSP_TO_MESSAGE
    message = table[primitive.__class__]()
    message.primitive_to_message(primitive)
    raw = encode(message.command_set, True, True)
    assert raw is not None
    return message.__class__.__name__.replace("_", "-"), raw


def make(cls: type, **values: Any) -> Any:
    primitive = cls()
    for name, value in values.items():
        setattr(primitive, name, value)
    return primitive


CASES = {
    "store request": make(C_STORE, MessageID=7, AffectedSOPClassUID=CT, AffectedSOPInstanceUID="1.2.3.4.5", Priority=2,
                          _dataset_path=("/x", 132)),
    "store request, odd UID, move originator": make(
        C_STORE, MessageID=65535, AffectedSOPClassUID=CT, AffectedSOPInstanceUID="1.2.3.4", Priority=0,
        MoveOriginatorApplicationEntityTitle="WS1", MoveOriginatorMessageID=3, _dataset_path=("/x", 132)),
    "store request, data set in memory": make(
        C_STORE, MessageID=1, AffectedSOPClassUID=CT, AffectedSOPInstanceUID="1.2.3", Priority=1,
        DataSet=BytesIO(b"x")),
    "store response": make(C_STORE, MessageIDBeingRespondedTo=7, AffectedSOPClassUID=CT,
                           AffectedSOPInstanceUID="1.2.3.4", Status=0),
    "store failure with comment and offending elements": make(
        C_STORE, MessageIDBeingRespondedTo=7, AffectedSOPClassUID=CT, AffectedSOPInstanceUID="1.2.3.4", Status=0xA900,
        ErrorComment="Invalid UID in (0020,000D)", OffendingElement=[Tag(0x00080018), Tag(0x0020000D)]),
    "find pending with identifier": make(C_FIND, MessageIDBeingRespondedTo=1, AffectedSOPClassUID=FIND,
                                         Status=0xFF00, Identifier=BytesIO(b"abc")),
    "find success": make(C_FIND, MessageIDBeingRespondedTo=1, AffectedSOPClassUID=FIND, Status=0),
    "get pending counts": make(
        C_GET, MessageIDBeingRespondedTo=1, AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.3", Status=0xFF00,
        NumberOfRemainingSuboperations=499, NumberOfCompletedSuboperations=1, NumberOfFailedSuboperations=0,
        NumberOfWarningSuboperations=0),
    "move warning with failed list": make(
        C_MOVE, MessageIDBeingRespondedTo=1, AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.2", Status=0xB000,
        NumberOfCompletedSuboperations=1, NumberOfFailedSuboperations=2, NumberOfWarningSuboperations=0,
        Identifier=BytesIO(b"ab")),
    "move refused": make(C_MOVE, MessageIDBeingRespondedTo=3, AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.2",
                         Status=0xA801, ErrorComment="Unknown move destination"),
    "echo": make(C_ECHO, MessageIDBeingRespondedTo=1, AffectedSOPClassUID="1.2.840.10008.1.1", Status=0),
    "commitment accepted": make(N_ACTION, MessageIDBeingRespondedTo=1, AffectedSOPClassUID="1.2.840.10008.1.20.1",
                                AffectedSOPInstanceUID="1.2.840.10008.1.20.1.1", Status=0, ActionTypeID=1),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_same_bytes_as_pynetdicom(name: str) -> None:
    message_type, expected = reference(CASES[name])
    assert command_set.encode(CASES[name], message_type) == expected


def test_store_request_of_a_retrieval_is_the_primitives_encoding() -> None:
    """What `DirectSend.c_store` sends: a StoreRequest, not a pynetdicom primitive, same bytes."""
    request = StoreRequest(CT, "1.2.3.4.5", "1.2.840.10008.1.2.1", 9, 2, "WS1", 4)
    primitive = make(C_STORE, MessageID=9, AffectedSOPClassUID=CT, AffectedSOPInstanceUID="1.2.3.4.5", Priority=2,
                     MoveOriginatorApplicationEntityTitle="WS1", MoveOriginatorMessageID=4,
                     _dataset_path=("/x", 1))  # fmt: skip
    assert command_set.encode(request, "C-STORE-RQ") == reference(primitive)[1]


def test_declines_what_it_was_not_made_for() -> None:
    report = make(N_EVENT_REPORT, MessageID=1, AffectedSOPClassUID="1.2.840.10008.1.20.1",
                  AffectedSOPInstanceUID="1.2.840.10008.1.20.1.1", EventTypeID=1)  # fmt: skip
    assert command_set.encode(report, "N-EVENT-REPORT-RQ") is None
    accented = make(C_STORE, MessageIDBeingRespondedTo=1, AffectedSOPClassUID=CT, AffectedSOPInstanceUID="1.2",
                    Status=0xA700, ErrorComment="stocare plină")  # fmt: skip
    assert command_set.encode(accented, "C-STORE-RSP") is None  # pynetdicom's encoding decides, as before


def store_response(**values: Any) -> bytes:
    """A C-STORE-RSP command set as pynetdicom encodes it (what a pynetdicom peer sends)."""
    fields = {"MessageIDBeingRespondedTo": 7, "AffectedSOPClassUID": CT, "AffectedSOPInstanceUID": "1.2.3", "Status": 0}
    fields.update(values)
    return reference(make(C_STORE, **{k: v for k, v in fields.items() if v is not None}))[1]


@pytest.mark.parametrize(
    "values",
    [{}, {"AffectedSOPClassUID": None, "AffectedSOPInstanceUID": None}],
    ids=["with-uids", "without-the-optional-uids"],
)
def test_a_plain_store_success_is_recognised(values: dict[str, Any]) -> None:
    assert command_set.is_store_success(memoryview(store_response(**values)), 7)


@pytest.mark.parametrize(
    ("values", "message_id"),
    [
        ({"Status": 0xB000}, 7),  # a warning: pynetdicom checks and logs it
        ({"Status": 0xA700}, 7),
        ({"Status": 0x0000, "ErrorComment": "stored, but"}, 7),  # a detail next to success
        ({"Status": 0x0000, "OffendingElement": [0x00100010]}, 7),
        ({}, 8),  # the response to another request
    ],
    ids=["warning", "failure", "error-comment", "offending-element", "other-message-id"],
)
def test_anything_but_a_plain_success_goes_to_pynetdicom(values: dict[str, Any], message_id: int) -> None:
    assert not command_set.is_store_success(memoryview(store_response(**values)), message_id)


def test_other_commands_and_broken_bytes_go_to_pynetdicom() -> None:
    success = store_response()
    find = reference(make(C_FIND, MessageIDBeingRespondedTo=7, AffectedSOPClassUID=FIND, Status=0))[1]
    echo = reference(make(C_ECHO, MessageIDBeingRespondedTo=7, Status=0))[1]
    store_rq = reference(
        make(C_STORE, MessageID=7, Priority=2, AffectedSOPClassUID=CT, AffectedSOPInstanceUID="1.2.3")
    )[1]
    group_two = success + bytes.fromhex("0200 1000 0200 0000") + b"1\x00"  # an element outside group 0000
    for raw in (find, echo, store_rq, success[:-1], success + b"\x00", success[:12], group_two):
        assert not command_set.is_store_success(memoryview(raw), 7), raw.hex()


# ----- reading a C-STORE-RQ (pacs.wire.direct_store) ----------------------------------------------


def store_rq(**values: Any) -> bytes:
    fields = {"MessageID": 7, "AffectedSOPClassUID": CT, "AffectedSOPInstanceUID": "1.2.3.4", "Priority": 2}
    primitive = make(C_STORE, **{**fields, **values})
    primitive.DataSet = BytesIO(b"\x00")  # a data set follows
    return reference(primitive)[1]


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"MoveOriginatorApplicationEntityTitle": "MOVER", "MoveOriginatorMessageID": 3},
        {"AffectedSOPInstanceUID": "1.2.826.0.1.3680043.10.1234." + "9" * 35, "Priority": 0, "MessageID": 65535},
    ],
    ids=["plain", "move-originator", "longest-uid"],
)
def test_a_store_request_reads_as_pynetdicom_decodes_it(values: dict[str, Any]) -> None:
    raw = store_rq(**values)
    got = command_set.read_store(memoryview(raw))
    decoded = decode_command(raw)
    assert got == command_set.StoreCommand(
        decoded.MessageID, str(decoded.AffectedSOPClassUID), str(decoded.AffectedSOPInstanceUID)
    )


def decode_command(raw: bytes) -> Any:
    return decode(BytesIO(raw), True, True)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(reference(make(C_ECHO, MessageID=1, AffectedSOPClassUID="1.2.840.10008.1.1"))[1], id="c-echo"),
        pytest.param(
            reference(make(C_STORE, MessageID=1, AffectedSOPClassUID=CT, AffectedSOPInstanceUID="1.2", Priority=2))[1],
            id="no-data-set",
        ),
        pytest.param(store_rq()[:-3], id="truncated"),
        pytest.param(store_rq() + b"\x00\x00\x02\x09\x00\x00\x00\x00", id="an-element-it-may-not-have"),
        pytest.param(store_rq().replace(b"1.2.3.4", b"1.2.x.4"), id="not-a-uid"),
    ],
)
def test_anything_but_a_plain_store_request_is_left_to_pynetdicom(raw: bytes) -> None:
    assert command_set.read_store(memoryview(raw)) is None


def test_pdv_items_fill_the_body_or_the_body_is_left_to_pynetdicom() -> None:
    one = b"\x00\x00\x00\x05\x01\x02abc"
    two = one + b"\x00\x00\x00\x03\x03\x03z"
    items = command_set.pdvs(memoryview(two))
    assert items is not None
    assert [(c, f, bytes(d)) for c, f, d in items] == [(1, 2, b"abc"), (3, 3, b"z")]
    assert command_set.pdvs(memoryview(one[:-1])) is None  # an item longer than the body
    assert command_set.pdvs(memoryview(one + b"\x00")) is None  # bytes after the last item
    assert command_set.pdvs(memoryview(b"\x00\x00\x00\x01\x01")) is None  # an item without its header
    assert command_set.pdvs(memoryview(b"")) is None
