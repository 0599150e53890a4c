"""Sequence matching (PS3.4 C.2.2.2.6) through QIDO-RS and C-FIND: one rule, two protocols.

The matching itself is tested in tests/storage/test_sequence_matching.py; here the keys arrive
as a viewer and a workstation send them, at the levels where each sequence is kept.
"""

from __future__ import annotations

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from pacs.server import start
from tests.kit import dicom_factory as f
from tests.kit.dicomweb import Gateway
from tests.kit.seed import seed


def _item(**values: str) -> Dataset:
    item = Dataset()
    for key, value in values.items():
        setattr(item, key, value)
    return item


def _store(gw: Gateway, rp: str, sps: str, code: str) -> tuple[str, str, str]:
    ds = f.ct_dataset(study_uid=f.uid(), series_uid=f.uid())
    ds.RequestAttributesSequence = Sequence(
        [_item(RequestedProcedureID=rp, ScheduledProcedureStepID=sps), _item(RequestedProcedureID=rp + "-B")]
    )
    ds.ProcedureCodeSequence = Sequence([_item(CodeValue=code, CodingSchemeDesignator="LN")])
    seed(gw.archive, ds)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _qido(gw: Gateway, path: str) -> httpx.Response:
    r = httpx.get(gw.dicomweb + path, headers=gw.headers(), timeout=30)
    assert r.status_code == 200, r.text
    return r


def _uids(r: httpx.Response, tag: str) -> set[str]:
    return {m[tag]["Value"][0] for m in r.json()}


def test_qido_matches_sequence_keys_at_each_level(gateway: Gateway) -> None:
    a = _store(gateway, "RP1", "S1", "24627-2")
    b = _store(gateway, "RP2", "S2", "36643-5")

    r = _qido(gateway, "/series?RequestAttributesSequence.RequestedProcedureID=RP1")
    assert _uids(r, "0020000E") == {a[1]} and "Warning" not in r.headers
    assert _uids(_qido(gateway, "/series?00400275.00401001=RP2-B"), "0020000E") == {b[1]}  # any item
    # the keys of one sequence match in one item: RP1-B has no step S1
    assert _qido(gateway, "/series?00400275.00401001=RP1-B&00400275.00400009=S1").json() == []
    assert _uids(_qido(gateway, "/instances?00400275.00400009=S*"), "00080018") >= {a[2], b[2]}
    assert _uids(_qido(gateway, "/studies?ProcedureCodeSequence.CodeValue=24627-2"), "0020000D") == {a[0]}
    assert _qido(gateway, "/studies?ProcedureCodeSequence.CodeValue=99999-9").json() == []


def test_qido_reports_a_sequence_not_kept_at_the_level_as_ignored(gateway: Gateway) -> None:
    a = _store(gateway, "RP3", "S3", "24627-2")
    r = _qido(gateway, "/studies?RequestAttributesSequence.RequestedProcedureID=NOPE")
    assert a[0] in _uids(r, "0020000D")  # matched universally at study level...
    assert "RequestAttributesSequence" in r.headers.get("Warning", "")  # ...and said so


def test_qido_refuses_a_malformed_sequence_key(gateway: Gateway) -> None:
    r = httpx.get(
        gateway.dicomweb + "/series?RequestAttributesSequence.PatientName.PatientID=X",
        headers=gateway.headers(),
        timeout=30,
    )
    assert r.status_code == 400


@pytest.mark.parametrize("settings", ["sqlite-fs"], indirect=True)
def test_c_find_and_qido_agree_on_a_sequence_key(gateway: Gateway) -> None:
    a = _store(gateway, "RP7", "S7", "24627-2")
    _store(gateway, "RP8", "S8", "24627-2")
    scp = start(gateway.settings, gateway.archive, port=0)
    try:
        ae = AE(ae_title="CT1")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="MUNIPACS")
        assert assoc.is_established
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.SeriesInstanceUID = ""
        identifier.RequestAttributesSequence = Sequence([_item(RequestedProcedureID="RP7")])
        found = {
            str(ds.SeriesInstanceUID)
            for status, ds in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
            if status and status.Status in (0xFF00, 0xFF01) and ds is not None
        }
        statuses = [s.Status for s, _ in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind) if s]
        assoc.release()
    finally:
        scp.shutdown()
    assert found == {a[1]}
    assert 0xFF00 in statuses and 0xFF01 not in statuses  # matched, not ignored
    assert found == _uids(_qido(gateway, "/series?RequestAttributesSequence.RequestedProcedureID=RP7"), "0020000E")
