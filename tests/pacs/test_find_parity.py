"""C-FIND and QIDO-RS find the same things: one matching implementation behind both edges.

The studies arrive through the SCP (dcmtk storescu); the same archive is then searched with
dcmtk findscu over DICOM and with dicomweb-client over the gateway, and for each query the set
of UIDs of the level must be the same, on both backends.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.uid import SecondaryCaptureImageStorage
from sqlalchemy import func, select

from pacs.server import start
from storage.archive import Archive
from storage.index.models import Instance
from tests.kit.backends import BACKENDS, module_archive
from tests.kit.dicomweb import Gateway, serve_gateway
from tests.kit.dimse import findscu
from tests.kit.studies import NAMED
from tests.kit.studies import QUERY_ARCHIVE as ARCHIVE
from tests.kit.tools import require_tool

STUDIES = [ARCHIVE[label] for label in sorted(NAMED)]
UID_OF_LEVEL = {"STUDY": "0020000D", "SERIES": "0020000E", "IMAGE": "00080018"}


@dataclass(frozen=True)
class Case:
    """One search in both vocabularies: QIDO-RS parameters and findscu keys."""

    name: str
    level: str
    qido: dict[str, str]
    find: tuple[str, ...]
    study: str | None = None  # QIDO-RS path scope; C-FIND gets it as a unique key
    series: str | None = None
    charset: tuple[str, ...] = field(default=())


ION, MARIA, TURCANU = ARCHIVE["ion"], ARCHIVE["maria"], ARCHIVE["turcanu"]
UTF8 = ("(0008,0005)=ISO_IR 192",)
CASES = [
    Case("name-comma-below", "STUDY", {"PatientName": "Ștefănescu*"}, ("PatientName=Ștefănescu*",), charset=UTF8),
    Case(
        "name-cedilla-upper",
        "STUDY",
        {"PatientName": "ŞTEFĂNESCU^IOANA"},
        ("PatientName=ŞTEFĂNESCU^IOANA",),
        charset=UTF8,
    ),
    Case("name-ascii-lower", "STUDY", {"PatientName": "turcanu^mihai"}, ("PatientName=turcanu^mihai",)),
    Case("name-wildcards", "STUDY", {"PatientName": "pop?scu*"}, ("PatientName=pop?scu*",)),
    Case("date-range", "STUDY", {"StudyDate": "20260101-20261231"}, ("StudyDate=20260101-20261231",)),
    Case("date-open-range", "STUDY", {"StudyDate": "-20241231"}, ("StudyDate=-20241231",)),
    Case("modality-in-study", "STUDY", {"ModalitiesInStudy": "MR"}, ("ModalitiesInStudy=MR",)),
    Case(
        "uid-list",
        "STUDY",
        {"StudyInstanceUID": f"{MARIA.uid},{TURCANU.uid}"},
        (f"StudyInstanceUID={MARIA.uid}\\{TURCANU.uid}",),
    ),
    Case("accession", "STUDY", {"AccessionNumber": "ACC-maria"}, ("AccessionNumber=ACC-maria",)),
    Case("id-wildcard-and-sex", "STUDY", {"PatientID": "P00?", "PatientSex": "F"}, ("PatientID=P00?", "PatientSex=F")),
    Case("referring-physician", "STUDY", {"ReferringPhysicianName": "ionescu*"}, ("ReferringPhysicianName=ionescu*",)),
    Case("series-modality", "SERIES", {"Modality": "CT"}, ("Modality=CT",)),
    Case(
        "series-modality-and-date",
        "SERIES",
        {"Modality": "MR", "StudyDate": "20240101-"},
        ("Modality=MR", "StudyDate=20240101-"),
    ),
    Case("instance-number", "IMAGE", {"InstanceNumber": "2"}, ("InstanceNumber=2",)),
    Case(
        "sop-class",
        "IMAGE",
        {"SOPClassUID": SecondaryCaptureImageStorage},
        (f"SOPClassUID={SecondaryCaptureImageStorage}",),
    ),
    Case("instances-of-a-series", "IMAGE", {}, (), study=ION.uid, series=ION.series[0]),
]


@dataclass
class Both:
    gateway: Gateway
    port: int


@pytest.fixture(scope="module", params=BACKENDS)
def both(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Both]:
    """One archive served by the gateway and the SCP, filled through the SCP with storescu."""
    tmp = tmp_path_factory.mktemp("parity")
    with (
        module_archive(request, tmp) as (settings, archive),
        contextmanager(serve_gateway)(settings, archive) as gw,  # registers CT1 for hosp-a
    ):
        scp = start(settings, archive, port=0)
        try:
            _store(scp.port, tmp, archive)
            yield Both(gw, scp.port)
        finally:
            scp.shutdown()


def _store(port: int, tmp: Path, archive: Archive) -> None:
    folder = tmp / "in"
    folder.mkdir()
    paths = []
    for spec in STUDIES:
        for i, data in enumerate(spec.files):
            path = folder / f"{spec.label}-{i}.dcm"
            path.write_bytes(data)
            paths.append(str(path))
    storescu = require_tool("storescu")
    r = subprocess.run(
        [storescu, "-aet", "CT1", "-aec", "MUNIPACS", "127.0.0.1", str(port), *paths], capture_output=True, timeout=300
    )
    assert r.returncode == 0, r.stderr.decode("utf-8", "replace")
    with archive.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == len(paths)


def _qido(gw: Gateway, case: Case) -> set[str]:
    client = gw.client()
    if case.level == "STUDY":
        found = client.search_for_studies(search_filters=case.qido)
    elif case.level == "SERIES":
        found = client.search_for_series(search_filters=case.qido)
    else:
        found = client.search_for_instances(
            study_instance_uid=case.study, series_instance_uid=case.series, search_filters=case.qido
        )
    tag = UID_OF_LEVEL[case.level]
    return {str(r[tag]["Value"][0]) for r in found}


def _cfind(port: int, case: Case) -> set[str]:
    scope = [f"StudyInstanceUID={case.study}"] if case.study else []
    scope += [f"SeriesInstanceUID={case.series}"] if case.series else []
    uid_key = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}[case.level]
    keys = [*case.charset, f"QueryRetrieveLevel={case.level}", *scope, *case.find]
    if not any(k.startswith(f"{uid_key}=") for k in keys):
        keys.append(uid_key)
    return {str(getattr(a, uid_key)) for a in findscu(port, *keys).answers}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cfind_and_qido_find_the_same(both: Both, case: Case) -> None:
    by_dicom = _cfind(both.port, case)
    by_web = _qido(both.gateway, case)
    assert by_dicom, f"{case.name} should match something"
    assert by_dicom == by_web
