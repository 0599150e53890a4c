"""C-MOVE against the SCP with real peers: dcmtk's movescu asks, dcmtk's storescp receives.

Each test stores its objects as the registered modality CT1 of hosp-a, registers the storescp
it starts as `DEST@127.0.0.1:<port>` of hosp-a, and compares what storescp wrote with what the
archive holds: the same instances, the stored bytes when the destination took the stored
syntax (storescp `+B` writes the data set as received), the same pixels when it did not.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless
from pynetdicom import AE, build_context
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs.logconfig import drop_restated_pynetdicom_errors
from pacs.server import RunningScp
from pacs.suboperations import destination_contexts
from storage.access.orgs import AeSpec, add_org
from storage.access.principal import Principal
from storage.archive import Archive
from storage.dicom.parse import Source
from storage.errors import InvalidIdentifier
from storage.ingest.pipeline import Origin, ingest
from storage.retrieve.retrieval import StoredInstance
from storage.retrieve.selection import parse_identifier
from tests import dicom_factory as f
from tests.conftest import require_tool
from tests.servers import free_port

ENV = {**os.environ, "TCP_NODELAY": "1"}
CT1 = Principal(sub="CT1", org="hosp-a", roles=frozenset({"modality"}), via="dimse", address="127.0.0.1")

pytestmark = pytest.mark.dcmtk


# ----- objects in the archive ---------------------------------------------------------------


def store(archive: Archive, folder: Path, datasets: list[Dataset], ts: str = ExplicitVRLittleEndian) -> list[Path]:
    """Ingest `datasets` as CT1 of hosp-a (compressed to `ts` first unless already encapsulated); their files."""
    paths = []
    for ds in datasets:
        if ts != ExplicitVRLittleEndian and not ds.PixelData.startswith(b"\xfe\xff\x00\xe0"):
            ds.compress(ts, generate_instance_uid=False)
        path = f.write(folder / f"{ds.SOPInstanceUID}.dcm", ds, ts)
        ingest(Source(path=path), Origin.dimse("CT1", "MUNIPACS", "127.0.0.1"), CT1, archive=archive)
        paths.append(path)
    return paths


def study(n: int, *, patient_id: str = "PAT-1", series: int = 2, size: int = 32) -> list[Dataset]:
    """`n` CT slices of one new study over `series` series."""
    study_uid, series_uids = f.uid(), [f.uid() for _ in range(series)]
    return [
        f.ct_dataset(
            study_uid=study_uid,
            series_uid=series_uids[i % series],
            patient_id=patient_id,
            rows=size,
            columns=size,
            instance_number=i + 1,
        )
        for i in range(n)
    ]


def undecodable(study_uid: str, series_uid: str) -> Dataset:
    """A CT slice stored as MPEG-2: no decoder here, so it can only go to a peer that takes MPEG-2."""
    ds = f.ct_dataset(study_uid=study_uid, series_uid=series_uid, rows=16, columns=16)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    return ds


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part-10 file as encoded, without its File Meta Information."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def received(folder: Path) -> dict[str, Path]:
    """SOP Instance UID -> file, of what a dcmtk receiver wrote to `folder`."""
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.iterdir()}


def assert_same_objects(sent: list[Path], folder: Path, *, as_stored: bool) -> None:
    """The receiver holds exactly `sent`: byte for byte (`as_stored`) or pixel for pixel, decoded."""
    got = received(folder)
    originals = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in sent}
    assert sorted(got) == sorted(originals)
    for uid, path in originals.items():
        original, back = pydicom.dcmread(path), pydicom.dcmread(got[uid])
        if as_stored:
            assert back.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
            assert dataset_bytes(got[uid]) == dataset_bytes(path), uid
        else:
            assert not back.file_meta.TransferSyntaxUID.is_compressed
            assert (back.pixel_array == original.pixel_array).all(), uid
        assert back.StudyInstanceUID == original.StudyInstanceUID


# ----- dcmtk peers --------------------------------------------------------------------------


@dataclass
class Receiver:
    port: int
    folder: Path
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture()
def storescp(tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    """Start dcmtk storescp receivers (extra options, e.g. `+xa` to accept compressed syntaxes)."""
    started: list[Receiver] = []

    def start(*options: str, name: str = "received") -> Receiver:
        folder, log = tmp_path / name, tmp_path / f"{name}.log"
        folder.mkdir()
        port = free_port()
        command = [require_tool("storescp"), "+B", "-od", str(folder), *options, str(port)]
        with open(log, "wb") as out:
            process = subprocess.Popen(command, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        started.append(Receiver(port, folder, process, log))
        wait_listening(port, process)
        return started[-1]

    yield start
    for r in started:
        r.process.terminate()
        r.process.wait(10)


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "storescp exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"storescp is not listening on {port}")


def register(archive: Archive, org: str, ae_title: str, port: int) -> None:
    with archive.db.write() as s:
        add_org(s, org, f"Organization {org}", [AeSpec(ae_title, "127.0.0.1", port)])


def movescu(
    scp: RunningScp, destination: str, *keys: str, model: str = "-S", calling: str = "CT1", ok: bool = True
) -> str:
    """dcmtk movescu; its verbose output (the responses it received). It exits non-zero on a failure status."""
    command = [require_tool("movescu"), "-v", "-aet", calling, "-aec", "MUNIPACS", "-aem", destination, model]
    for key in keys:
        command += ["-k", key]
    r = subprocess.run([*command, "127.0.0.1", str(scp.port)], env=ENV, capture_output=True, text=True, timeout=120)
    assert (r.returncode == 0) == ok, r.stdout + r.stderr
    return r.stdout + r.stderr


def pynetdicom_move(
    scp: RunningScp, destination: str, identifier: Dataset, *, calling: str = "CT1", model: str = "study"
) -> list[tuple[Dataset, Dataset | None]]:
    """A C-MOVE by pynetdicom as SCU: every (status, identifier) response."""
    sop_class = {
        "study": StudyRootQueryRetrieveInformationModelMove,
        "patient": PatientRootQueryRetrieveInformationModelMove,
    }
    ae = AE(ae_title=calling)
    ae.requested_contexts = [build_context(sop_class[model])]
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="MUNIPACS")
    assert assoc.is_established
    try:
        return list(assoc.send_c_move(identifier, destination, sop_class[model]))
    finally:
        assoc.release()


def keys(level: str, **values: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


# ----- moves that succeed -------------------------------------------------------------------


def test_move_study_series_instance(scp: RunningScp, archive: Archive, storescp, tmp_path: Path) -> None:
    datasets = study(6)
    sent = store(archive, tmp_path / "in", datasets)
    dest = storescp("-d")  # -d: it logs each C-STORE request
    register(archive, "hosp-a", "DEST", dest.port)
    st, se, sop = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID, datasets[0].SOPInstanceUID

    out = movescu(scp, "DEST", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={st}")
    assert "Final Move Response (Success)" in out
    assert_same_objects(sent, dest.folder, as_stored=True)
    # PS3.7 9.3.1.1: each C-STORE names the AE that asked for the move, not the archive
    assert dest.log.read_text().count("Move Originator AE Title      : CT1") == 6

    for p in dest.folder.iterdir():
        p.unlink()
    movescu(scp, "DEST", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={st}", f"SeriesInstanceUID={se}")
    assert_same_objects(sent[0::2], dest.folder, as_stored=True)  # the series of instances 1, 3, 5

    for p in dest.folder.iterdir():
        p.unlink()
    image = ("QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={st}", f"SeriesInstanceUID={se}", f"SOPInstanceUID={sop}")
    movescu(scp, "DEST", *image)
    assert_same_objects(sent[:1], dest.folder, as_stored=True)


def test_move_patient_in_patient_root(scp: RunningScp, archive: Archive, storescp, tmp_path: Path) -> None:
    mine = store(archive, tmp_path / "a", study(3, patient_id="PAT-7")) + store(
        archive, tmp_path / "b", study(2, patient_id="PAT-7")
    )
    store(archive, tmp_path / "c", study(2, patient_id="PAT-8"))  # another patient: not sent
    dest = storescp()
    register(archive, "hosp-a", "DEST", dest.port)
    out = movescu(scp, "DEST", "QueryRetrieveLevel=PATIENT", "PatientID=PAT-7", model="-P")
    assert "Final Move Response (Success)" in out
    assert_same_objects(mine, dest.folder, as_stored=True)


def test_move_a_list_of_studies(scp: RunningScp, archive: Archive, storescp, tmp_path: Path) -> None:
    a, b, c = study(2), study(2), study(2)
    sent = store(archive, tmp_path / "a", a) + store(archive, tmp_path / "b", b)
    store(archive, tmp_path / "c", c)
    dest = storescp()
    register(archive, "hosp-a", "DEST", dest.port)
    uids = f"{a[0].StudyInstanceUID}\\{b[0].StudyInstanceUID}"
    movescu(scp, "DEST", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uids}")
    assert_same_objects(sent, dest.folder, as_stored=True)


@pytest.mark.parametrize("ts", [RLELossless, JPEG2000Lossless], ids=["rle", "j2k"])
def test_compressed_goes_as_stored_or_decoded(
    scp: RunningScp, archive: Archive, storescp, tmp_path: Path, ts: str
) -> None:
    """As stored to a destination that accepts the syntax (storescp +xa), decoded to explicit VR
    little endian for one that accepts only uncompressed syntaxes (storescp's default)."""
    datasets = study(3)
    sent = store(archive, tmp_path / "in", datasets, ts)
    all_syntaxes, uncompressed = storescp("+xa", name="all"), storescp(name="uncompressed")
    register(archive, "hosp-a", "ALL", all_syntaxes.port)
    register(archive, "hosp-a", "PLAIN", uncompressed.port)
    st = f"StudyInstanceUID={datasets[0].StudyInstanceUID}"

    movescu(scp, "ALL", "QueryRetrieveLevel=STUDY", st)
    assert_same_objects(sent, all_syntaxes.folder, as_stored=True)

    movescu(scp, "PLAIN", "QueryRetrieveLevel=STUDY", st)
    assert_same_objects(sent, uncompressed.folder, as_stored=False)
    assert {pydicom.dcmread(p).file_meta.TransferSyntaxUID for p in uncompressed.folder.iterdir()} == {
        ExplicitVRLittleEndian
    }
    assert spooled() == []  # the decoded copies (and S3 downloads) are gone once sent


def spooled() -> list[Path]:
    """Temporary files of sub-operations (`pacs.suboperations`) left behind."""
    return list(Path(tempfile.gettempdir()).glob("pacs-retrieve-*"))


def test_nothing_matches_is_a_success_with_no_suboperations(scp: RunningScp, archive: Archive, storescp) -> None:
    dest = storescp()
    register(archive, "hosp-a", "DEST", dest.port)
    responses = pynetdicom_move(scp, "DEST", keys("STUDY", StudyInstanceUID=f.uid()))
    status = responses[-1][0]
    assert (status.Status, status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (0, 0, 0)
    assert list(dest.folder.iterdir()) == []


# ----- refusals and failures ----------------------------------------------------------------


def test_unknown_destination_is_refused_and_nothing_sent(
    scp: RunningScp, archive: Archive, storescp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    drop_restated_pynetdicom_errors()  # as `pacs serve` does: the refusal is our WARNING, not an ERROR
    datasets = study(2)
    store(archive, tmp_path / "in", datasets)
    dest = storescp()
    register(archive, "hosp-a", "DEST", dest.port)
    with archive.db.write() as s:  # registered, but without an address
        add_org(s, "hosp-a", None, [AeSpec("NOADDR")])
    for destination in ("NOBODY", "NOADDR"):
        responses = pynetdicom_move(scp, destination, keys("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID))
        status = responses[-1][0]
        assert status.Status == 0xA801
        assert destination in status.ErrorComment
    st = f"StudyInstanceUID={datasets[0].StudyInstanceUID}"
    out = movescu(scp, "NOBODY", "QueryRetrieveLevel=STUDY", st, ok=False)
    assert "Final Move Response (Refused: MoveDestinationUnknown)" in out
    assert list(dest.folder.iterdir()) == []
    refused = [r for r in caplog.records if r.getMessage() == "dimse.move.refused"]
    assert len(refused) == 3 and all(r.levelno == logging.WARNING for r in refused)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_another_organizations_destination_is_refused(
    scp: RunningScp, archive: Archive, storescp, tmp_path: Path
) -> None:
    """hosp-a may not have the archive push its studies to hosp-b's node (a third party to it)."""
    datasets = study(2)
    store(archive, tmp_path / "in", datasets)
    theirs = storescp()
    register(archive, "hosp-b", "THEIRS", theirs.port)
    responses = pynetdicom_move(scp, "THEIRS", keys("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID))
    assert responses[-1][0].Status == 0xA801
    assert list(theirs.folder.iterdir()) == []


def test_unreachable_destination(
    scp: RunningScp, archive: Archive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Registered, but nothing listens there: pynetdicom cannot associate and answers 0xA801."""
    datasets = study(2)
    store(archive, tmp_path / "in", datasets)
    register(archive, "hosp-a", "DOWN", free_port())
    status = pynetdicom_move(scp, "DOWN", keys("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID))[-1][0]
    assert status.Status == 0xA801
    line = next(r for r in caplog.records if r.getMessage() == "dimse.move")
    assert line.pacs_fields["associated"] is False  # type: ignore[attr-defined]
    assert (line.pacs_fields["instances"], line.pacs_fields["completed"]) == (2, 0)  # type: ignore[attr-defined]


def test_unknown_calling_ae_is_refused(scp: RunningScp, archive: Archive, storescp, tmp_path: Path) -> None:
    datasets = study(2)
    store(archive, tmp_path / "in", datasets)
    dest = storescp()
    register(archive, "hosp-a", "DEST", dest.port)
    identifier = keys("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID)
    status = pynetdicom_move(scp, "DEST", identifier, calling="STRANGER")[-1][0]
    assert status.Status == 0x0124
    assert "not registered" in status.ErrorComment
    assert list(dest.folder.iterdir()) == []


@pytest.mark.parametrize(
    ("identifier", "model"),
    [
        (keys("SERIES", StudyInstanceUID="1.2.3"), "study"),  # no SeriesInstanceUID
        (keys("PATIENT", PatientID="PAT-1"), "study"),  # no PATIENT level in the study root
        (keys("STUDY", StudyInstanceUID="1.2.x"), "study"),  # not a UID
        (keys("FRAME", StudyInstanceUID="1.2.3"), "study"),
        (keys("PATIENT", PatientID="PAT*"), "patient"),  # a unique key takes no wildcard
    ],
    ids=["series-without-uid", "patient-in-study-root", "bad-uid", "bad-level", "wildcard"],
)
def test_invalid_identifier_is_refused(
    scp: RunningScp, archive: Archive, storescp, identifier: Dataset, model: str
) -> None:
    dest = storescp()
    register(archive, "hosp-a", "DEST", dest.port)
    status = pynetdicom_move(scp, "DEST", identifier, model=model)[-1][0]
    assert status.Status == 0xA900
    assert status.ErrorComment


def test_a_failed_suboperation_is_reported(scp: RunningScp, archive: Archive, storescp, tmp_path: Path) -> None:
    """An MPEG-2 object cannot be decoded, and storescp (default) takes no MPEG-2: that sub-operation
    fails, the others complete, and the final Warning names the failed instance."""
    datasets = study(3)
    sent = store(archive, tmp_path / "in", datasets)
    video = undecodable(datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID)
    store(archive, tmp_path / "in", [video], MPEG2MPML)
    dest = storescp()
    register(archive, "hosp-a", "DEST", dest.port)
    responses = pynetdicom_move(scp, "DEST", keys("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID))
    status, identifier = responses[-1]
    assert status.Status == 0xB000
    assert (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (3, 1)
    assert identifier is not None
    assert identifier.FailedSOPInstanceUIDList == video.SOPInstanceUID
    assert_same_objects(sent, dest.folder, as_stored=True)


def test_parse_identifier_rules() -> None:
    uid_a, uid_b = f.uid(), f.uid()
    parsed = parse_identifier(keys("STUDY", StudyInstanceUID=f"{uid_a}\\{uid_b}"), "STUDY")
    assert parsed.study_uids == (uid_a, uid_b)
    parsed = parse_identifier(keys("IMAGE", SOPInstanceUID=uid_a), "PATIENT")  # keys above are optional
    assert (parsed.level, parsed.sop_uids, parsed.study_uids, parsed.patient_id) == ("IMAGE", (uid_a,), (), None)
    with pytest.raises(InvalidIdentifier, match="below the retrieve level"):
        parse_identifier(keys("STUDY", StudyInstanceUID=uid_a, SeriesInstanceUID=uid_b), "STUDY")
    with pytest.raises(InvalidIdentifier, match="one value only"):
        parse_identifier(keys("SERIES", StudyInstanceUID=f"{uid_a}\\{uid_b}", SeriesInstanceUID=uid_a), "STUDY")


def test_destination_contexts_keep_explicit_vr_for_every_class_past_128() -> None:
    """Each SOP class in its stored syntax and in both uncompressed ones; cut at 128 contexts,
    explicit VR little endian for every class survives the cut."""
    instances = [
        StoredInstance(
            study_uid="1.2",
            series_uid="1.2.3",
            sop_uid=f"1.2.3.{i}",
            sop_class_uid=f"1.2.840.10008.5.1.4.1.1.{i}",
            transfer_syntax_uid=JPEG2000Lossless,
            object_key="k",
            size=1,
            rows=None,
            columns=None,
            number_of_frames=None,
            pixel_layout=None,
        )
        for i in range(50)
    ]
    contexts = destination_contexts(instances[:2])
    assert [(cx.abstract_syntax[-1], cx.transfer_syntax) for cx in contexts] == [
        ("0", [ExplicitVRLittleEndian]),
        ("1", [ExplicitVRLittleEndian]),
        ("0", [JPEG2000Lossless]),
        ("1", [JPEG2000Lossless]),
        ("0", [ImplicitVRLittleEndian]),
        ("1", [ImplicitVRLittleEndian]),
    ]
    contexts = destination_contexts(instances)
    assert len(contexts) == 128
    assert sum(cx.transfer_syntax == [ExplicitVRLittleEndian] for cx in contexts) == 50
