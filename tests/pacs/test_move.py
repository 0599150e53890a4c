"""C-MOVE against the SCP with real peers: dcmtk's movescu asks, dcmtk's storescp receives.

Each test stores its objects as the registered modality CT1 of hosp-a, registers the storescp
it starts as `DEST@127.0.0.1:<port>` of hosp-a, and compares what storescp wrote with what the
archive holds: the same instances, the stored bytes when the destination took the stored
syntax (storescp `+B` writes the data set as received), the same pixels when it did not.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import MPEG2MPML, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from pacs.logconfig import drop_restated_library_errors
from pacs.server import RunningScp
from pacs.suboperations import destination_contexts
from storage.access.orgs import AeSpec, add_org
from storage.archive import Archive
from storage.errors import InvalidIdentifier
from storage.retrieve.retrieval import StoredInstance
from storage.retrieve.selection import parse_identifier
from tests.kit import dicom_factory as f
from tests.kit.dimse import (
    assert_same_objects,
    keys,
    movescu,
    pynetdicom_move,
    register,
)
from tests.kit.inspect import spooled
from tests.kit.net import free_port
from tests.kit.seed import seed_files
from tests.kit.studies import slices

pytestmark = pytest.mark.dcmtk


# ----- moves that succeed -------------------------------------------------------------------


def test_move_study_series_instance(scp: RunningScp, archive: Archive, storescp, tmp_path: Path) -> None:
    datasets = slices(6)
    sent = seed_files(archive, tmp_path / "in", datasets)
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
    mine = seed_files(archive, tmp_path / "a", slices(3, patient_id="PAT-7")) + seed_files(
        archive, tmp_path / "b", slices(2, patient_id="PAT-7")
    )
    seed_files(archive, tmp_path / "c", slices(2, patient_id="PAT-8"))  # another patient: not sent
    dest = storescp()
    register(archive, "hosp-a", "DEST", dest.port)
    out = movescu(scp, "DEST", "QueryRetrieveLevel=PATIENT", "PatientID=PAT-7", model="-P")
    assert "Final Move Response (Success)" in out
    assert_same_objects(mine, dest.folder, as_stored=True)


def test_move_a_list_of_studies(scp: RunningScp, archive: Archive, storescp, tmp_path: Path) -> None:
    a, b, c = slices(2), slices(2), slices(2)
    sent = seed_files(archive, tmp_path / "a", a) + seed_files(archive, tmp_path / "b", b)
    seed_files(archive, tmp_path / "c", c)
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
    datasets = slices(3)
    sent = seed_files(archive, tmp_path / "in", datasets, ts)
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
    assert spooled(archive) == []  # the decoded copies (and S3 downloads) are gone once sent


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
    drop_restated_library_errors()  # as `pacs serve` does: the refusal is our WARNING, not an ERROR
    datasets = slices(2)
    seed_files(archive, tmp_path / "in", datasets)
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
    datasets = slices(2)
    seed_files(archive, tmp_path / "in", datasets)
    theirs = storescp()
    register(archive, "hosp-b", "THEIRS", theirs.port)
    responses = pynetdicom_move(scp, "THEIRS", keys("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID))
    assert responses[-1][0].Status == 0xA801
    assert list(theirs.folder.iterdir()) == []


def test_unreachable_destination(
    scp: RunningScp, archive: Archive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Registered, but nothing listens there: pynetdicom cannot associate and answers 0xA801."""
    datasets = slices(2)
    seed_files(archive, tmp_path / "in", datasets)
    register(archive, "hosp-a", "DOWN", free_port())
    status = pynetdicom_move(scp, "DOWN", keys("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID))[-1][0]
    assert status.Status == 0xA801
    line = next(r for r in caplog.records if r.getMessage() == "dimse.move")
    assert line.pacs_fields["associated"] is False  # type: ignore[attr-defined]
    assert (line.pacs_fields["instances"], line.pacs_fields["completed"]) == (2, 0)  # type: ignore[attr-defined]


def test_unknown_calling_ae_is_refused(scp: RunningScp, archive: Archive, storescp, tmp_path: Path) -> None:
    datasets = slices(2)
    seed_files(archive, tmp_path / "in", datasets)
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
    datasets = slices(3)
    sent = seed_files(archive, tmp_path / "in", datasets)
    video = f.undecodable(datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID)
    seed_files(archive, tmp_path / "in", [video], MPEG2MPML)
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
