"""A mutation test of ingest: 100 broken files over C-STORE and STOW-RS, each answered precisely.

The files are valid objects with one mutation each (`tests.kit.mutations`, a fixed seed):
truncated, a header byte flipped, an unknown VR, a wrong or a 4 GiB length, sequences nested
40 and 1000 deep, bad UIDs, a wrong character set, Pixel Data of the wrong size. Each goes to
the SCP as a C-STORE (pynetdicom streams the file's data set as it is, never re-encoded) and to
the gateway as a one-part STOW-RS request, per backend pair; each channel fills an archive of
its own, so that its successes are its instances.

Every answer is a success or a refusal with a precise status (PS3.4 B.2.3: 0xA7xx, 0xA9xx,
0xCxxx) and a reason: an Error Comment over DIMSE, a FailureReason (and a Warning header)
over STOW-RS, never a 5xx, never a server path. Every refusal is one `ingest.rejected` log line;
nothing logs an error or a traceback; no temporary file is left; the servers still answer
C-ECHO and /healthz. The sending happens once per backend (the `run` fixture); the tests then
read its answers, one test per mutant and channel, named after the mutation and its index.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE, _config, build_context
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs.server import RunningScp, start
from storage.archive import Archive
from storage.logs import FIELDS
from tests.kit.backends import BACKENDS, module_archive
from tests.kit.dicomweb import Gateway, serve_gateway
from tests.kit.inspect import blob_keys, row_counts, temporary_files
from tests.kit.mutations import Mutant, mutants
from tests.kit.seed import seed_orgs

MUTANTS = mutants()
BOUNDARY = "mutant-boundary-5d1e"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
#: PS3.4 B.2.3 warnings: the object is stored
WARNINGS = range(0xB000, 0xB008)
#: C-STORE failures that say what was wrong: out of resources, data set does not match the SOP
#: class, cannot understand; and PS3.7 C.5's refusals (SOP class not supported, not authorized)
FAILURES = [range(0xA700, 0xA800), range(0xA900, 0xAA00), range(0xC000, 0xD000), range(0x0122, 0x0125)]
#: what pynetdicom's last-resort guard answers when a handler raises: a crash, not a refusal
CRASHED = 0xC211
OURS = ("storage", "pacs", "gateway", "uvicorn")


class _Records(logging.Handler):
    """Every log record of the run, from every thread (the SCP's, uvicorn's)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _capturing() -> Iterator[_Records]:
    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


@dataclass
class Answer:
    """What one channel answered for one mutant, and what the server logged meanwhile."""

    stored: bool
    status: int | None  # DIMSE status, or the STOW-RS FailureReason (0 when stored); None: no answer
    reason: str  # the Error Comment, or the STOW-RS Warning headers
    text: str  # everything the peer was told, to look for server paths in
    http_status: int | None = None
    response: dict[str, object] = field(default_factory=dict)
    logs: list[logging.LogRecord] = field(default_factory=list)


@dataclass
class Run:
    """One backend pair's run: its two archives, its two servers, and every answer."""

    dimse_archive: Archive
    stow_archive: Archive
    scp: RunningScp
    gateway: Gateway
    dimse: dict[str, Answer]
    stow: dict[str, Answer]
    records: list[logging.LogRecord]


@pytest.fixture(scope="module", params=BACKENDS)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Send every mutant over C-STORE to one archive's SCP and over STOW-RS to another's gateway."""
    tmp = tmp_path_factory.mktemp("mutation")
    with (
        module_archive(request, tmp / "dimse") as (dimse_settings, dimse_archive),
        module_archive(request, tmp / "stow") as (stow_settings, stow_archive),
        contextmanager(serve_gateway)(stow_settings, stow_archive) as gw,
        _capturing() as log,
    ):
        seed_orgs(dimse_archive)  # CT1 is hosp-a's
        scp = start(dimse_settings, dimse_archive, port=0)
        try:
            dimse = _send_c_stores(scp.port, tmp / "sent", log)
            stow = _send_stows(gw, log)
            yield Run(dimse_archive, stow_archive, scp, gw, dimse, stow, log.records)
        finally:
            scp.shutdown()


def _associate(port: int, contexts: list[tuple[str, str]]) -> Association:
    ae = AE(ae_title="CT1")
    ae.requested_contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in contexts]
    assoc = ae.associate("127.0.0.1", port, ae_title="MUNIPACS")
    assert assoc.is_established
    return assoc


def _send_c_stores(port: int, folder: Path, log: _Records) -> dict[str, Answer]:
    """C-STORE each mutant's data set as its bytes are (pynetdicom streams a file from its path)."""
    folder.mkdir()
    contexts = sorted({(m.sop_class_uid, m.transfer_syntax) for m in MUTANTS})
    previous, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    answers = {}
    assoc = _associate(port, contexts)
    try:
        for m in MUTANTS:
            path = folder / f"{m.id}.dcm"
            path.write_bytes(m.dimse_file)
            if not assoc.is_established:  # a mutant ended the association: the next one opens another
                assoc = _associate(port, contexts)
            first = len(log.records)
            rsp = assoc.send_c_store(path)
            status = int(rsp.Status) if "Status" in rsp else None
            comment = str(rsp.get("ErrorComment", ""))
            stored = status is not None and (status == 0 or status in WARNINGS)
            answers[m.id] = Answer(stored, status, comment, f"{comment} {rsp}", logs=log.records[first:])
    finally:
        if assoc.is_established:
            assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return answers


def _send_stows(gw: Gateway, log: _Records) -> dict[str, Answer]:
    """POST each mutant as the one part of a STOW-RS request."""
    answers = {}
    headers = {**gw.headers(), "Content-Type": CONTENT_TYPE, "Accept": "application/dicom+json"}
    with httpx.Client(timeout=60) as client:
        for m in MUTANTS:
            assert BOUNDARY.encode() not in m.data
            body = b"".join(
                [
                    f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                    m.data,
                    f"\r\n--{BOUNDARY}--\r\n".encode(),
                ]
            )
            first = len(log.records)
            try:
                r = client.post(f"{gw.dicomweb}/studies", content=body, headers=headers)
            except httpx.TransportError as exc:  # the server dropped the connection: no answer at all
                answers[m.id] = Answer(False, None, "", repr(exc), logs=log.records[first:])
                continue
            response = r.json() if r.headers.get("content-type", "").startswith("application/dicom+json") else {}
            failed = response.get("00081198", {}).get("Value", [])
            status = failed[0].get("00081197", {}).get("Value", [None])[0] if failed else 0
            warnings = " ".join(r.headers.get_list("warning"))
            text = f"{r.text} {r.headers}"
            stored = r.status_code == 200 and not failed
            answers[m.id] = Answer(stored, status, warnings, text, r.status_code, response, log.records[first:])
    return answers


def _events(records: list[logging.LogRecord], name: str) -> list[dict[str, object]]:
    return [getattr(r, FIELDS, {}) for r in records if r.getMessage() == name]


def _server_paths(run: Run) -> list[str]:
    """Paths of the server's that no peer should be told: its data folders and the system's temp."""
    return [
        str(run.dimse_archive.settings.data_dir),
        str(run.stow_archive.settings.data_dir),
        tempfile.gettempdir(),
        "/tmp",
    ]


def _is_failure(status: int) -> bool:
    return any(status in r for r in FAILURES)


def _check_refusal(m: Mutant, a: Answer, via: str) -> None:
    """A refusal: a precise status with a reason, and the one `ingest.rejected` line that says so."""
    assert a.status is not None and _is_failure(a.status), f"{m.id} ({m.note}): imprecise status {a.status!r}"
    assert a.reason.strip(), f"{m.id} ({m.note}): 0x{a.status:04X} without a reason"
    if m.refused is not None:
        assert a.status in m.refused, f"{m.id} ({m.note}): 0x{a.status:04X} {a.reason}"
    (line,) = _events(a.logs, "ingest.rejected")
    assert line["via"] == via and line["status"] == f"0x{a.status:04X}" and line["reason"] and line["detail"], line


def _check_no_path(run: Run, m: Mutant, a: Answer) -> None:
    for path in _server_paths(run):
        assert path not in a.text, f"{m.id}: the answer names a server path: {a.text[:300]}"


@pytest.mark.parametrize("m", MUTANTS, ids=lambda m: m.id)
def test_a_c_store_of_a_mutant_is_stored_or_refused_with_a_status_and_a_reason(run: Run, m: Mutant) -> None:
    a = run.dimse[m.id]
    assert a.status is not None, f"{m.id} ({m.note}): no C-STORE response (the association ended)"
    assert a.status != CRASHED or a.reason, f"{m.id} ({m.note}): 0xC211 without a comment: the handler crashed"
    _check_no_path(run, m, a)
    if a.stored:
        assert m.refused is None, f"{m.id} ({m.note}): stored, should be refused with {sorted(m.refused)}"
        assert not _events(a.logs, "ingest.rejected") and not _events(a.logs, "ingest.already_present")
    else:
        _check_refusal(m, a, "dimse")


@pytest.mark.parametrize("m", MUTANTS, ids=lambda m: m.id)
def test_a_stow_of_a_mutant_is_stored_or_refused_with_a_failure_reason(run: Run, m: Mutant) -> None:
    a = run.stow[m.id]
    assert a.http_status is not None and a.http_status < 500, f"{m.id} ({m.note}): HTTP {a.http_status}"
    _check_no_path(run, m, a)
    if a.stored:
        assert m.refused is None, f"{m.id} ({m.note}): stored, should be refused with {sorted(m.refused)}"
        (item,) = a.response["00081199"]["Value"]  # type: ignore[index]
        assert "00081196" not in item, f"{m.id}: stored before (WarningReason {item['00081196']})"
        assert not _events(a.logs, "ingest.rejected")
    else:
        assert a.http_status == 409, f"{m.id} ({m.note}): HTTP {a.http_status} {a.text[:300]}"
        assert "00081199" not in a.response
        _check_refusal(m, a, "stow")


@pytest.mark.parametrize("m", [m for m in MUTANTS if m.data.startswith(m.meta)], ids=lambda m: m.id)
def test_both_channels_answer_the_same_data_set_alike(run: Run, m: Mutant) -> None:
    """Where the file meta is intact, C-STORE and STOW-RS carry the same data set: one ingest, one answer."""
    dimse, stow = run.dimse[m.id], run.stow[m.id]
    assert (dimse.stored, dimse.status) == (stow.stored, stow.status), f"{m.id} ({m.note})"


def test_each_archive_holds_as_many_instances_as_its_channel_stored(run: Run) -> None:
    for archive, answers in ((run.dimse_archive, run.dimse), (run.stow_archive, run.stow)):
        stored = sum(a.stored for a in answers.values())
        counts = row_counts(archive)
        assert (counts["instances"], counts["pending_blobs"]) == (stored, 0)
        assert len(blob_keys(archive)) == stored  # no blob of a refused object kept


def test_no_temporary_file_is_left(run: Run) -> None:
    assert temporary_files(run.dimse_archive) == []
    assert temporary_files(run.stow_archive) == []


def test_nothing_logged_an_error_or_a_traceback(run: Run) -> None:
    """A refusal is a WARNING line; an ERROR of ours or uvicorn's, or any traceback, is a crash."""
    errors = [r for r in run.records if r.levelno >= logging.ERROR and r.name.startswith(OURS)]
    traces = [r for r in run.records if r.exc_info is not None]
    assert not errors and not traces, [(r.name, r.getMessage(), getattr(r, FIELDS, None)) for r in errors + traces]


def test_the_servers_still_answer_c_echo_and_healthz(run: Run) -> None:
    ae = AE(ae_title="CT1")
    ae.requested_contexts = [build_context(Verification)]
    assoc = ae.associate("127.0.0.1", run.scp.port, ae_title="MUNIPACS")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert httpx.get(f"{run.gateway.url}/healthz", timeout=10).status_code == 200
