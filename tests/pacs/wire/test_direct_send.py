"""`pacs.wire.direct_send` and `pacs.wire.direct_receive`: sub-operations written and their responses read
without pynetdicom's DUL queue.

Framing is held byte-equal to pynetdicom's own P-DATA-TF PDUs for the same message; then real
peers take what it writes: pynetdicom as C-GET SCU with a small and with an unlimited maximum
PDU length (data sets compared byte for byte with the stored ones), and dcmtk storescp for a
C-MOVE of many small instances back to back, the case where pynetdicom's reactor used to take
a C-STORE response meant for the sub-operation. On the receiving side: responses other than a
plain success (warning, failure) still reach pynetdicom's status handling, and a retrieval
longer than the association's network timeout is not mistaken for an idle association.
C-CANCEL read in the middle of a sub-operation: tests/pacs/test_get.py.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]

from pacs.server import RunningScp
from pacs.wire.direct_send import COMMAND, data_set_offset, file_fragments, fragments
from storage.archive import Archive
from storage.logs import FIELDS
from storage.settings import Settings
from tests.kit import dicom_factory as f
from tests.kit.backends import make_settings
from tests.kit.dimse import dataset_bytes, get_association, keys, pynetdicom_get, pynetdicom_move, register
from tests.kit.seed import seed_files
from tests.kit.studies import slices

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture()
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """SQLite + folder only: what is tested here happens on the association, not in the backends."""
    return make_settings(request, tmp_path, "sqlite-fs")


def pynetdicom_pdus(path: Path, offset: int, context_id: int, max_pdu: int) -> bytes:
    """What pynetdicom itself puts on the wire for a C-STORE request streaming `path`."""
    primitive = C_STORE()
    primitive.MessageID, primitive.Priority = 5, 2
    primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID = CT, "1.2.3.4"
    primitive._dataset_path = (path, offset)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return b"".join(P_DATA_TF(p).encode() for p in message.encode_msg(context_id, max_pdu)), message


@pytest.mark.parametrize(
    ("max_pdu", "rows"),
    [(16384, 96), (4096, 96), (1000, 96), (0, 96), (16384, 800), (0, 800), (3 << 20, 1200)],
    ids=["16k", "4k", "1000", "unlimited", "16k-1.3MB", "unlimited-1.3MB", "3MB-pdu-2.9MB"],
)
def test_framing_is_pynetdicoms(tmp_path: Path, max_pdu: int, rows: int) -> None:
    """Small and multi-block data sets; fragments larger than one write (read in pieces) too."""
    path = f.write(tmp_path / "ct.dcm", f.ct_dataset(rows=rows, columns=rows), ExplicitVRLittleEndian)
    _, offset = split_dataset(path)
    expected, message = pynetdicom_pdus(path, offset, 3, max_pdu)
    command = encode(message.command_set, True, True)
    size = max_pdu - 6 if max_pdu else None
    with open(path, "rb", buffering=0) as fp:
        fp.seek(offset)
        length = path.stat().st_size - offset
        ours = b"".join(fragments(memoryview(command), 3, COMMAND, size)) + b"".join(
            file_fragments(fp, length, 3, size)
        )
    assert ours == expected


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm", "rtplan.dcm"]
)
def test_data_set_offset_agrees_with_pydicom(name: str) -> None:
    path = Path(get_testdata_file(name))
    with open(path, "rb") as fp:
        assert data_set_offset(fp, path) == split_dataset(path)[1]
        assert fp.tell() == split_dataset(path)[1]


def test_data_set_offset_without_a_group_length(tmp_path: Path) -> None:
    """A file meta lacking (0002,0000) (not conformant, but seen) is measured by pydicom's reader."""
    conformant = f.write(tmp_path / "ct.dcm", f.ct_dataset(), ExplicitVRLittleEndian)
    original = conformant.read_bytes()
    assert original[132:138] == b"\x02\x00\x00\x00UL"
    path = tmp_path / "no-group-length.dcm"
    path.write_bytes(original[:132] + original[144:])
    with open(path, "rb") as fp:
        assert data_set_offset(fp, path) == split_dataset(conformant)[1] - 12 == fp.tell()


def get_raw(scp: RunningScp, identifier: Dataset, max_pdu: int) -> dict[str, bytes]:
    """C-GET by pynetdicom with `max_pdu` as its maximum PDU length: SOP Instance UID -> data set bytes."""
    got: dict[str, bytes] = {}

    def keep(event: evt.Event) -> None:  # chunked receive (pacs.server): the data set is in a file
        got[str(event.request.AffectedSOPInstanceUID)] = dataset_bytes(Path(event.dataset_path))

    responses = pynetdicom_get(scp, identifier, then=keep, max_pdu=max_pdu)
    assert responses[-1][0].Status == 0x0000
    return got


@pytest.mark.parametrize("max_pdu", [4096, 0])
def test_get_at_small_and_unlimited_pdu_sizes(scp: RunningScp, archive: Archive, tmp_path: Path, max_pdu: int) -> None:
    datasets = slices(5, size=64)
    sent = seed_files(archive, tmp_path / "in", datasets)
    got = get_raw(scp, keys("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID), max_pdu)
    expected = {str(ds.SOPInstanceUID): dataset_bytes(p) for ds, p in zip(datasets, sent, strict=True)}
    assert got == expected


def test_many_small_moves_back_to_back(
    scp: RunningScp,
    archive: Archive,
    storescp,  # noqa: F811 - the fixture imported from test_move
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """300 sub-operations of a few KB each: each response reaches its sub-operation, none is lost."""
    datasets = slices(300, size=16)
    seed_files(archive, tmp_path / "in", datasets)
    dest = storescp()
    register(archive, "hosp-a", "DEST", dest.port)
    with caplog.at_level(logging.WARNING):
        responses = pynetdicom_move(scp, "DEST", keys("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID))
    status = responses[-1][0]
    assert (status.Status, status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (0, 300, 0)
    assert len(list(dest.folder.iterdir())) == 300
    assert "unexpected" not in caplog.text


def get_answering(scp: RunningScp, identifier: Dataset, answer: Any) -> tuple[list[Dataset], bool]:
    """A C-GET by pynetdicom whose storage handler returns `answer(n)` for the n-th instance.

    Returns the responses and whether the association was still up (neither side aborted)
    when the SCU released it, a moment after the final response.
    """
    count = itertools.count(1)

    def on_store(event: evt.Event) -> int:
        return int(answer(next(count)))

    assoc = get_association(scp, on_store)
    responses = [
        status for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet, msg_id=1)
    ]
    time.sleep(0.5)  # the SCP's reactor checks its idle timer right after the final response
    up = assoc.is_established
    assoc.release()
    return responses, up and assoc.is_released


def test_warning_and_failure_responses_reach_pynetdicoms_status_handling(
    scp: RunningScp, archive: Archive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a plain success is read without pynetdicom; these go through its decoding and counts."""
    datasets = slices(4, size=16)
    seed_files(archive, tmp_path / "in", datasets)
    answers = {2: 0xB007, 3: 0xA700}  # Coercion of Data Elements; Out of Resources
    with caplog.at_level(logging.WARNING):
        responses, _ = get_answering(
            scp, keys("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID), lambda n: answers.get(n, 0)
        )
    final = responses[-1]
    counts = (
        final.NumberOfCompletedSuboperations,
        final.NumberOfWarningSuboperations,
        final.NumberOfFailedSuboperations,
    )
    assert (final.Status, counts) == (0xB000, (2, 1, 1))
    failed = [r for r in caplog.records if r.getMessage() == "dimse.get.suboperation_failed"]
    assert [getattr(r, FIELDS)["reason"] for r in failed] == ["status_0xA700"]


def test_a_retrieval_longer_than_the_network_timeout_keeps_its_association(
    scp: RunningScp, archive: Archive, tmp_path: Path
) -> None:
    """Responses read by the sending thread restart pynetdicom's idle timer, as its own reader
    does; otherwise the SCP aborts the association once the C-GET is over."""
    datasets = slices(8, size=16)
    seed_files(archive, tmp_path / "in", datasets)
    ae = scp.server.ae
    before, ae.network_timeout = ae.network_timeout, 1
    try:

        def slowly(n: int) -> int:
            time.sleep(0.25)  # 8 instances: 2 s, twice the SCP's network timeout
            return 0

        responses, stayed_up = get_answering(scp, keys("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID), slowly)
    finally:
        ae.network_timeout = before
    assert (responses[-1].Status, responses[-1].NumberOfCompletedSuboperations) == (0, 8)
    assert stayed_up
