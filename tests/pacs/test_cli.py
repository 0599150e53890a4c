"""The `pacs` command line as an operator runs it: a real subprocess, its output and exit code."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from pydicom.data import get_testdata_file
from sqlalchemy import select

from pacs.importer import worker_start_method
from storage.access.principal import Principal
from storage.archive import Archive
from storage.index.migrate import alembic_config, upgrade
from storage.index.models import Instance, PatientIdentity, Study
from tests.kit import dicom_factory as f
from tests.kit.backends import settings_for
from tests.kit.inspect import row_counts, temporary_files
from tests.kit.net import free_port
from tests.kit.seed import seed, seed_orgs
from tests.kit.servers import pacs_executable


def pacs(*args: str, data_dir: Path, create: bool = True) -> subprocess.CompletedProcess[str]:
    """`pacs ARGS --data-dir DATA_DIR`, the folder made first unless `create` is off."""
    if create:
        data_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [pacs_executable(), *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(data_dir.parent)},
    )


def test_import_reports_stored_duplicates_and_rejections(tmp_path: Path) -> None:
    src = tmp_path / "in"
    good = f.study_files(src / "study", n=5)
    shutil.copy(good[0], src / "copy-of-first.dcm")
    (src / "notes.txt").write_text("not an image")
    (src / "cut.dcm").write_bytes(f.truncated(50))
    data = tmp_path / "var"

    r = pacs("import", str(src), data_dir=data)
    assert r.returncode == 1, r.stdout + r.stderr  # something was rejected
    out = " ".join(r.stdout.split())
    assert "stored │ 5" in out or "stored 5" in out, r.stdout
    assert "already present │ 1" in out or "already present 1" in out, r.stdout
    assert "rejected │ 2" in out or "rejected 2" in out, r.stdout
    assert "notes.txt: not_dicom:" in out and "cut.dcm: truncated:" in out

    again = pacs("import", str(src / "study"), data_dir=data)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already present │ 5" in " ".join(again.stdout.split())
    assert "all 5 files already present: nothing new was stored" in again.stdout


def read_blob(archive: Archive, key: str) -> bytes:
    with archive.blobs.open(key) as blob:
        return blob.read()


def test_import_with_several_jobs_ends_as_one_job_does(tmp_path: Path) -> None:
    """`pacs import -j 3` (worker processes) against `-j 1` (in-process): the same summary, the
    same rejections in the same order, the same index and the same stored bytes."""
    src = tmp_path / "in"
    for n, study in enumerate(("a", "b")):
        f.study_files(src / study, n=15, patient_id=f"JOBS-{n}")
    shutil.copy(next((src / "a").iterdir()), src / "a" / "zz-copy.dcm")
    (src / "b" / "notes.txt").write_text("not an image")
    (src / "cut.dcm").write_bytes(f.truncated(50))
    states, outputs = [], []
    for jobs in ("1", "3"):
        data = tmp_path / f"var-{jobs}"
        r = pacs("import", "-j", jobs, str(src), data_dir=data)
        assert r.returncode == 1, r.stdout + r.stderr
        outputs.append([line for line in r.stdout.splitlines() if "│" in line or ": " in line])
        archive = Archive.open(settings_for(data))
        try:
            with archive.db.read() as s:
                studies = sorted(s.execute(select(Study.study_uid, Study.num_series, Study.num_instances)).all())
                rows = sorted(s.execute(select(Instance.sop_uid, Instance.size, Instance.object_key)).all())
            stored = {sop: (size, read_blob(archive, key)) for sop, size, key in rows}
            # each file's copy went into the store (staged) or away: none left, nor a pending row
            assert temporary_files(archive) == [] and row_counts(archive)["pending_blobs"] == 0
        finally:
            archive.close()
        states.append((studies, stored))
    assert outputs[0] == outputs[1]
    assert states[0] == states[1]
    assert len(states[0][1]) == 30
    originals = {p.read_bytes() for study in ("a", "b") for p in (src / study).glob("*.dcm") if p.name != "zz-copy.dcm"}
    assert {blob for _size, blob in states[0][1].values()} == originals  # stored as they were on disk


def test_a_parallel_import_whose_worker_dies_says_so_and_a_second_run_finishes_it(tmp_path: Path) -> None:
    src, data = tmp_path / "in", tmp_path / "var"
    f.study_files(src, n=600)
    data.mkdir()
    command = [pacs_executable(), "import", "-j", "2", str(src), "--data-dir", str(data)]
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 60
    workers: list[str] = []
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:  # 2 forked workers
        workers = children.read_text().split() if children.exists() else []
        time.sleep(0.05)
    assert proc.poll() is None, "the import ended before its workers could be seen"
    archive = Archive.open(settings_for(data))
    try:
        while row_counts(archive)["instances"] < 20 and time.monotonic() < deadline:
            time.sleep(0.02)  # the workers are importing
    finally:
        archive.close()
    os.kill(int(workers[-1]), signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    said = " ".join(out.split())
    assert "an import worker process died" in said and "run the same import again" in said
    assert "Traceback" not in out

    again = pacs("import", "-j", "2", str(src), data_dir=data)
    assert again.returncode == 0, again.stdout + again.stderr
    summary = " ".join(again.stdout.split())
    assert "rejected │ 0" in summary and "already present │ 0" not in summary  # the first run had stored some
    archive = Archive.open(settings_for(data))
    try:
        assert row_counts(archive)["instances"] == 600  # each file once, whichever run stored it
    finally:
        archive.close()


def test_a_parallel_import_forks_its_workers_while_it_runs_one_thread(tmp_path: Path) -> None:
    """Forked, a worker starts with the archive's modules imported; spawned, it imports them
    again (2 s of wall time and 4 s of CPU for two workers on the benchmark machine). The CLI
    reaches the pool before any thread starts (the progress bar's comes after)."""
    src, data = tmp_path / "in", tmp_path / "var"
    f.study_files(src, n=20)
    data.mkdir()
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PACS_LOG_LEVEL": "DEBUG"}
    command = [pacs_executable(), "import", "-j", "2", str(src), "--data-dir", str(data)]
    r = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "import.workers jobs=2 start=fork" in r.stderr


def test_import_workers_are_spawned_while_another_thread_runs() -> None:
    """A forked child would inherit a lock another thread holds, held forever."""
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert worker_start_method() == "spawn"
    finally:
        release.set()
        other.join()


def test_import_to_an_unknown_organization_stops_before_reading_a_file(tmp_path: Path) -> None:
    src = tmp_path / "in"
    f.study_files(src, n=2)
    r = pacs("import", "--org", "nosuch", str(src), data_dir=tmp_path / "var")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "organization 'nosuch' is not registered: pacs org add nosuch --name ..." in " ".join(r.stderr.split())
    assert "FOREIGN KEY" not in r.stdout + r.stderr and "import summary" not in r.stdout


def test_org_add_registers_and_extends(tmp_path: Path) -> None:
    data = tmp_path / "var"
    r = pacs(
        "org", "add", "spital-sf-spiridon", "--name", "Spitalul Sf. Spiridon", "--ae", "CT_SPIRIDON", data_dir=data
    )
    assert r.returncode == 0, r.stderr
    assert "spital-sf-spiridon" in r.stdout and "CT_SPIRIDON" in r.stdout
    r = pacs("org", "add", "spital-sf-spiridon", "--ae", "WS1@10.1.2.3:11112", data_dir=data)
    assert r.returncode == 0, r.stderr
    assert "CT_SPIRIDON" in r.stdout and "WS1@10.1.2.3:11112" in r.stdout

    taken = pacs("org", "add", "clinica-b", "--name", "Clinica B", "--ae", "CT_SPIRIDON", data_dir=data)
    assert taken.returncode == 1 and "already registered to organization spital-sf-spiridon" in taken.stderr
    bad = pacs("org", "add", "clinica-b", "--name", "Clinica B", "--ae", "WS1@nowhere", data_dir=data)
    assert bad.returncode == 2 and "host:port" in bad.stderr
    nameless = pacs("org", "add", "clinica-c", data_dir=data)
    assert nameless.returncode == 1 and "--name" in nameless.stderr


@pytest.mark.parametrize("org_id", ["bad id with spaces", "ţară", "a/b", "x" * 65, "clinic_b", ""])
def test_an_organization_id_has_the_form_of_a_fhir_id(tmp_path: Path, org_id: str) -> None:
    r = pacs("org", "add", org_id, "--name", "Whatever", data_dir=tmp_path / "var")
    assert r.returncode == 2 and "is not an organization ID" in r.stderr, r.stderr
    assert "letters, digits, hyphens and dots" in " ".join(r.stderr.split())
    assert pacs("org", "add", "Spital-4.Iasi", "--name", "Ok", data_dir=tmp_path / "var").returncode == 0


def test_org_list_remove_ae_and_claim_what_an_ae_sent_before_it_was_registered(tmp_path: Path) -> None:
    """The README's order: a modality stores first (unassigned, its IDs in its AE's namespace), the
    operator registers it, then claims what it sent; the studies and patients become the hospital's."""
    data = tmp_path / "var"
    data.mkdir()
    archive = Archive.open(settings_for(data))
    upgrade(archive.db.engine)
    seed(archive, f.ct_dataset(patient_id="P7"), f.ct_dataset(patient_id="P8"), as_=Principal.dicom_node("CT9", None))
    archive.close()

    listed = pacs("org", "list", data_dir=data)
    assert listed.returncode == 0 and "unassigned: 2 studies from AE CT9 (pacs org claim ORG --ae CT9)" in listed.stdout
    early = pacs("org", "claim", "spital-a", "--ae", "CT9", data_dir=data)
    assert early.returncode == 1 and "not registered: pacs org add spital-a --ae CT9 first" in early.stderr
    assert (
        pacs("org", "add", "spital-a", "--name", "Spitalul A", "--ae", "CT9", "--ae", "WS1", data_dir=data).returncode
        == 0
    )
    claimed = pacs("org", "claim", "spital-a", "--ae", "CT9", data_dir=data)
    assert claimed.returncode == 0 and "2 unassigned studies of AE CT9 now belong to spital-a" in claimed.stdout
    listed = " ".join(pacs("org", "list", data_dir=data).stdout.split())
    assert "spital-a Spitalul A CT9 (unbound), WS1 (unbound) 2 enabled" in listed and "unassigned" not in listed

    archive = Archive.open(settings_for(data))
    with archive.db.read() as s:
        identities = {(i.issuer_kind, i.issuer, i.patient_id) for i in s.scalars(select(PatientIdentity))}
        owners = set(s.scalars(select(Study.org_id)))
    archive.close()
    assert identities == {("org", "spital-a", "P7"), ("org", "spital-a", "P8")}  # moved, not duplicated
    assert owners == {"spital-a"}

    removed = pacs("org", "remove-ae", "spital-a", "WS1", data_dir=data)
    assert removed.returncode == 0 and "AE WS1 removed from spital-a" in removed.stdout
    again = pacs("org", "remove-ae", "spital-a", "WS1", data_dir=data)
    assert again.returncode == 1 and "has no AE 'WS1'" in again.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("import", "."),
        ("org", "add", "x", "--name", "X"),
        ("org", "list"),
        ("org", "claim", "x", "--ae", "A"),
        ("org", "remove-ae", "x", "A"),
        ("token", "--org", "x", "--role", "clinician"),
        ("db", "upgrade"),
        ("reindex",),
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_every_command_but_serve_stops_where_there_is_no_archive(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Run from another folder, a command would have made a new empty archive there and said nothing."""
    missing = tmp_path / "elsewhere" / "var"
    r = pacs(*args, data_dir=missing, create=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"no archive at {missing}" in " ".join(r.stderr.split()) and "--data-dir" in r.stderr
    assert not missing.exists()


def test_a_shared_deployment_needs_no_data_folder(tmp_path: Path) -> None:
    """With the index elsewhere (here an explicit SQLite file) the data folder holds nothing a
    command needs, so its absence is no mistake."""
    env = {"PACS_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [pacs_executable(), "db", "upgrade", "--data-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "shared.db").exists() and not (tmp_path / "none").exists()


HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_reindex_rebuilds_a_lost_index_from_the_objects_and_refuses_a_full_one(tmp_path: Path) -> None:
    data = tmp_path / "var"
    archive = Archive.open(settings_for(data))
    upgrade(archive.db.engine)
    seed_orgs(archive)
    st = f.uid()
    seed(archive, *[f.ct_dataset(study_uid=st, instance_number=i) for i in (1, 2)])
    seed(archive, f.ct_dataset(), as_=Principal.dicom_node("ROGUE", None))
    archive.close()
    (data / "index.db").unlink()  # the index is lost; the objects are not

    r = pacs("reindex", data_dir=data)
    assert r.returncode == 0, r.stderr
    assert "reindexed 3 instances of 3 objects (0 second copies" in " ".join(r.stdout.split())
    again = Archive.open(settings_for(data))
    with again.db.read() as s:
        assert {row.study_uid: row.num_instances for row in s.scalars(select(Study))}[st] == 2
    again.close()
    refused = pacs("reindex", data_dir=data)
    assert refused.returncode == 1 and "the index is not empty" in " ".join(refused.stderr.split())


def test_db_upgrade_is_idempotent(tmp_path: Path) -> None:
    data = tmp_path / "var"
    for _ in range(2):
        r = pacs("db", "upgrade", data_dir=data)
        assert r.returncode == 0, r.stderr
        assert f"at revision {HEAD}" in r.stdout
    assert (data / "index.db").exists()


def test_help_explains_the_commands() -> None:
    r = subprocess.run([pacs_executable(), "--help"], capture_output=True, text=True, timeout=60)
    for command in ("serve", "import", "org", "db"):
        assert command in r.stdout
    r = subprocess.run(
        [pacs_executable(), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert "PACS_DICOM_PORT" in r.stdout and "--dicom-workers" in r.stdout


@pytest.mark.parametrize("which", ["dicom", "http"])
def test_a_busy_port_is_one_line_naming_it_and_its_setting(tmp_path: Path, which: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken, other = busy.getsockname()[1], free_port()
        ports = {"dicom": taken, "http": other} if which == "dicom" else {"dicom": other, "http": taken}
        r = subprocess.run(
            [pacs_executable(), "serve", "--data-dir", str(tmp_path / "var")]
            + ["--dicom-port", str(ports["dicom"]), "--http-port", str(ports["http"])],
            capture_output=True,
            text=True,
            timeout=60,
            env={"COLUMNS": "300", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if "error" in ln]
    name, flag, variable = (
        ("DICOM", "--dicom-port", "PACS_DICOM_PORT") if which == "dicom" else ("HTTP", "--http-port", "PACS_HTTP_PORT")
    )
    assert f"cannot listen on the {name} port" in line and f":{taken}: it is in use by another program" in line
    assert f"choose another with {flag} or {variable}" in line


def test_an_accepted_object_logs_no_error(tmp_path: Path) -> None:
    """pydicom's rtdose.dcm holds a UI value its own JSON writer refuses inside a sequence: the
    object is stored, the element is left out of the index's JSON with a WARNING naming its tag
    (not its value), and no ERROR is written."""
    r = pacs("import", get_testdata_file("rtdose.dcm"), data_dir=tmp_path / "var")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stored │ 1" in " ".join(r.stdout.split())
    assert " ERROR " not in r.stdout + r.stderr and "Error while processing" not in r.stdout + r.stderr
    assert "dicomjson.element_dropped tag=300C0002" in r.stderr and "1.2.123.456" not in r.stderr
