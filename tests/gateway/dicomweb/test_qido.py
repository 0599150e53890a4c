"""QIDO-RS against the live gateway, over both backends, with dicomweb-client and raw httpx.

One synthetic archive of ten studies (built once at import) is stored once per backend and
searched by every read-only test; bad input runs against an empty gateway, and a few objects
arrive through the real SCP. Every matching rule has a case that must match and one that
must not.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest
import uvicorn
from fastapi.responses import StreamingResponse
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from requests.exceptions import HTTPError
from sqlalchemy import text

from gateway.app import create_app
from gateway.compression import GzipJsonMiddleware, accepts_gzip
from pacs.server import start
from storage.archive import Archive
from storage.dicom.parse import INSTANCE_TAGS
from storage.query import search as queries
from storage.query.keys import STUDY
from storage.query.search import Query, search
from tests.kit import dicom_factory as f
from tests.kit.backends import BACKENDS, module_archive
from tests.kit.dicomweb import Gateway, serve_gateway, store
from tests.kit.principals import CT_A, ctx
from tests.kit.seed import seed, seed_orgs
from tests.kit.studies import StudySpec, study


def _study(label: str, name: str, pid: str, date: str, *args: Any, **kw: Any) -> StudySpec:
    """The kit's study, as QIDO-RS searches it: stored out of order, accession ACC-<pid>, age 46."""
    kw.setdefault("accession", f"ACC-{pid}")
    return study(label, name, pid, date, *args, age="046Y", out_of_order=True, **kw)


XML_ACCEPT = 'multipart/related; type="application/dicom+xml"'
NATIVE = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"


ARCHIVE = {
    s.label: s
    for s in [
        _study("ion", "Popescu^Ion", "P001", "20260115", (("CT", 3),), time="083000", referring="Ionescu^Radu"),
        _study("maria", "Popescu^Maria", "P002", "20251201", (("MR", 2), ("CT", 1)), time="120000", sex="F"),
        _study("stef", "Ştefănescu^Ioana", "P003", "20260310", time="091500", charset="ISO_IR 101", sex="F"),
        _study("turcanu", "Țurcanu^Mihai", "P004", "20240620", (("US", 1),), time="140000", charset="ISO_IR 192"),
        _study("andrei", "Ionescu^Andrei", "P005", "20260115", (("CR", 1),), time="150000"),
        _study(
            "yamada", "Yamada^Tarou=山田^太郎=やまだ^たろう", "P006", "20230303", (("MR", 1),), charset="ISO_IR 192"
        ),
        _study("escapes", "Literal^Test", "AB%_1", "20220202", accession="X_Y%"),
        _study("nodate", "Fara^Data", "P008", "", time=""),
        _study("elena", "Vasilescu^Elena", "P009", "20230101", sex="F"),
        _study("dan", "Georgescu^Dan", "p001", "20220505"),
    ]
}
BY_UID = {s.uid: s.label for s in ARCHIVE.values()}
# newest study date first, then the most recently stored; no date last
ORDER = ["stef", "andrei", "ion", "maria", "turcanu", "yamada", "elena", "dan", "escapes", "nodate"]


@pytest.fixture(scope="module", params=BACKENDS)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The gateway over the ten studies, per backend, shared by the tests that only search."""
    with (
        module_archive(request, tmp_path_factory.mktemp("qido")) as (settings, archive),
        contextmanager(serve_gateway)(settings, archive) as gw,
    ):
        for spec in ARCHIVE.values():
            seed(archive, *spec.files)
        yield gw


def value(result: dict, tag: str) -> object:
    return result[tag]["Value"][0]


def studies(gw: Gateway, **filters: str) -> list[str]:
    """Labels of the studies a search finds, in the order of the answer."""
    return [BY_UID[str(value(r, "0020000D"))] for r in gw.client().search_for_studies(search_filters=filters)]


def found(gw: Gateway, **filters: str) -> set[str]:
    return set(studies(gw, **filters))


def get(gw: Gateway, path: str, **kw: object) -> httpx.Response:
    headers = {**gw.headers(), **kw.pop("headers", {})}  # type: ignore[dict-item]
    return httpx.get(f"{gw.dicomweb}{path}", headers=headers, timeout=30, **kw)  # type: ignore[arg-type]


# ----- matching ---------------------------------------------------------------------------


def test_universal_match_empty_answers_and_unsupported_keys(loaded: Gateway) -> None:
    assert studies(loaded) == ORDER
    assert studies(loaded, PatientName="", StudyDate="") == ORDER  # empty values: universal
    # no match: 200 with an empty array (see the README for 200 rather than 204)
    r = get(loaded, "/studies", params={"PatientName": "nobody*"})
    assert r.status_code == 200 and r.json() == []
    assert r.headers["content-type"] == "application/dicom+json"
    assert loaded.client().search_for_studies(search_filters={"PatientID": "none"}) == []
    # a valid attribute without an index column is matched universally, with a warning
    r = get(loaded, "/studies", params={"PatientWeight": "80", "emptyvaluematching": "true"})
    assert r.status_code == 200 and len(r.json()) == len(ORDER)
    warnings = " | ".join(r.headers.get_list("warning"))
    assert "not supported for matching" in warnings and "PatientWeight" in warnings
    assert "emptyvaluematching parameter is not supported" in warnings
    r = get(loaded, "/studies", params={"Modality": "MR"})  # a series key at study level
    assert len(r.json()) == len(ORDER) and "Modality" in r.headers["warning"]
    # a sequence kept per instance only is not matched at series level (test_qido_sequence.py)
    r = get(loaded, "/series", params={"ReferencedImageSequence.ReferencedSOPInstanceUID": "1.2.3"})
    assert len(r.json()) == sum(len(s.series) for s in ARCHIVE.values())
    assert "ReferencedImageSequence.ReferencedSOPInstanceUID" in r.headers["warning"]


def test_single_value_and_wildcards(loaded: Gateway) -> None:
    assert found(loaded, PatientID="P001") == {"ion"}
    assert found(loaded, PatientID="p001") == {"dan"}  # case-sensitive outside PN
    assert found(loaded, PatientID="P00") == set()
    assert found(loaded, PatientID="P00?") == {"ion", "maria", "stef", "turcanu", "andrei", "yamada", "nodate", "elena"}
    assert found(loaded, PatientID="*1") == {"ion", "dan", "escapes"}
    assert found(loaded, AccessionNumber="ACC-P002") == {"maria"}
    assert found(loaded, StudyDescription="*torace") == set(ORDER)
    assert found(loaded, StudyDescription="*TORACE") == set()
    # % and _ are ordinary characters of a DICOM value, not SQL wild cards
    assert found(loaded, PatientID="AB%_1") == {"escapes"}
    assert found(loaded, PatientID="AB%*") == {"escapes"}
    assert found(loaded, PatientID="A_%_1") == set()
    assert found(loaded, AccessionNumber="X_Y%") == {"escapes"}
    assert found(loaded, AccessionNumber="X%Y*") == set()
    assert found(loaded, PatientSex="F") == {"maria", "stef", "elena"}
    assert found(loaded, ReferringPhysicianName="ionescu*") == {"ion"}
    assert found(loaded, ReferringPhysicianName="popescu*") == set()


def test_person_names_ignore_case_and_diacritics(loaded: Gateway) -> None:
    assert found(loaded, PatientName="popescu*") == {"ion", "maria"}
    assert found(loaded, PatientName="POPESCU^ION") == {"ion"}
    assert found(loaded, PatientName="popescu") == set()
    assert found(loaded, PatientName="pop?scu^m*") == {"maria"}
    # ISO_IR 101 (Latin-2, ş with cedilla) found by plain ASCII, by upper case and by itself
    assert found(loaded, PatientName="stefanescu*") == {"stef"}
    assert found(loaded, PatientName="ŞTEFĂNESCU^IOANA") == {"stef"}
    assert found(loaded, PatientName="ştefănescu^ioana") == {"stef"}
    assert found(loaded, PatientName="Ștefănescu^Ioana") == {"stef"}  # ș with comma below
    assert found(loaded, PatientName="stefanescu^ion") == set()
    # ISO_IR 192 (UTF-8, Ț with comma below), also by its cedilla look-alike Ţ
    assert found(loaded, PatientName="turcanu*") == {"turcanu"}
    assert found(loaded, PatientName="Țurcanu^Mihai") == {"turcanu"}
    assert found(loaded, PatientName="ŢURCANU^MIHAI") == {"turcanu"}
    # a multi-group name is found by its alphabetic group
    assert found(loaded, PatientName="yamada^tarou") == {"yamada"}
    assert found(loaded, PatientName="yamada") == set()
    results = loaded.client().search_for_studies(search_filters={"PatientName": "stefanescu*"})
    assert results[0]["00100010"]["Value"] == [{"Alphabetic": "Ştefănescu^Ioana"}]


def test_fuzzy_matching_finds_word_starts_in_any_order(loaded: Gateway) -> None:
    client = loaded.client()

    def fuzzy(name: str) -> set[str]:
        results = client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": name})
        return {BY_UID[str(value(r, "0020000D"))] for r in results}

    assert fuzzy("ion") == {"ion", "andrei"}  # POPESCU^ION and IONESCU^ANDREI
    assert found(loaded, PatientName="ion") == set()  # literal matching without the flag
    assert fuzzy("mihai turc") == {"turcanu"}
    assert fuzzy("ioana ştef") == {"stef"}
    assert fuzzy("山田") == {"yamada"}
    assert fuzzy("escu") == set()  # a word start, not any substring


def test_date_and_time_ranges(loaded: Gateway) -> None:
    assert found(loaded, StudyDate="20260115") == {"ion", "andrei"}
    assert found(loaded, StudyDate="20260101-") == {"ion", "andrei", "stef"}
    assert found(loaded, StudyDate="-20230101") == {"elena", "dan", "escapes"}  # not the undated one
    assert found(loaded, StudyDate="20230101-20241231") == {"turcanu", "yamada", "elena"}
    assert found(loaded, StudyDate="20270101-") == set()
    assert found(loaded, StudyTime="0800-0900") == {"ion"}
    assert found(loaded, StudyTime="15") == {"andrei"}
    assert found(loaded, StudyTime="-0915") == {"ion", "stef"}
    assert found(loaded, StudyDate="20260115", StudyTime="12-") == {"andrei"}
    assert found(loaded, PatientBirthDate="19800101") == set(ORDER)
    assert found(loaded, PatientBirthDate="-19791231") == set()


def test_uid_lists_and_modalities(loaded: Gateway) -> None:
    ion, stef = ARCHIVE["ion"].uid, ARCHIVE["stef"].uid
    assert found(loaded, StudyInstanceUID=ion) == {"ion"}
    assert found(loaded, StudyInstanceUID=f"{ion},{stef}") == {"ion", "stef"}
    assert found(loaded, StudyInstanceUID=f"{ion}\\{stef}") == {"ion", "stef"}
    assert found(loaded, StudyInstanceUID="1.2.3.4") == set()
    assert found(loaded, ModalitiesInStudy="MR") == {"maria", "yamada"}
    assert found(loaded, ModalitiesInStudy="US,CR") == {"turcanu", "andrei"}
    assert found(loaded, ModalitiesInStudy="XA") == set()
    maria = loaded.client().search_for_studies(search_filters={"ModalitiesInStudy": "MR", "PatientID": "P002"})
    assert maria[0]["00080061"]["Value"] == ["CT", "MR"]


def test_series_and_instance_searches(loaded: Gateway) -> None:
    client = loaded.client()
    maria = ARCHIVE["maria"]
    series = client.search_for_series(maria.uid)
    assert [value(s, "0020000E") for s in series] == maria.series  # by SeriesNumber
    assert [value(s, "00080060") for s in series] == ["MR", "CT"]
    mr = client.search_for_series(search_filters={"Modality": "MR"})
    assert {value(s, "0020000E") for s in mr} == {maria.series[0], ARCHIVE["yamada"].series[0]}
    # study-level keys match the series' study, and across studies the study attributes come along
    popescu = client.search_for_series(search_filters={"PatientName": "popescu*", "Modality": "CT"})
    assert {value(s, "0020000E") for s in popescu} == {ARCHIVE["ion"].series[0], maria.series[1]}
    assert all(value(s, "00100020") in ("P001", "P002") for s in popescu)
    assert client.search_for_series(maria.uid, search_filters={"SeriesNumber": "2"})[0]["0020000E"]["Value"] == [
        maria.series[1]
    ]
    assert client.search_for_series(maria.uid, search_filters={"SeriesNumber": "3"}) == []

    ion = ARCHIVE["ion"]
    instances = client.search_for_instances(ion.uid, ion.series[0])
    assert [value(i, "00200013") for i in instances] == [1, 2, 3]
    assert {value(i, "00080018") for i in instances} == set(ion.sops)
    second = client.search_for_instances(ion.uid, search_filters={"InstanceNumber": "2"})
    assert len(second) == 1 and value(second[0], "00200013") == 2
    assert client.search_for_instances(ion.uid, search_filters={"InstanceNumber": "9"}) == []
    by_sop = client.search_for_instances(search_filters={"SOPInstanceUID": ion.sops[1]})
    assert [value(i, "0020000D") for i in by_sop] == [ion.uid]
    everything = client.search_for_instances(search_filters={"SOPClassUID": CTImageStorage})
    assert len(everything) == sum(len(s.sops) for s in ARCHIVE.values())
    assert client.search_for_instances(search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}) == []
    # a study or series outside what exists is 404, as if it did not exist
    assert get(loaded, f"/studies/{f.uid()}/series").status_code == 404
    assert get(loaded, f"/studies/{ion.uid}/series/{maria.series[0]}/instances").status_code == 404
    assert get(loaded, f"/studies/{f.uid()}/instances").status_code == 404
    assert get(loaded, f"/studies/{f.uid()}/series/{ion.series[0]}/instances").status_code == 404


# ----- answers ----------------------------------------------------------------------------


def test_computed_and_default_attributes(loaded: Gateway) -> None:
    client, maria = loaded.client(), ARCHIVE["maria"]
    base = loaded.dicomweb  # RetrieveURL names the port the server really listens on
    (study,) = client.search_for_studies(search_filters={"StudyInstanceUID": maria.uid})
    assert value(study, "00201206") == 2  # NumberOfStudyRelatedSeries
    assert value(study, "00201208") == 3  # NumberOfStudyRelatedInstances
    assert study["00080061"]["Value"] == ["CT", "MR"]  # ModalitiesInStudy
    assert value(study, "00081190") == f"{base}/studies/{maria.uid}"  # RetrieveURL
    assert value(study, "00080056") == "ONLINE"
    assert study["00100010"]["Value"] == [{"Alphabetic": "Popescu^Maria"}]
    # a study answer carries every study attribute kept at ingest (README: spliced, not re-built)
    assert value(study, "00101010") == "046Y"
    assert "0008103E" not in study  # SeriesDescription is not a study attribute

    (series, _) = client.search_for_series(maria.uid)
    assert value(series, "00201209") == 2  # NumberOfSeriesRelatedInstances
    assert value(series, "0020000D") == maria.uid
    assert value(series, "00081190") == f"{base}/studies/{maria.uid}/series/{maria.series[0]}"
    assert "00100010" not in series  # inside a study, no study attributes

    instance = client.search_for_instances(maria.uid, maria.series[1])[0]
    expected = {"00080016", "00080018", "00080056", "00081190", "0020000D", "0020000E", "00200013"}
    expected |= {"00280008", "00280010", "00280011", "00280100"}
    # the defaults, plus the other instance-level attributes kept at ingest (README), nothing else
    assert expected <= set(instance) <= expected | INSTANCE_TAGS
    assert "00100010" not in instance and "0008103E" not in instance
    assert (value(instance, "00280010"), value(instance, "00280100"), value(instance, "00280008")) == (16, 16, 1)
    sop = value(instance, "00080018")
    assert value(instance, "00081190") == f"{base}/studies/{maria.uid}/series/{maria.series[1]}/instances/{sop}"
    # outside a series (and a study), the series (and study) defaults come along
    across = client.search_for_instances(search_filters={"SOPInstanceUID": sop})[0]
    assert value(across, "00080060") == "CT" and value(across, "00100020") == "P002"
    assert value(across, "00201209") == 1 and value(across, "00201208") == 3


def test_instances_indexed_before_the_subset_are_answered_from_their_whole_json(loaded: Gateway) -> None:
    """Rows from before migration 0004 have no instance subset (NULL): same defaults, read the old way."""
    maria = ARCHIVE["maria"]
    client = loaded.client()
    spliced = {value(i, "00080018"): i for i in client.search_for_instances(maria.uid, maria.series[0])}
    with loaded.archive.db.engine.begin() as conn:
        saved = conn.execute(text("SELECT id, attrs_json FROM instances")).all()
        conn.execute(text("UPDATE instances SET attrs_json = NULL"))
    try:
        whole = {value(i, "00080018"): i for i in client.search_for_instances(maria.uid, maria.series[0])}
    finally:
        with loaded.archive.db.engine.begin() as conn:
            for pk, attrs in saved:
                conn.execute(text("UPDATE instances SET attrs_json = :a WHERE id = :i"), {"a": attrs, "i": pk})
    assert whole.keys() == spliced.keys() and whole
    for sop, answer in whole.items():
        assert answer == {tag: spliced[sop][tag] for tag in answer}  # the defaults, equal either way


def test_includefield(loaded: Gateway) -> None:
    client, ion = loaded.client(), ARCHIVE["ion"]
    (study,) = client.search_for_studies(search_filters={"PatientID": "P001"}, fields=["PatientAge"])
    assert value(study, "00101010") == "046Y"
    (study,) = client.search_for_studies(search_filters={"PatientID": "P001"}, fields=["00101010", "StudyID"])
    assert value(study, "00101010") == "046Y" and value(study, "00200010") == "1"
    r = get(loaded, "/studies", params={"PatientID": "P001", "includefield": "PatientAge,00200010"})
    assert r.status_code == 200 and {"00101010", "00200010"} <= set(r.json()[0])
    instance = client.search_for_instances(ion.uid, ion.series[0], fields=["all"])[0]
    assert instance["00280030"]["Value"] == [0.5, 0.5]  # PixelSpacing, not a default attribute
    assert instance["00080008"]["Value"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert value(instance, "00100010") == {"Alphabetic": "Popescu^Ion"}
    assert "7FE00010" not in instance  # no bulk data in search answers
    (series,) = client.search_for_series(ion.uid, fields=["ImageType"])
    assert series["00080008"]["Value"] == ["ORIGINAL", "PRIMARY", "AXIAL"]  # from the series' first instance


def test_limit_offset_and_the_warning(loaded: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    client = loaded.client()
    pages = [client.search_for_studies(limit=4, offset=o) for o in (0, 4, 8)]
    assert [[BY_UID[str(value(r, "0020000D"))] for r in p] for p in pages] == [ORDER[:4], ORDER[4:8], ORDER[8:]]
    everything = client.search_for_studies(limit=3, get_remaining=True)
    assert [BY_UID[str(value(r, "0020000D"))] for r in everything] == ORDER
    host = loaded.url.split("://")[1]
    warning = (
        f'299 {host}: "The number of results exceeded the maximum supported by the server. '
        'Additional results can be requested."'
    )
    cut = get(loaded, "/studies", params={"limit": "4", "offset": "4"})
    assert len(cut.json()) == 4 and cut.headers.get_list("warning") == [warning]
    last = get(loaded, "/studies", params={"limit": "4", "offset": "8"})
    assert len(last.json()) == 2 and "warning" not in last.headers
    past = get(loaded, "/studies", params={"offset": "50"})
    assert past.status_code == 200 and past.json() == [] and "warning" not in past.headers
    instances = get(loaded, f"/studies/{ARCHIVE['ion'].uid}/instances", params={"limit": "2"})
    assert [value(i, "00200013") for i in instances.json()] == [1, 2] and instances.headers["warning"] == warning
    # without a limit the server maximum applies (1000; lowered here), with the same warning
    monkeypatch.setattr(queries, "MAX_RESULTS", 4)  # the real maximum is 1000 results
    r = get(loaded, "/studies")
    assert [BY_UID[str(value(s, "0020000D"))] for s in r.json()] == ORDER[:4]
    assert "Additional results can be requested" in r.headers["warning"]
    assert len(get(loaded, "/studies", params={"limit": "100"}).json()) == 4


BAD_INPUT = [
    ("/studies", {"StudyDate": "2026-01-01"}, "StudyDate: '2026-01-01' is not a date"),
    ("/studies", {"StudyDate": "20261301"}, "not a calendar date"),
    ("/studies", {"StudyDate": "20260201-20260101"}, "ends before it starts"),
    ("/studies", {"StudyTime": "25"}, "StudyTime"),
    ("/studies", {"StudyInstanceUID": "1.2.3,1.2.abc"}, "'1.2.abc' is not a valid UID"),
    ("/studies", {"limit": "ten"}, "limit must be a non-negative integer"),
    ("/studies", {"offset": "-1"}, "offset must be a non-negative integer"),
    ("/studies", {"offset": "²"}, "offset must be a non-negative integer"),
    ("/studies", {"limit": "10000000000"}, "limit must be a non-negative integer below 10^9"),
    ("/studies", {"PatientNmae": "x"}, "unknown attribute 'PatientNmae'"),
    ("/studies", {"includefield": "PatientAge,Bogus"}, "unknown attribute 'Bogus'"),
    ("/studies", {"fuzzymatching": "maybe"}, "fuzzymatching must be true or false"),
    ("/series", {"SeriesNumber": "one"}, "SeriesNumber: 'one' is not an integer"),
    ("/instances", {"SOPInstanceUID": "1.2.03"}, "SOPInstanceUID"),
    ("/studies/1.2.x/series", {}, "'1.2.x' is not a valid Study Instance UID"),
]


def test_bad_input_is_a_400_problem_naming_it(gateway: Gateway) -> None:
    for path, params, message in BAD_INPUT:
        r = get(gateway, path, params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert message in r.json()["detail"], (params, r.text)
    with pytest.raises(HTTPError) as info:
        gateway.client().search_for_studies(search_filters={"StudyDate": "yesterday"})
    assert info.value.response.status_code == 400


def test_accept_negotiation(loaded: Gateway) -> None:
    for accept in ("application/dicom+json", "application/json", "*/*", "application/*"):
        r = get(loaded, "/studies", params={"PatientID": "P003"}, headers={"Accept": accept})
        assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json", accept
    prefer_json = f"{XML_ACCEPT}; q=0.5, application/dicom+json"
    assert get(loaded, "/studies", headers={"Accept": prefer_json}).headers["content-type"] == "application/dicom+json"
    for bad in ("image/jpeg", "application/dicom+xml", 'multipart/related; type="application/dicom"'):
        r = get(loaded, "/studies", headers={"Accept": bad})
        assert r.status_code == 406 and "application/dicom+json" in r.json()["detail"], bad

    r = get(loaded, "/studies", params={"PatientID": "P003"}, headers={"Accept": XML_ACCEPT})
    assert r.status_code == 200
    content_type = r.headers["content-type"]
    assert content_type.startswith(XML_ACCEPT) and "boundary=" in content_type
    boundary = content_type.split("boundary=")[1].encode()
    parts = [p for p in r.content.split(b"--" + boundary) if p.strip() not in (b"", b"--")]
    assert len(parts) == 1
    head, body = parts[0].split(b"\r\n\r\n", 1)
    assert b"Content-Type: application/dicom+xml" in head
    root = ET.fromstring(body.strip())
    assert root.tag == f"{NATIVE}NativeDicomModel"
    name = root.find(f"{NATIVE}DicomAttribute[@keyword='PatientName']/{NATIVE}PersonName/{NATIVE}Alphabetic")
    assert name is not None
    assert (name.findtext(f"{NATIVE}FamilyName"), name.findtext(f"{NATIVE}GivenName")) == ("Ştefănescu", "Ioana")
    uid = root.find(f"{NATIVE}DicomAttribute[@tag='0020000D']/{NATIVE}Value[@number='1']")
    assert uid is not None and uid.text == ARCHIVE["stef"].uid
    count = root.find(f"{NATIVE}DicomAttribute[@keyword='NumberOfStudyRelatedInstances']/{NATIVE}Value")
    assert count is not None and count.text == "1"
    # the `accept` query parameter (PS3.18 8.3.3.1) asks for XML too; no match is 204 there
    r = get(loaded, "/studies", params={"PatientID": "nobody", "accept": XML_ACCEPT})
    assert r.status_code == 204 and r.content == b""


# ----- through the SCP ---------------------------------------------------------------------


def test_objects_stored_over_dimse_are_found(gateway: Gateway) -> None:
    scp = start(gateway.settings, gateway.archive, port=0)
    try:
        ae = AE(ae_title="CT1")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=gateway.settings.ae_title)
        assert assoc.is_established
        study = f.uid()
        for name, charset in (("Ştefănescu^Ioana", "ISO_IR 101"), ("Ştefănescu^Ioana", "ISO_IR 101")):
            ds = f.ct_dataset(study_uid=study, patient_name=name, charset=charset, patient_id="CNP-1")
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
    finally:
        scp.shutdown()
    (found_study,) = gateway.client().search_for_studies(search_filters={"PatientName": "STEFANESCU*"})
    assert value(found_study, "0020000D") == study and value(found_study, "00201208") == 2
    assert value(found_study, "00201206") == 2


# ----- compression -------------------------------------------------------------------------


OCTETS = 'multipart/related; type="application/octet-stream"'
PARTS = [b"--b\r\nContent-Type: application/octet-stream\r\n\r\n" + b"\0" * 4096 + b"\r\n"] * 4 + [b"--b--"]


@pytest.fixture()
def compressed(loaded: Gateway) -> Iterator[httpx.Client]:
    """The gateway app with the gzip middleware installed (as gateway/app.py should), on uvicorn."""
    app = create_app(loaded.settings, loaded.archive)

    @app.get("/stream")
    def stream() -> StreamingResponse:
        return StreamingResponse(
            iter(PARTS), media_type='multipart/related; type="application/octet-stream"; boundary=b'
        )

    app.add_middleware(GzipJsonMiddleware)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        with httpx.Client(base_url=base, headers=loaded.headers(), timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_json_answers_are_gzipped_and_streams_are_not(compressed: httpx.Client) -> None:
    plain = compressed.get("/dicomweb/studies", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and len(plain.content) > 1024
    zipped = compressed.get("/dicomweb/studies", headers={"Accept-Encoding": "br, gzip"})
    assert zipped.headers["content-encoding"] == "gzip" and "Accept-Encoding" in zipped.headers["vary"]
    assert int(zipped.headers["content-length"]) < len(plain.content) / 3
    assert zipped.json() == plain.json()  # httpx inflates it
    refused = compressed.get("/dicomweb/studies", headers={"Accept-Encoding": "gzip;q=0, *"})
    assert "content-encoding" not in refused.headers
    small = compressed.get("/dicomweb/studies", params={"limit": "x"}, headers={"Accept-Encoding": "gzip"})
    assert small.status_code == 400 and "content-encoding" not in small.headers  # problem+json under 1 KB
    xml = compressed.get("/dicomweb/studies", headers={"Accept-Encoding": "gzip", "Accept": XML_ACCEPT})
    assert xml.status_code == 200 and "content-encoding" not in xml.headers
    with compressed.stream("GET", "/stream", headers={"Accept-Encoding": "gzip"}) as r:
        assert "content-encoding" not in r.headers
        assert b"".join(r.iter_raw()) == b"".join(PARTS)
    with compressed.stream("GET", "/dicomweb/studies", headers={"Accept-Encoding": "gzip"}) as r:
        wire = b"".join(r.iter_raw())  # the bytes as sent, before httpx inflates them
    assert len(wire) == int(zipped.headers["content-length"]) and json.loads(gzip.decompress(wire)) == plain.json()


def test_accept_encoding_parsing() -> None:
    assert accepts_gzip("gzip") and accepts_gzip("deflate, gzip;q=0.5") and accepts_gzip("*")
    assert accepts_gzip("GZIP;Q=1") and accepts_gzip("x-gzip")
    assert not accepts_gzip("") and not accepts_gzip("identity") and not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("gzip;q=0, *") and not accepts_gzip("br, *;q=0")


def test_attributes_kept_below_the_level_are_answered_from_the_first_instance(gateway: Gateway) -> None:
    """includefield of an attribute ingest keeps per series or per instance (InstitutionName,
    SliceThickness) at study and series level: answered from the first instance received of the
    study (of the series), never one that names a single series or instance."""
    study, first_series, second_series = f.uid(), f.uid(), f.uid()
    for series, institution, thickness in (
        (first_series, "Spitalul Județean Iași", "1.25"),
        (second_series, "Clinica B", "5"),
        (first_series, "Later^Instance", "9"),
    ):
        ds = f.ct_dataset(study_uid=study, series_uid=series, charset="ISO_IR 192")
        ds.InstitutionName, ds.SliceThickness = institution, thickness
        store(gateway, f.to_bytes(ds))

    def one(path: str, **params: str) -> dict[str, Any]:
        r = httpx.get(
            f"{gateway.dicomweb}{path}", params={"StudyInstanceUID": study, **params}, headers=gateway.headers()
        )
        assert r.status_code == 200, r.text
        (answer,) = [a for a in r.json() if a["0020000D"]["Value"] == [study]][:1] or [None]
        assert answer is not None
        return dict(answer)

    assert "00080080" not in one("/studies")  # the default answer is unchanged (and spliced)
    named = one("/studies", includefield="InstitutionName,00180050")
    assert named["00080080"]["Value"] == ["Spitalul Județean Iași"] and named["00180050"]["Value"] == [1.25]
    everything = one("/studies", includefield="all")
    assert everything["00080080"]["Value"] == ["Spitalul Județean Iași"]
    assert not {"0020000E", "00080018", "00200013", "00280010"} & everything.keys()  # no one series' or image's
    assert everything["00100010"] == named["00100010"] and everything["00201208"]["Value"] == [3]
    by_series = {
        s["0020000E"]["Value"][0]: s["00180050"]["Value"]
        for s in httpx.get(
            f"{gateway.dicomweb}/studies/{study}/series",
            params={"includefield": "SliceThickness"},
            headers=gateway.headers(),
        ).json()
    }
    assert by_series == {first_series: [1.25], second_series: [5]}


def test_c_find_shape_answers_a_lower_attribute_or_an_empty_one(archive: Archive) -> None:
    """The same rule serves C-FIND (storage.query.search): a requested key kept below the level is
    answered from the first instance, and one no instance has is an empty element."""
    ds = f.ct_dataset(charset="ISO_IR 192")
    ds.InstitutionName = "Spitalul Județean Iași"
    seed_orgs(archive)
    seed(archive, ds)
    query = Query(STUDY, {"0020000D": ds.StudyInstanceUID, "00080080": "", "00081010": ""}, only_requested=True)
    with archive.db.read() as session:
        (answer,) = search(query, ctx(CT_A), session=session).matches
    assert answer["00080080"] == {"vr": "LO", "Value": ["Spitalul Județean Iași"]}
    assert answer["00081010"] == {"vr": "SH"}  # StationName: no instance has one
