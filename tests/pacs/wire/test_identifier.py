"""`pacs.wire.identifier` writes C-FIND answers byte-equal to pydicom, or declines.

The reference is what the C-FIND SCP sent before: `Dataset.from_json` of the answer, encoded by
pynetdicom (`pynetdicom.dsutils.encode`, i.e. pydicom's `write_dataset`). The inputs are the
DICOM JSON the index keeps (`storage.dicom.fastjson`) of every bundled pydicom file, whole and cut to
each element, plus the answers' own attributes and the names of issue [1/7].
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode as pynetdicom_encode

from pacs.server import RunningScp
from pacs.wire import identifier
from storage.archive import Archive
from storage.dicom.fastjson import dataset_encodings, to_json_dict_fast
from storage.dicom.parse import Source
from storage.ingest.pipeline import ingest
from storage.logs import FIELDS
from tests.kit import dicom_factory as f
from tests.kit.dimse import keys as query_identifier
from tests.kit.dimse import pyfind
from tests.kit.principals import CT_A, ctx

WRITTEN = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT", "US",
           "SS", "UL", "SL", "FL", "FD", "AT"}  # fmt: skip


def reference(elements: dict[str, Any], implicit: bool) -> bytes:
    raw = pynetdicom_encode(Dataset.from_json(elements), implicit, True)
    assert raw is not None
    return raw


def index_json(path: Path) -> dict[str, Any]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return to_json_dict_fast(ds, dataset_encodings(ds), bulk_threshold=1024, bulk_handler=lambda e: "bulk")


def corpus() -> list[Path]:
    return [p for p in f.bundled_pydicom_files() if p.suffix == ".dcm"][:80]


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_every_written_element_of_the_bundled_files(implicit: bool) -> None:
    checked = 0
    for path in corpus():
        try:
            elements = index_json(path)
        except Exception:  # noqa: S112 - a bundled file pydicom cannot read is no index entry
            continue
        charset = {"00080005": elements["00080005"]} if "00080005" in elements else {}
        for tag, element in elements.items():
            one = {**charset, tag: element}
            ours = identifier.encode(one, implicit=implicit)
            if ours is None:
                assert element.get("vr") not in WRITTEN or _declined_on_purpose(element), (path.name, tag, element)
                continue
            try:
                expected = reference(one, implicit)
            except Exception:  # pydicom cannot write it either (e.g. a value its VR forbids)
                continue
            assert ours == expected, (path.name, tag, element)
            checked += 1
    assert checked > 1000


def _declined_on_purpose(element: dict[str, Any]) -> bool:
    """Values pydicom would turn into text its own way, or that the charset cannot hold."""
    values = element.get("Value") or []
    return any(isinstance(v, str) and not v.isascii() for v in values) or any(
        isinstance(v, dict) and not str(v).isascii() for v in values
    )


def answer(**extra: Any) -> dict[str, Any]:
    """A study answer as the C-FIND SCP sends it."""
    return {
        "00080020": {"vr": "DA", "Value": ["20240131"]},
        "00080050": {"vr": "SH"},
        "00080052": {"vr": "CS", "Value": ["STUDY"]},
        "00080054": {"vr": "AE", "Value": ["MUNIPACS"]},
        "00080061": {"vr": "CS", "Value": ["CT", "MR", "SR"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "POPESCU^ION"}]},
        "00100020": {"vr": "LO", "Value": ["123"]},
        "0020000D": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.8.498.1"]},
        "00201206": {"vr": "IS", "Value": [3]},
        "00201208": {"vr": "IS", "Value": [517]},
        **extra,
    }


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
         "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Ștefănescu^Ioana", "Ideographic": "Ș=I"}]}},
        {"00080005": {"vr": "CS", "Value": ["ISO_IR 100"]}},
        {"00080005": {"vr": "CS", "Value": ["", "ISO 2022 IR 87"]}},
        {"00081030": {"vr": "LO", "Value": ["CT TORACE \\ ABDOMEN"]}, "00101010": {"vr": "AS", "Value": ["042Y"]}},
        {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "A^B", "Phonetic": "a^b"}, None]}},
        {"00280030": {"vr": "DS", "Value": [0.5, 0.30000000000000004]}, "00280010": {"vr": "US", "Value": [512]}},
    ],
    ids=["plain", "utf-8 names", "latin-1 ascii", "iso-2022 ascii", "backslash and age", "two names", "numbers"],
)  # fmt: skip
def test_answers_as_the_scp_builds_them(extra: dict[str, Any], implicit: bool) -> None:
    elements = answer(**extra)
    assert identifier.encode(elements, implicit=implicit) == reference(elements, implicit)


def test_declines_what_it_does_not_write() -> None:
    sequence = {"00081032": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["X"]}}]}}
    assert identifier.encode(answer(**sequence), implicit=True) is None
    latin = {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 100"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Ș"}]},
    }
    assert identifier.encode(answer(**latin), implicit=True) is None  # non-ASCII outside UTF-8: pydicom's job
    assert identifier.encode(answer(**{"00091001": {"vr": "OB", "InlineBinary": "AAAA"}}), implicit=True) is None


def test_a_find_answers_through_both_paths(scp: RunningScp, archive: Archive, caplog: pytest.LogCaptureFixture) -> None:
    """Over a real association: plain answers written here, a sequence return key by pydicom."""
    caplog.set_level(logging.INFO, logger="pacs.find")
    ds = f.ct_dataset(patient_id="SEQ-1")
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "RPID3", "RADLEX", "CT chest"
    ds.ProcedureCodeSequence = [code]
    ingest(Source(data=f.to_bytes(ds)), ctx(CT_A), archive=archive)

    plain = pyfind(scp.port, query_identifier("STUDY", PatientID="SEQ-1", PatientName="", StudyInstanceUID=""))
    with_sequence = query_identifier("STUDY", PatientID="SEQ-1", StudyInstanceUID="")
    with_sequence.ProcedureCodeSequence = []
    coded = pyfind(scp.port, with_sequence)

    assert [s for s, _ in plain] == [s for s, _ in coded] == [0xFF00, 0x0000]
    assert plain[0][1] is not None and plain[0][1].StudyInstanceUID == ds.StudyInstanceUID
    assert coded[0][1] is not None and coded[0][1].ProcedureCodeSequence[0].CodeValue == "RPID3"
    lines = [getattr(r, FIELDS) for r in caplog.records if r.getMessage() == "dimse.find"]
    assert [line["by_pydicom"] for line in lines] == [0, 1]
