"""C-ECHO and C-STORE against the SCP with real peers: pynetdicom and dcmtk's storescu/echoscu."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import UID
from pynetdicom import AE, _config, build_context
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from pacs.server import RunningScp
from pacs.status import error_comment
from storage.archive import Archive
from storage.dicom.parse import Source, parse
from storage.errors import RejectedInput
from storage.index.models import Instance, Study
from storage.logs import FIELDS
from tests.kit import dicom_factory as f
from tests.kit.dimse import STUDY_ROOT, findscu, keys, pyfind
from tests.kit.inspect import blob_keys, row_counts, temporary_files
from tests.kit.tools import require_tool

ENV = {**os.environ, "TCP_NODELAY": "1"}


def associate(scp: RunningScp, contexts: list, calling: str = "CT1", called: str = "MUNIPACS"):
    ae = AE(ae_title=calling)
    ae.requested_contexts = contexts
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=called)
    return assoc


def stored_dataset(archive: Archive, sop_uid: str) -> pydicom.Dataset:
    with archive.db.read() as s:
        key = s.scalar(select(Instance.object_key).where(Instance.sop_uid == sop_uid))
    assert key is not None, f"{sop_uid} is not indexed"
    with archive.blobs.open(key) as blob:
        return pydicom.dcmread(DicomBytesIO(blob.read()))


def test_echo_pynetdicom_and_echoscu(scp: RunningScp) -> None:
    assoc = associate(scp, [build_context(Verification)], calling="ANYONE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    echoscu = require_tool("echoscu")
    r = subprocess.run(
        [echoscu, "-aet", "NOBODY", "-aec", "MUNIPACS", "127.0.0.1", str(scp.port)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr


def test_wrong_called_ae_is_rejected_and_the_log_says_which_and_why(
    scp: RunningScp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pacs.server")
    assoc = associate(scp, [build_context(Verification)], called="NOT-US")
    assert assoc.is_rejected
    deadline = time.monotonic() + 5
    while not [r for r in caplog.records if r.getMessage() == "dimse.assoc.rejected"] and time.monotonic() < deadline:
        time.sleep(0.02)
    (line,) = [getattr(r, FIELDS) for r in caplog.records if r.getMessage() == "dimse.assoc.rejected"]
    assert line["called_ae"] == "NOT-US"  # what the modality called, not the archive's own title
    assert line["reason"] == "called AE title not recognised: this archive is MUNIPACS"


def test_error_comments_fit_their_64_characters_and_the_log_keeps_the_whole_reason(
    scp: RunningScp, caplog: pytest.LogCaptureFixture
) -> None:
    """A reason longer than an LO (here a long UID quoted in it) is cut at a word with "...";
    the request's log line keeps all of it."""
    caplog.set_level(logging.INFO, logger="pacs.find")
    uid = "1.2." + "3" * 60
    responses = pyfind(scp.port, keys("STUDY", StudyInstanceUID=uid + ".x"))
    status = responses[-1]
    assert status[0] == 0xA900
    ae = AE(ae_title="CT1")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="MUNIPACS")
    ((rsp, _),) = list(assoc.send_c_find(keys("STUDY", StudyInstanceUID=uid + ".x"), STUDY_ROOT))
    assoc.release()
    comment = str(rsp.ErrorComment)
    assert len(comment) <= 64 and comment.endswith("...") and comment.startswith("StudyInstanceUID: '1.2.333")
    (logged, _) = [getattr(r, FIELDS)["detail"] for r in caplog.records if r.getMessage() == "dimse.find"]
    assert logged.startswith(comment[:-3]) and uid + ".x" in logged and len(logged) > 64


@pytest.mark.parametrize(
    ("text", "comment"),
    [
        ("short enough", "short enough"),
        ("a" * 64, "a" * 64),
        (
            "calling AE STRANGER is not registered to an organization of this city",
            "calling AE STRANGER is not registered to an organization of...",
        ),
        ("x" * 70, "x" * 61 + "..."),
        ("a tab\t, a backslash \\ and \x01 are not LO", "a tab , a backslash and are not LO"),
    ],
)
def test_error_comment_is_an_lo(text: str, comment: str) -> None:
    assert error_comment(text) == comment and len(comment) <= 64


def _pydicom_test_files() -> list[tuple[Path, UID, UID]]:
    """Every bundled pydicom file that is a valid storable instance, with its SOP class and TS."""
    out = []
    for path in f.bundled_pydicom_files("test_files") + f.bundled_pydicom_files("charset_files"):
        try:
            parsed = parse(Source(path=path))
        except RejectedInput:
            continue
        out.append((path, UID(parsed.sop_class_uid), UID(parsed.transfer_syntax_uid)))
    return out


@pytest.fixture()
def send_raw() -> Iterator[None]:
    """Make pynetdicom send a file's encoded bytes as they are, the way a modality streams them."""
    previous, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


@pytest.mark.usefixtures("send_raw")
def test_every_pydicom_test_file_round_trips(scp: RunningScp, archive: Archive) -> None:
    """All transfer syntaxes and character sets pydicom ships: stored as sent, read back equal."""
    files = _pydicom_test_files()
    assert len(files) > 100
    contexts = sorted({(sop, ts) for _, sop, ts in files})
    first_sent: dict[str, Path] = {}
    for batch in (contexts[i : i + 100] for i in range(0, len(contexts), 100)):
        assoc = associate(scp, [build_context(sop, [ts]) for sop, ts in batch])
        assert assoc.is_established
        for path, sop, ts in files:
            if (sop, ts) not in batch:
                continue
            status = assoc.send_c_store(path)
            assert status.Status == 0x0000, f"{path.name}: 0x{status.Status:04X} {status.get('ErrorComment')}"
            first_sent.setdefault(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID), path)
        assoc.release()
    assert row_counts(archive)["instances"] == len(first_sent)
    for sop_uid, path in first_sent.items():
        original = pydicom.dcmread(path)
        back = stored_dataset(archive, sop_uid)
        assert back.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, path.name
        assert back == original, path.name


def storescu(scp: RunningScp, *args: object) -> None:
    """dcmtk's storescu as a registered modality of hosp-a; fails the test on a non-zero exit."""
    command = [require_tool("storescu"), "-aet", "STORESCU", "-aec", "MUNIPACS", *map(str, args[:-1])]
    command += ["127.0.0.1", str(scp.port), str(args[-1])]
    r = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_storescu_sends_a_study(scp: RunningScp, archive: Archive, tmp_path: Path) -> None:
    files = f.study_files(tmp_path / "study", n=20)
    storescu(scp, "+sd", "+r", tmp_path / "study")
    assert row_counts(archive)["instances"] == 20
    with archive.db.read() as s:
        study = s.scalars(select(Study)).one()
    assert (study.org_id, study.num_instances, study.num_series) == ("hosp-a", 20, 2)
    ds = pydicom.dcmread(files[3])
    assert stored_dataset(archive, ds.SOPInstanceUID) == ds
    # the same study again: acknowledged, stored once
    storescu(scp, "+sd", "+r", tmp_path / "study")
    assert row_counts(archive)["instances"] == 20


# storescu's option that proposes a syntax (with the uncompressed ones), and a pydicom sample in it
STORESCU_CASES = {
    "1.2.840.10008.1.2.1.99": ("-xd", "image_dfl.dcm"),
    "1.2.840.10008.1.2.4.50": ("-xy", "SC_rgb_jpeg_dcmtk.dcm"),
    "1.2.840.10008.1.2.4.51": ("-xx", "JPEG-lossy.dcm"),
    "1.2.840.10008.1.2.4.70": ("-xs", "SC_rgb_jpeg_gdcm.dcm"),
    "1.2.840.10008.1.2.4.80": ("-xt", "MR_small_jpeg_ls_lossless.dcm"),
    "1.2.840.10008.1.2.4.81": ("-xu", "JPEGLSNearLossless_08.dcm"),
    "1.2.840.10008.1.2.4.90": ("-xv", "MR_small_jp2klossless.dcm"),
    "1.2.840.10008.1.2.4.91": ("-xw", "JPEG2000.dcm"),
    "1.2.840.10008.1.2.5": ("-xr", "SC_rgb_rle.dcm"),
}


@pytest.mark.parametrize("ts", sorted(STORESCU_CASES))
def test_storescu_compressed_kept_as_sent(scp: RunningScp, archive: Archive, tmp_path: Path, ts: str) -> None:
    """dcmtk offers a compressed syntax with the uncompressed ones; the archive takes and keeps
    the compressed bytes. (Big endian arrives in the pynetdicom round trip above.)"""
    option, name = STORESCU_CASES[ts]
    sample = pydicom.dcmread(next(p for p in f.bundled_pydicom_files() if p.name == name))
    assert sample.file_meta.TransferSyntaxUID == ts
    # pydicom's samples share UIDs across syntaxes and some lack Study/Series UIDs: a fresh
    # copy with its own UIDs, pixel data untouched
    sample.SOPInstanceUID = sample.file_meta.MediaStorageSOPInstanceUID = f.uid()
    sample.StudyInstanceUID, sample.SeriesInstanceUID = f.uid(), f.uid()
    path = tmp_path / name
    sample.save_as(path, enforce_file_format=True)
    storescu(scp, option, path)
    back = stored_dataset(archive, sample.SOPInstanceUID)
    assert back.file_meta.TransferSyntaxUID == ts
    assert back.PixelData == sample.PixelData
    assert (back.StudyInstanceUID, back.Rows, back.Columns) == (sample.StudyInstanceUID, sample.Rows, sample.Columns)


BAD_OVER_DIMSE = [
    ("garbage-data-set", f.garbage_dataset, 0xC000),
    ("missing-study-uid", lambda: f.without("StudyInstanceUID"), 0xA900),
    ("invalid-series-uid", lambda: f.with_uid("SeriesInstanceUID", "1.2.x.3"), 0xA900),
    ("truncated", lambda: f.truncated(64), 0xC000),
    ("unknown-charset", lambda: f.with_charset("ISO_IR 999", b"Popescu^Ion"), 0xA900),
    ("wrong-charset-bytes", lambda: f.with_charset("ISO_IR 192", b"Popescu^\xff\xfe"), 0xA900),
    ("nested-40-levels", lambda: f.nested(40), 0xA900),
    ("nested-1000-levels", lambda: f.nested(1000), 0xA900),
    ("unknown-vr-study-date", lambda: f.flipped_vr("StudyDate"), 0xC000),
    ("unknown-vr-study-time", lambda: f.flipped_vr("StudyTime"), 0xC000),
    ("unknown-vr-modality", lambda: f.flipped_vr("Modality"), 0xC000),
    ("unknown-vr-patient-id", lambda: f.flipped_vr("PatientID", b"\x00\x01"), 0xC000),
    ("pixel-data-too-long", lambda: f.pixel_data_of_length(64 * 64 * 2 + 1024 * 1024), 0xA900),
    ("pixel-data-too-short", lambda: f.pixel_data_of_length(100), 0xA900),
]


@pytest.mark.usefixtures("send_raw")
@pytest.mark.parametrize(("case", "make", "status"), BAD_OVER_DIMSE, ids=[c[0] for c in BAD_OVER_DIMSE])
def test_bad_input_gets_a_precise_status(
    scp: RunningScp, archive: Archive, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str, make, status: int
) -> None:
    """Each refusal: its status and an Error Comment (never a server path), one
    `ingest.rejected` line, nothing stored, no temporary file of the received data set left."""
    path = tmp_path / "bad.dcm"
    path.write_bytes(make())
    before = row_counts(archive), blob_keys(archive)
    assoc = associate(scp, [build_context(CTImageStorage)])
    with caplog.at_level(logging.INFO):
        rsp = assoc.send_c_store(path)
        assoc.release()
    assert rsp.Status == status, rsp
    assert rsp.ErrorComment  # says why, in the response the modality logs
    assert "/" not in rsp.ErrorComment, rsp.ErrorComment  # no server path (nor any path)
    rejected = [getattr(r, FIELDS)["status"] for r in caplog.records if r.getMessage() == "ingest.rejected"]
    assert rejected == [f"0x{status:04X}"]
    assert (row_counts(archive), blob_keys(archive)) == before
    assert temporary_files(archive) == []


def test_unknown_ae_is_held_unassigned(scp: RunningScp, archive: Archive) -> None:
    assoc = associate(scp, [build_context(CTImageStorage)], calling="VISITOR")
    ds = f.ct_dataset()
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    with archive.db.read() as s:
        study = s.scalars(select(Study)).one()
    assert (study.org_id, study.source_ae) == (None, "VISITOR")


def test_org_added_while_running_is_seen_at_once(scp: RunningScp, archive: Archive) -> None:
    from storage.access.orgs import AeSpec, add_org

    with archive.db.write() as s:
        add_org(s, "clinic-b", "Clinica B", [AeSpec("US-B")])
    assoc = associate(scp, [build_context(CTImageStorage)], calling="US-B")
    assert assoc.send_c_store(f.ct_dataset()).Status == 0x0000
    assoc.release()
    with archive.db.read() as s:
        assert s.scalar(select(Study.org_id)) == "clinic-b"


def test_many_concurrent_associations(scp: RunningScp, archive: Archive) -> None:
    study = f.uid()
    failures: list[str] = []

    def sender(i: int) -> None:
        assoc = associate(scp, [build_context(CTImageStorage)])
        if not assoc.is_established:
            failures.append(f"{i}: not established")
            return
        series = f.uid()
        for _ in range(5):
            st = assoc.send_c_store(f.ct_dataset(study_uid=study, series_uid=series))
            if st.Status != 0:
                failures.append(f"{i}: 0x{st.Status:04X}")
        assoc.release()

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    with archive.db.read() as s:
        study_row = s.scalars(select(Study)).one()
    assert (study_row.num_instances, study_row.num_series) == (50, 10)


def _ended_acceptors() -> list[Association]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, Association) and o.is_acceptor and not o.is_alive()]


def test_an_ended_association_is_not_kept_in_memory(scp: RunningScp, tmp_path: Path) -> None:
    """Every association the SCP served, ended, is freed: a server that kept them (the direct
    sender's table once held each one through its own value) grew ~47 KB per association, a
    modality network's day of them in a few hundred MB."""
    f.study_files(tmp_path / "study", n=2)
    echoscu = require_tool("echoscu")
    earlier = weakref.WeakSet(_ended_acceptors())  # another test's, whatever holds them
    for _ in range(3):
        storescu(scp, "+sd", "+r", tmp_path / "study")
        findscu(scp.port, "QueryRetrieveLevel=STUDY", "PatientName", aet="STORESCU")
        echo = [echoscu, "-aet", "STORESCU", "-aec", "MUNIPACS", "127.0.0.1", str(scp.port)]
        subprocess.run(echo, check=True, timeout=60)
    deadline = time.monotonic() + 10
    while scp.server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)  # the acceptor threads end just after the peers' release
    assert [a for a in _ended_acceptors() if a not in earlier] == []
