"""The `pacs` command line as an operator runs it: a real subprocess, its output and exit code."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from alembic.script import ScriptDirectory

from storage.index.migrate import alembic_config
from tests.kit import dicom_factory as f
from tests.kit.servers import pacs_executable


def pacs(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
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


def test_org_add_registers_and_extends(tmp_path: Path) -> None:
    data = tmp_path / "var"
    r = pacs(
        "org", "add", "spital-sf-spiridon", "--name", "Spitalul Sf. Spiridon", "--ae", "CT_SPIRIDON", data_dir=data
    )
    assert r.returncode == 0, r.stderr
    assert "spital-sf-spiridon" in r.stdout and "CT_SPIRIDON" in r.stdout
    r = pacs("org", "add", "spital-sf-spiridon", "--ae", "WS1@10.1.2.3:11112", data_dir=data)
    assert r.returncode == 0, r.stderr
    assert "CT_SPIRIDON" in r.stdout and "WS1 at 10.1.2.3:11112" in r.stdout

    taken = pacs("org", "add", "clinica-b", "--name", "Clinica B", "--ae", "CT_SPIRIDON", data_dir=data)
    assert taken.returncode == 1 and "already registered to organization spital-sf-spiridon" in taken.stderr
    bad = pacs("org", "add", "clinica-b", "--name", "Clinica B", "--ae", "WS1@nowhere", data_dir=data)
    assert bad.returncode == 2 and "host:port" in bad.stderr
    nameless = pacs("org", "add", "clinica-c", data_dir=data)
    assert nameless.returncode == 1 and "--name" in nameless.stderr


HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


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
