"""The spliced (pre-serialized) answers say the same as the dict-built ones.

QIDO-RS default answers are assembled as text (storage.queries `_spliced_*`) to skip a parse
and a serialize per match; these checks pin that text to the dicts the other paths build.
"""

from __future__ import annotations

from collections import namedtuple

import orjson
import pytest

from storage import queries

Row = namedtuple("Row", "modalities num_series num_instances")


@pytest.mark.parametrize("modalities", ["CT\\MR", "CT", "", None])
def test_study_computed_json_is_study_computed(modalities: str | None) -> None:
    row = Row(modalities, 3, 120)
    spliced = orjson.loads("{" + queries._study_computed_json(row) + "}")  # type: ignore[arg-type]
    assert spliced == queries._study_computed(row)  # type: ignore[arg-type]


def test_json_text_escapes_what_a_url_may_hold() -> None:
    text = 'http://host/a"b\\c/studies/'
    assert orjson.loads(f'"{queries._json_text(text)}"') == text
