"""The README's quick start, pasted as a new user would: the block runs in order, as written.

The block (after its `quick start` marker) goes to bash unchanged but for what only this test
machine decides: the `pacs` executable, the free ports the server got, and the folders of DICOM
files it stores and imports. Each step must succeed and show what the README promises.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pydicom

from tests.kit import dicom_factory as f
from tests.kit.servers import pacs_executable, start_server
from tests.kit.tools import require_tool

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- quick start: tests/e2e/test_readme.py"


def quick_start() -> str:
    """The commands of the README's quick start block."""
    text = README.read_text()
    after = text[text.index(MARKER) :]
    return re.search(r"```\n(.*?)```", after, re.S).group(1)  # type: ignore[union-attr]


def test_the_quick_start_runs_as_pasted(tmp_path: Path) -> None:
    tools = {name: require_tool(name) for name in ("storescu", "findscu")}
    require_tool("curl", "curl")
    study = f.study_files(tmp_path / "study", n=3)
    for path in study:  # what a modality writes: a Romanian name and its institution, in UTF-8
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.InstitutionName = "Ştefănescu^Ioana", "Spitalul Sf. Spiridon Iași"
        ds.save_as(path)
    f.study_files(tmp_path / "old-archive", n=2, patient_id="OLD-1")
    server = start_server(tmp_path / "var")
    try:
        script = (
            quick_start()
            .replace(".venv/bin/pacs", pacs_executable())
            .replace(" 11112", f" {server.dicom_port}")
            .replace("localhost:8080", f"localhost:{server.http_port}")
        )
        path = os.pathsep.join([str(Path(tools["storescu"]).parent), "/usr/bin", "/bin"])
        r = subprocess.run(
            ["bash", "-euo", "pipefail", "-xc", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={"PATH": path, "HOME": str(tmp_path), "COLUMNS": "200", "TCP_NODELAY": "1"},
        )
    finally:
        server.kill()
    said = r.stdout + r.stderr
    assert r.returncode == 0, said + server.log_text()
    study_uid = str(pydicom.dcmread(study[0]).StudyInstanceUID)
    assert "organization spital-sf-spiridon (Spitalul Sf. Spiridon)" in said
    assert said.count("Received Final Find Response") == 1 and "Ştefănescu^Ioana" in said  # findscu -v
    assert study_uid in said and "Spitalul Sf. Spiridon Iași" in said  # QIDO-RS with the includefield
    assert "stored │ 2" in " ".join(said.split())  # the import of the old archive
    assert re.search(r'pacs_instances_stored_total\{via="dimse"\} 3\.0', said)  # the server's own count
