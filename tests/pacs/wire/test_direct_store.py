"""The direct C-STORE receive path (`pacs.wire.direct_store`) against pynetdicom's, with a real peer.

Two SCPs over two archives: one receiving C-STORE data sets directly (the default), one with
`PACS_DICOM_DIRECT_STORE` off (pynetdicom's path for every message). A pynetdicom requestor
writes its P-DATA-TF PDUs itself (the reactor paused, as pynetdicom's own `send_c_store` does),
so a test chooses the fragmentation a modality might: odd fragment sizes, one data byte per
PDU, several PDVs in one PDU, the command and the first fragment together. Each path must store
the same bytes and answer the same response; what a peer breaks off (an abort, a C-CANCEL, a
release) must leave nothing behind.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.dimse_messages import _COMMAND_SET_KEYWORDS, C_CANCEL_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE
from pynetdicom.dsutils import encode, split_dataset
from sqlalchemy import select

from pacs.server import RunningScp, start
from storage.archive import Archive
from storage.index.models import Instance
from storage.logs import FIELDS
from tests.kit import dicom_factory as f
from tests.kit.backends import make_settings, migrated_archive
from tests.kit.inspect import row_counts, temporary_files
from tests.kit.seed import seed_orgs

#: a file of each transfer syntax the SCP accepts (pydicom's bundled test files)
FILES = {
    ExplicitVRLittleEndian: "SC_rgb_small_odd.dcm",
    ImplicitVRLittleEndian: "rtdose.dcm",
    ExplicitVRBigEndian: "rtdose_expb.dcm",
    DeflatedExplicitVRLittleEndian: "image_dfl.dcm",
    JPEGBaseline8Bit: "SC_rgb_dcmtk_+eb+cy+n2.dcm",
    JPEGLosslessSV1: "SC_rgb_jpeg_gdcm.dcm",
    JPEGLSLossless: "MR_small_jpeg_ls_lossless.dcm",
    JPEG2000Lossless: "MR_small_jp2klossless.dcm",
    RLELossless: "SC_rgb_rle_16bit.dcm",
}
#: the largest PDU both SCPs announce: odd, so that whole PDUs cut the data set at odd places
MAX_PDU = 4099
#: a JPEG 2000 file of 138 KB: a data set of many PDUs, to break off in the middle
LARGE = "J2K_pixelrep_mismatch.dcm"


@pytest.fixture()
def scps(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RunningScp, RunningScp]]:
    """(direct, pynetdicom's): the same SCP twice, over two archives on SQLite + filesystem."""
    with (
        migrated_archive(make_settings(request, tmp_path / "direct", "sqlite-fs", max_pdu=MAX_PDU)) as a,
        migrated_archive(
            make_settings(request, tmp_path / "plain", "sqlite-fs", max_pdu=MAX_PDU, dicom_direct_store=False)
        ) as b,
    ):
        seed_orgs(a)
        seed_orgs(b)
        direct, plain = start(a.settings, a, port=0), start(b.settings, b, port=0)
        try:
            yield direct, plain
        finally:
            direct.shutdown()
            plain.shutdown()


class Peer:
    """A pynetdicom requestor whose P-DATA-TF PDUs a test writes itself."""

    def __init__(self, scp: RunningScp, sop_class: str, transfer_syntax: str) -> None:
        ae = AE(ae_title="CT1")
        ae.requested_contexts = [build_context(sop_class, [transfer_syntax])]
        self.assoc: Association = ae.associate("127.0.0.1", scp.port, ae_title="MUNIPACS")
        assert self.assoc.is_established
        self.context_id = int(self.assoc._get_valid_context(sop_class, transfer_syntax, "scu").context_id or 0)
        self.sock = self.assoc.dul.socket.socket  # type: ignore[union-attr]
        self.assoc._reactor_checkpoint.clear()  # as send_c_store: the responses stay for `response`
        while not self.assoc._is_paused:
            time.sleep(0.001)

    def command(self, message_id: int, path: Path) -> bytes:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        request = C_STORE()
        request.MessageID = message_id
        request.AffectedSOPClassUID = ds.SOPClassUID
        request.AffectedSOPInstanceUID = ds.SOPInstanceUID
        request.Priority = 2
        request.DataSet = io.BytesIO(b"\x00")  # a data set follows
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        return bytes(encode(message.command_set, True, True) or b"")

    def pdu(self, *pdvs: tuple[int, bytes]) -> bytes:
        """One P-DATA-TF holding `pdvs`: (message control header, fragment)."""
        items = b"".join((len(d) + 2).to_bytes(4, "big") + bytes([self.context_id, c]) + d for c, d in pdvs)
        return b"\x04\x00" + len(items).to_bytes(4, "big") + items

    def data_pdus(self, data: bytes, fragment: int, per_pdu: int = 1) -> list[bytes]:
        pieces = [data[i : i + fragment] for i in range(0, len(data), fragment)]
        flags = [0] * (len(pieces) - 1) + [2]
        pdvs = list(zip(flags, pieces, strict=True))
        return [self.pdu(*pdvs[i : i + per_pdu]) for i in range(0, len(pdvs), per_pdu)]

    def send(self, *chunks: bytes) -> None:
        self.sock.sendall(b"".join(chunks))

    def response(self, timeout: float = 30) -> Any:
        """The next message the SCP sends; None if none comes in `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, message = self.assoc.dimse.get_msg(block=False)
            if message is not None:
                return message
            time.sleep(0.005)
        return None

    def close(self) -> None:
        self.assoc._reactor_checkpoint.set()
        if self.assoc.is_established:
            self.assoc.release()


def renamed(tmp_path: Path, name: str) -> Path:
    """A bundled pydicom file under fresh UIDs, as a file (several bundled files share theirs)."""
    data = f.bundled(name, study=f.uid(), series=f.uid())
    out = tmp_path / f"{name}.dcm"
    out.write_bytes(data)
    return out


def data_set_of(path: Path) -> bytes:
    return path.read_bytes()[split_dataset(path)[1] :]


def stored(archive: Archive, path: Path) -> bytes | None:
    sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    with archive.db.read() as s:
        key = s.scalar(select(Instance.object_key).where(Instance.sop_uid == sop))
    if key is None:
        return None
    with archive.blobs.open(key) as blob:
        return blob.read()


def store_through(scp: RunningScp, path: Path, *, fragment: int, per_pdu: int = 1, with_command: bool = False) -> Any:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    peer = Peer(scp, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    try:
        data = peer.data_pdus(data_set_of(path), fragment, per_pdu)
        command = peer.command(1, path)
        if with_command:  # the command set and the first data fragment in one PDU
            first = data_set_of(path)[:fragment]
            rest = peer.data_pdus(data_set_of(path)[fragment:], fragment, per_pdu)
            peer.send(peer.pdu((3, command), (0, first)), *rest)
        else:
            peer.send(peer.pdu((3, command)), *data)
        return peer.response()
    finally:
        peer.close()


def fields(response: Any) -> dict[str, Any]:
    """Every parameter of a C-STORE response primitive (PS3.7 9.1.1.1)."""
    names = _COMMAND_SET_KEYWORDS["C-STORE-RSP"]
    return {name: getattr(response, name, None) for name in names if hasattr(response, name)}


def released(caplog: pytest.LogCaptureFixture) -> list[int]:
    """The instances each released association had answered on the direct path, in order."""
    return [getattr(r, FIELDS)["direct"] for r in caplog.records if r.getMessage() == "dimse.assoc.released"]


def wait_until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.02)


@pytest.mark.parametrize("ts", list(FILES), ids=[pydicom.uid.UID(ts).keyword for ts in FILES])
@pytest.mark.parametrize(
    ("fragment", "per_pdu"),
    [(MAX_PDU - 6, 1), (1, 1), (7, 3), (1000, 4)],
    ids=["whole-pdus", "a-byte-a-pdu", "odd-fragments-several-a-pdu", "pdvs-filling-a-pdu"],
)
def test_each_transfer_syntax_is_stored_as_pynetdicom_stores_it(
    scps: tuple[RunningScp, RunningScp],
    tmp_path: Path,
    ts: str,
    fragment: int,
    per_pdu: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = renamed(tmp_path, FILES[ts])
    direct, plain = scps
    with caplog.at_level(logging.INFO, logger="pacs.server"):
        answers = [store_through(scp, path, fragment=fragment, per_pdu=per_pdu) for scp in scps]
        wait_until(lambda: len(released(caplog)) == 2)
    assert released(caplog) == [1, 0]  # each took its path
    assert [a.Status for a in answers] == [0, 0]
    assert fields(answers[0]) == fields(answers[1])  # the same response, element for element
    ours, theirs = stored(direct.archive, path), stored(plain.archive, path)
    assert ours is not None and ours == theirs
    assert temporary_files(direct.archive) == []


def test_a_command_sharing_its_pdu_with_data_goes_to_pynetdicom_and_is_stored_the_same(
    scps: tuple[RunningScp, RunningScp], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = renamed(tmp_path, FILES[ExplicitVRLittleEndian])
    with caplog.at_level(logging.INFO, logger="pacs.server"):
        answers = [store_through(scp, path, fragment=500, with_command=True) for scp in scps]
        wait_until(lambda: len(released(caplog)) == 2)
    assert released(caplog) == [0, 0]
    assert [a.Status for a in answers] == [0, 0]
    assert stored(scps[0].archive, path) == stored(scps[1].archive, path) is not None


def test_a_refusal_answers_the_same_status_and_comment_on_both_paths(
    scps: tuple[RunningScp, RunningScp], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bad.dcm"
    path.write_bytes(f.without("StudyInstanceUID"))  # the pipeline refuses it, with an Error Comment
    with caplog.at_level(logging.INFO, logger="pacs.server"):
        answers = [store_through(scp, path, fragment=2000) for scp in scps]
        wait_until(lambda: len(released(caplog)) == 2)
    assert released(caplog) == [1, 0]
    assert answers[0].Status != 0
    assert fields(answers[0]) == fields(answers[1])
    assert all(row_counts(scp.archive)["instances"] == 0 for scp in scps)


def test_an_abort_in_the_middle_of_a_data_set_leaves_nothing(
    scps: tuple[RunningScp, RunningScp], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    direct = scps[0]
    path = renamed(tmp_path, LARGE)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    peer = Peer(direct, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    data = peer.data_pdus(data_set_of(path), 4000)
    with caplog.at_level(logging.INFO):
        peer.send(peer.pdu((3, peer.command(1, path))), *data[:10])
        wait_until(lambda: temporary_files(direct.archive) != [])  # the partial file exists
        peer.assoc._reactor_checkpoint.set()
        peer.assoc.abort()
        wait_until(lambda: temporary_files(direct.archive) == [])
        wait_until(lambda: "dimse.assoc.aborted" in caplog.text)
    assert row_counts(direct.archive)["instances"] == 0
    assert "dimse.store.abandoned" in caplog.text


def test_a_c_cancel_in_the_middle_of_a_data_set_ends_that_instance_and_the_next_is_stored(
    scps: tuple[RunningScp, RunningScp], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    direct = scps[0]
    first, second = renamed(tmp_path, LARGE), renamed(tmp_path, FILES[JPEG2000Lossless])
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    peer = Peer(direct, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    try:
        cancel = C_CANCEL()
        cancel.MessageIDBeingRespondedTo = 1
        message = C_CANCEL_RQ()
        message.primitive_to_message(cancel)
        cancel_command = bytes(encode(message.command_set, True, True) or b"")
        with caplog.at_level(logging.INFO):
            peer.send(peer.pdu((3, peer.command(1, first))), *peer.data_pdus(data_set_of(first), 4000)[:5])
            peer.send(peer.pdu((3, cancel_command)))
            peer.send(peer.pdu((3, peer.command(2, second))), *peer.data_pdus(data_set_of(second), 4000))
            answer = peer.response()
        assert answer is not None
        assert (answer.MessageIDBeingRespondedTo, answer.Status) == (2, 0)
        assert peer.response(timeout=0.5) is None  # the broken-off instance is never answered
    finally:
        peer.close()
    assert stored(direct.archive, first) is None and stored(direct.archive, second) is not None
    assert temporary_files(direct.archive) == []
    assert "dimse.store.abandoned" in caplog.text


def test_a_release_right_after_the_last_fragment_still_stores_the_instance(
    scps: tuple[RunningScp, RunningScp], tmp_path: Path
) -> None:
    direct = scps[0]
    path = renamed(tmp_path, FILES[JPEGLSLossless])
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    peer = Peer(direct, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    peer.send(peer.pdu((3, peer.command(1, path))), *peer.data_pdus(data_set_of(path), 4000))
    peer.assoc._reactor_checkpoint.set()
    peer.assoc.release()  # its A-RELEASE-RQ follows the last fragment on the wire at once
    assert peer.assoc.is_released
    wait_until(lambda: stored(direct.archive, path) is not None)
    assert temporary_files(direct.archive) == []
