"""The spliced (pre-serialized) answers say the same as the dict-built ones.

QIDO-RS default answers of studies and instances are assembled as text (`storage.query.splice`)
to skip a parse and a serialize per match; these checks pin that text to the dicts the main
path of `storage.query.search` builds.
"""

from __future__ import annotations

from collections import namedtuple

import orjson
import pytest
from pydicom.data import get_testdata_file

from storage.archive import Archive
from storage.dicom.parse import INSTANCE_TAGS
from storage.query import answers, splice
from storage.query.keys import IMAGE
from storage.query.search import Query, search
from tests.kit import dicom_factory as f
from tests.kit.principals import ADMIN, ctx
from tests.kit.seed import seed

Row = namedtuple("Row", "study_pk identity_id study_uid attrs_json modalities num_series num_instances")
STORED = '{"00100010":{"vr":"PN","Value":[{"Alphabetic":"Ștefănescu^Ioana"}]}}'
AS_ADMIN = ctx(ADMIN)


@pytest.mark.parametrize("stored", [STORED, STORED.encode(), "{}", b"{}"])
@pytest.mark.parametrize("modalities", ["CT\\MR", "CT", "", None])
@pytest.mark.parametrize("base_url", ["http://host/dicomweb", ""])
def test_spliced_study_is_the_stored_json_and_study_computed(
    modalities: str | None, stored: str | bytes, base_url: str
) -> None:
    row = Row(7, 1, "1.2.3", stored, modalities, 3, 120)
    [spliced] = splice.studies(base_url)([row])
    expected = orjson.loads(stored) | answers.study_computed(row)
    if base_url:
        expected["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/1.2.3"]}
    assert orjson.loads(spliced) == expected


def test_json_text_escapes_what_a_url_may_hold() -> None:
    text = 'http://host/a"b\\c/studies/'
    assert orjson.loads(f'"{splice.json_text(text)}"') == text


@pytest.mark.parametrize("scope", ["all", "study", "series"])
def test_spliced_instances_equal_the_dict_built_ones(archive: Archive, scope: str) -> None:
    """A default instance search (spliced) answers exactly what the main path builds when asked for
    every attribute the splice carries: the instance-level subset, its series' and study's wanted
    attributes, RetrieveURL and NumberOfFrames (added where the object has no element)."""
    study, series = f.uid(), f.uid()
    sources = [f.to_bytes(f.ct_dataset(study_uid=study, series_uid=series, frames=n)) for n in (1, 3)]
    sources.append(open(get_testdata_file("MR_small.dcm"), "rb").read())  # another study, other attributes
    seed(archive, *sources, as_=AS_ADMIN)
    scoped = {"all": {}, "study": {"study_uid": study}, "series": {"study_uid": study, "series_uid": series}}[scope]
    base = "http://host/dicomweb"
    with archive.db.read() as session:
        fast = search(Query(IMAGE, **scoped), AS_ADMIN, session=session, base_url=base)
        # AvailableTransferSyntaxUID turns the splice off; asked with every instance tag, the main
        # path answers what the splice carries
        slow = search(
            Query(IMAGE, include=INSTANCE_TAGS | {"00083002"}, **scoped), AS_ADMIN, session=session, base_url=base
        )
    assert all(isinstance(item, bytes) for item in fast.items)
    assert all(isinstance(item, dict) for item in slow.items)
    expected = [{k: v for k, v in m.items() if k != "00083002"} for m in slow.matches]
    assert fast.matches == expected
    assert len(expected) == (3 if scope == "all" else 2)
