"""C-GET against the SCP with real peers: dcmtk's getscu, and pynetdicom for C-CANCEL.

The instances come back over the requester's own association, on the storage contexts for
which it took the SCP role; getscu writes them (`+B`: the data set as received) to the test's
folder, which is compared with what the archive holds.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import MPEG2MPML, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless
from pynetdicom import evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
)

from pacs.server import RunningScp
from storage.archive import Archive
from tests.kit import dicom_factory as f
from tests.kit.dimse import ENV, assert_same_objects, dataset_bytes, get_association, keys, pynetdicom_get
from tests.kit.inspect import spooled
from tests.kit.seed import seed_files
from tests.kit.studies import slices
from tests.kit.tools import require_tool

pytestmark = pytest.mark.dcmtk
GET = StudyRootQueryRetrieveInformationModelGet


def getscu(scp: RunningScp, folder: Path, *args: str, calling: str = "CT1", ok: bool = True) -> str:
    """dcmtk getscu writing to `folder`; its verbose output. `args`: options, then -k keys."""
    folder.mkdir(exist_ok=True)
    command = [require_tool("getscu"), "-v", "+B", "-aet", calling, "-aec", "MUNIPACS", "-od", str(folder), *args]
    r = subprocess.run([*command, "127.0.0.1", str(scp.port)], env=ENV, capture_output=True, text=True, timeout=120)
    assert (r.returncode == 0) == ok, r.stdout + r.stderr
    return r.stdout + r.stderr


def k(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("-k", pair)]


def test_get_study_series_instance(scp: RunningScp, archive: Archive, tmp_path: Path) -> None:
    datasets = slices(6)
    sent = seed_files(archive, tmp_path / "in", datasets)
    st, se, sop = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID, datasets[0].SOPInstanceUID

    out = getscu(scp, tmp_path / "study", "-S", *k("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={st}"))
    assert "Number of Completed Suboperations : 6" in out
    assert_same_objects(sent, tmp_path / "study", as_stored=True)

    series = k("QueryRetrieveLevel=SERIES", f"StudyInstanceUID={st}", f"SeriesInstanceUID={se}")
    getscu(scp, tmp_path / "series", "-S", *series)
    assert_same_objects(sent[0::2], tmp_path / "series", as_stored=True)

    image = k("QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={st}", f"SeriesInstanceUID={se}", f"SOPInstanceUID={sop}")
    getscu(scp, tmp_path / "one", "-S", *image)
    assert_same_objects(sent[:1], tmp_path / "one", as_stored=True)


def test_get_patient_in_patient_root(scp: RunningScp, archive: Archive, tmp_path: Path) -> None:
    mine = seed_files(archive, tmp_path / "a", slices(2, patient_id="PAT-G")) + seed_files(
        archive, tmp_path / "b", slices(3, patient_id="PAT-G")
    )
    seed_files(archive, tmp_path / "c", slices(2, patient_id="PAT-H"))
    getscu(scp, tmp_path / "out", "-P", *k("QueryRetrieveLevel=PATIENT", "PatientID=PAT-G"))
    assert_same_objects(mine, tmp_path / "out", as_stored=True)


def test_a_compressed_first_context_gets_every_instance(scp: RunningScp, archive: Archive, tmp_path: Path) -> None:
    """getscu `+xs` proposes one context per class, JPEG Lossless first, then the uncompressed
    syntaxes: the archive accepts explicit VR little endian there, so instances stored
    uncompressed arrive as stored instead of failing for want of a JPEG encoder."""
    datasets = slices(3)
    sent = seed_files(archive, tmp_path / "in", datasets)
    st = f"StudyInstanceUID={datasets[0].StudyInstanceUID}"
    out = getscu(scp, tmp_path / "out", "-S", "+xs", *k("QueryRetrieveLevel=STUDY", st))
    assert "Number of Completed Suboperations : 3" in out
    assert_same_objects(sent, tmp_path / "out", as_stored=True)


@pytest.mark.parametrize(("ts", "prefer"), [(RLELossless, "+xr"), (JPEG2000Lossless, "+xv")], ids=["rle", "j2k"])
def test_compressed_comes_as_stored_or_decoded(
    scp: RunningScp, archive: Archive, tmp_path: Path, ts: str, prefer: str
) -> None:
    """Decoded where a requester's one context per class also offers an uncompressed syntax
    (getscu, with or without a compressed preference): that is the syntax every instance can be
    sent in. As stored where another context of the class is uncompressed (pynetdicom)."""
    datasets = slices(3)
    sent = seed_files(archive, tmp_path / "in", datasets, ts)
    st = f"StudyInstanceUID={datasets[0].StudyInstanceUID}"
    getscu(scp, tmp_path / "preferred", "-S", prefer, *k("QueryRetrieveLevel=STUDY", st))
    assert_same_objects(sent, tmp_path / "preferred", as_stored=False)
    getscu(scp, tmp_path / "plain", "-S", *k("QueryRetrieveLevel=STUDY", st))
    assert_same_objects(sent, tmp_path / "plain", as_stored=False)

    arrived: dict[str, tuple[str, bytes]] = {}

    def keep_raw(event: evt.Event) -> int:
        arrived[event.request.AffectedSOPInstanceUID] = (event.context.transfer_syntax, raw_dataset(event))
        return 0x0000

    assoc = get_association(scp, keep_raw, storage_syntaxes=[[ts, ExplicitVRLittleEndian], [ExplicitVRLittleEndian]])
    try:
        identifier = keys("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID)
        statuses = [status.Status for status, _ in assoc.send_c_get(identifier, GET)]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    stored = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in sent}
    assert arrived == {uid: (ts, dataset_bytes(path)) for uid, path in stored.items()}
    assert spooled(archive) == []


def test_unknown_calling_ae_is_refused(scp: RunningScp, archive: Archive, tmp_path: Path) -> None:
    datasets = slices(2)
    seed_files(archive, tmp_path / "in", datasets)
    responses = pynetdicom_get(scp, keys("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID), calling="STRANGER")
    status = responses[-1][0]
    assert status.Status == 0x0124
    assert "not registered" in status.ErrorComment
    st = f"StudyInstanceUID={datasets[0].StudyInstanceUID}"
    out = getscu(scp, tmp_path / "out", "-S", *k("QueryRetrieveLevel=STUDY", st), calling="STRANGER")
    assert "C-GET Response (Unknown Status: 0x124)" in out  # dcmtk 3.6.7 has no name for 0x0124
    assert list((tmp_path / "out").iterdir()) == []


def test_invalid_identifier_is_refused(scp: RunningScp) -> None:
    status = pynetdicom_get(scp, keys("IMAGE", StudyInstanceUID=f.uid()))[-1][0]  # no SOPInstanceUID
    assert status.Status == 0xA900
    assert "SOPInstanceUID" in status.ErrorComment


def test_a_failed_suboperation_is_reported(scp: RunningScp, archive: Archive, tmp_path: Path) -> None:
    datasets = slices(2)
    sent = seed_files(archive, tmp_path / "in", datasets)
    video = f.undecodable(datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID)
    seed_files(archive, tmp_path / "in", [video], MPEG2MPML)
    received: list[Dataset] = []
    responses = pynetdicom_get(scp, keys("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID), received=received)
    status, identifier = responses[-1]
    assert status.Status == 0xB000
    assert (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (2, 1)
    assert identifier is not None and identifier.FailedSOPInstanceUIDList == video.SOPInstanceUID
    assert sorted(ds.SOPInstanceUID for ds in received) == sorted(
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in sent
    )


def test_cancel_stops_a_get_midway(scp: RunningScp, archive: Archive, tmp_path: Path) -> None:
    """pynetdicom as SCU sends C-CANCEL while it stores the 3rd instance: the SCP sends no 4th,
    and answers Cancel with the counts so far (PS3.4 C.4.3.3)."""
    total = 10
    datasets = slices(total, series=1)
    seed_files(archive, tmp_path / "in", datasets)
    received: list[Dataset] = []

    def cancel_after_third(event: evt.Event) -> None:
        if len(received) == 3:
            event.assoc.send_c_cancel(1, query_model=StudyRootQueryRetrieveInformationModelGet)

    responses = pynetdicom_get(
        scp, keys("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID), received=received, then=cancel_after_third
    )
    status, identifier = responses[-1]
    assert status.Status == 0xFE00
    assert len(received) == 3 < total
    assert status.NumberOfCompletedSuboperations == 3
    assert status.NumberOfRemainingSuboperations == total - 3
    assert status.NumberOfFailedSuboperations == 0


def raw_dataset(event: evt.Event) -> bytes:
    """The data set of a received C-STORE as encoded by the sender (pynetdicom spools it to a
    file when `STORE_RECV_CHUNKED_DATASET` is on, as the SCP in this process sets it)."""
    path = getattr(event, "dataset_path", None)
    return dataset_bytes(Path(path)) if path is not None else event.request.DataSet.getvalue()
