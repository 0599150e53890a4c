"""The spliced (pre-serialized) answers say the same as the dict-built ones.

QIDO-RS default answers are assembled as text (storage.query.search `_spliced_*`) to skip a parse
and a serialize per match; these checks pin that text to the dicts the other paths build.
"""

from __future__ import annotations

from collections import namedtuple

import orjson
import pytest

from storage.query import search as queries

Row = namedtuple("Row", "study_pk identity_id study_uid attrs_json modalities num_series num_instances")
STORED = '{"00100010":{"vr":"PN","Value":[{"Alphabetic":"Ștefănescu^Ioana"}]}}'


@pytest.mark.parametrize("stored", [STORED, STORED.encode(), "{}", b"{}"])
@pytest.mark.parametrize("modalities", ["CT\\MR", "CT", "", None])
@pytest.mark.parametrize("base_url", ["http://host/dicomweb", ""])
def test_spliced_study_is_the_stored_json_and_study_computed(
    modalities: str | None, stored: str | bytes, base_url: str
) -> None:
    row = Row(7, 1, "1.2.3", stored, modalities, 3, 120)
    [spliced] = queries._spliced_studies(base_url)(None, [row])  # type: ignore[arg-type]
    expected = orjson.loads(stored) | queries._study_computed(row)
    if base_url:
        expected["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/1.2.3"]}
    assert isinstance(spliced, bytes)
    assert orjson.loads(spliced) == expected


def test_json_text_escapes_what_a_url_may_hold() -> None:
    text = 'http://host/a"b\\c/studies/'
    assert orjson.loads(f'"{queries._json_text(text)}"') == text
