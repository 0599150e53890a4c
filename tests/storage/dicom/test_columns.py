"""`storage.dicom.columns.Columns` (index columns from the DICOM JSON) answers as pydicom's
conversion (`text`, `integer`) does, on every file pydicom ships and on tricky values made here."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from storage.dicom.columns import _TAGS, Columns, integer, text
from storage.dicom.dicomjson import dicom_json_dict
from tests.kit import dicom_factory as f
from tests.storage.dicom.test_fastjson import bundled_files, readable, saved


def assert_same_columns(read: Callable[[], Dataset]) -> None:
    """Every index column read through the JSON equals pydicom's, each side on its own reading."""
    ds = read()
    fast = Columns(ds, dicom_json_dict(ds))
    slow = read()
    for keyword in _TAGS:
        assert fast.text(keyword) == text(slow, keyword), keyword
        assert fast.integer(keyword) == integer(slow, keyword), keyword


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("path", [p for p in bundled_files() if readable(p)], ids=lambda p: Path(p).name)
def test_the_same_columns_as_pydicom_on_its_test_files(path: str) -> None:
    assert_same_columns(lambda: dcmread(path, defer_size=4096))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("PatientName", "Doe^John^^^"),  # trailing empty components
        ("PatientName", "Yamada^Tarou=山田^太郎=やまだ^たろう"),  # three groups: pydicom's answer
        ("PatientName", "Doe^John="),  # an empty second group
        ("PatientName", ""),
        ("ReferringPhysicianName", "Popescu^Ion"),
        ("PatientID", "  123  "),
        ("PatientID", "A\\B"),  # two values where one is expected: pydicom's answer
        ("StudyDescription", "CT \\ thorax"),
        ("PatientAddress", "Str. Palat 1, Iasi"),
        ("SeriesNumber", "7"),
        ("SeriesNumber", "1.5"),  # not an integer: dropped from the JSON, None either way
        ("SeriesNumber", ""),
        ("InstanceNumber", "  42"),
        ("PatientBirthDate", "19800101"),
        ("StudyTime", "101010.123"),
    ],
)
def test_the_same_columns_as_pydicom_on_tricky_values(keyword: str, value: str) -> None:
    ds = f.ct_dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    setattr(ds, keyword, value)
    data = saved(ds)
    assert_same_columns(lambda: dcmread(BytesIO(data), defer_size=4096))


def test_an_absent_attribute_is_empty_without_asking_pydicom() -> None:
    ds = Dataset()
    assert Columns(ds, {}).text("AccessionNumber") == "" and Columns(ds, {}).integer("SeriesNumber") is None
