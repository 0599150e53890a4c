"""DICOM peers of the SCP: dcmtk's tools as subprocesses and pynetdicom as an SCU in this process.

Every helper talks to a real SCP over a real socket and returns what the peer saw: answers,
responses, received files. `TCP_NODELAY=1` is exported to dcmtk (Debian's leaves Nagle on).
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs.server import RunningScp
from storage.access.orgs import AeSpec, add_org
from storage.archive import Archive
from tests.kit.net import free_port
from tests.kit.tools import require_tool

ENV = {**os.environ, "TCP_NODELAY": "1"}
STUDY_ROOT = StudyRootQueryRetrieveInformationModelFind


def keys(level: str | None, **values: object) -> Dataset:
    """A query or retrieve identifier: QueryRetrieveLevel (if given) and keys by keyword."""
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def register(archive: Archive, org: str, ae_title: str, port: int) -> None:
    """Register `ae_title` at 127.0.0.1:`port` as a node of `org` (a C-MOVE destination)."""
    with archive.db.write() as s:
        add_org(s, org, f"Organization {org}", [AeSpec(ae_title, "127.0.0.1", port)])


# ----- C-FIND -----------------------------------------------------------------------------


@dataclass
class Found:
    answers: list[Dataset]
    log: str  # findscu's verbose output


def findscu(port: int, *query: str, model: str = "-S", aet: str = "CT1") -> Found:
    """dcmtk findscu with `query` keys (``-k`` each); the answers as written by ``-X``, in order."""
    tool = require_tool("findscu")
    with tempfile.TemporaryDirectory() as out:
        args = [tool, "-v", model, "-X", "-od", out, "-aet", aet, "-aec", "MUNIPACS"]
        for key in query:
            args += ["-k", key]
        r = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode("utf-8", "replace")
        answers = [dcmread(p) for p in sorted(Path(out).glob("rsp*.dcm"))]
    return Found(answers, (r.stdout + r.stderr).decode("utf-8", "replace"))


def pyfind(port: int, query: Dataset, model: str = STUDY_ROOT, aet: str = "CT1") -> list[tuple[int, Dataset | None]]:
    """(status, identifier) of every response, with pynetdicom as the SCU; the last is the final one."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="MUNIPACS")
    assert assoc.is_established
    try:
        return [(int(status.Status), ds) for status, ds in assoc.send_c_find(query, model)]
    finally:
        assoc.release()


def last_status(responses: list[tuple[int, Dataset | None]]) -> int:
    return responses[-1][0]


# ----- C-MOVE and C-GET -------------------------------------------------------------------


def movescu(
    scp: RunningScp, destination: str, *query: str, model: str = "-S", calling: str = "CT1", ok: bool = True
) -> str:
    """dcmtk movescu; its verbose output (the responses it received). It exits non-zero on a failure status."""
    command = [require_tool("movescu"), "-v", "-aet", calling, "-aec", "MUNIPACS", "-aem", destination, model]
    for key in query:
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


def pynetdicom_get(
    scp: RunningScp,
    identifier: Dataset,
    *,
    calling: str = "CT1",
    model: str = "study",
    received: list[Dataset] | None = None,
    then: Callable[[evt.Event], None] | None = None,
    max_pdu: int = 16382,
) -> list[tuple[Dataset, Dataset | None]]:
    """A C-GET by pynetdicom as SCU, storage SCP for CT in explicit VR little endian only."""
    sop_class = {
        "study": StudyRootQueryRetrieveInformationModelGet,
        "patient": PatientRootQueryRetrieveInformationModelGet,
    }
    kept = [] if received is None else received

    def on_store(event: evt.Event) -> int:
        kept.append(event.dataset)
        if then is not None:
            then(event)
        return 0x0000

    assoc = get_association(scp, on_store, calling=calling, sop_class=sop_class[model], max_pdu=max_pdu)
    try:
        return list(assoc.send_c_get(identifier, sop_class[model], msg_id=1))
    finally:
        assoc.release()


def get_association(
    scp: RunningScp,
    on_store: Callable[[evt.Event], int],
    *,
    calling: str = "CT1",
    sop_class: str = StudyRootQueryRetrieveInformationModelGet,
    max_pdu: int = 16382,
    storage_syntaxes: Sequence[Sequence[str]] = ((ExplicitVRLittleEndian,),),
) -> Association:
    """An established association for C-GET by pynetdicom, storage SCP for CT (one context per
    entry of `storage_syntaxes`: explicit VR little endian only by default), its C-STOREs
    answered by `on_store`."""
    ae = AE(ae_title=calling)
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(sop_class)
    for syntaxes in storage_syntaxes:
        ae.add_requested_context(CTImageStorage, list(syntaxes))
    assoc = ae.associate(
        "127.0.0.1",
        scp.port,
        ae_title="MUNIPACS",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    return assoc


# ----- what a receiver got ----------------------------------------------------------------


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


@dataclass
class Receiver:
    """A dcmtk storescp writing what it receives to `folder`."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes]
    log: Path


class Receivers:
    """dcmtk storescp receivers started for one test (extra options, e.g. `+xa` to accept
    compressed syntaxes), all stopped by `stop`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[Receiver] = []

    def __call__(self, *options: str, name: str = "received") -> Receiver:
        folder, log = self.folder / name, self.folder / f"{name}.log"
        folder.mkdir()
        port = free_port()
        command = [require_tool("storescp"), "+B", "-od", str(folder), *options, str(port)]
        with open(log, "wb") as out:
            process = subprocess.Popen(command, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        self.started.append(Receiver(port, folder, process, log))
        _wait_listening(port, process)
        return self.started[-1]

    def stop(self) -> None:
        for r in self.started:
            r.process.terminate()
            r.process.wait(10)


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "storescp exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"storescp is not listening on {port}")
