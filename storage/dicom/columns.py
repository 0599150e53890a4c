"""An instance's index columns (patient, study and series attributes) read from its DICOM JSON.

Why: ingest reads ~20 attributes for the index columns, and pydicom converts each on first
access (`Dataset.get`: the raw value decoded, validated against its VR, wrapped in a
DataElement), ~10 µs apiece: 0.18 ms of a CT slice's ~1.1 ms parse, converting again what the
DICOM JSON (`storage.dicom.dicomjson`) had just read. `Columns` takes a value from that JSON
where the JSON holds it in a form that is the same value: one string, or a person name of one
alphabetic group, or one integer. Anything else (absent from the JSON but present, several
values, a name with ideographic or phonetic groups, a number where text is asked) goes through
`text`/`integer`, the main path. tests/storage/dicom/test_columns.py holds both to the same
answers on every file pydicom bundles.
"""

from __future__ import annotations

from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset


def text(ds: Dataset, keyword: str) -> str:
    """An attribute as one string: "" when absent or empty, several values joined by "\\"."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def integer(ds: Dataset, keyword: str) -> int | None:
    """An attribute as an integer; None when absent, empty or not one."""
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class Columns:
    """`text` and `integer` of one data set, read from its DICOM JSON `full` where that is the
    same value (see the module's docstring)."""

    def __init__(self, ds: Dataset, full: dict[str, Any]) -> None:
        self.ds = ds
        self.full = full

    def _values(self, keyword: str) -> list[Any] | None:
        """The JSON's values of `keyword`; [] when absent or empty in the data set; None when
        only pydicom can say (present in the data set, not in the JSON)."""
        tag = _TAGS.get(keyword)
        if tag is None:
            return None
        entry = self.full.get(tag[1])
        if entry is None:
            return None if tag[0] in self.ds else []
        values: list[Any] = entry.get("Value", [])
        return values

    def text(self, keyword: str) -> str:
        values = self._values(keyword)
        if values == []:
            return ""
        if values is not None and len(values) == 1:
            value = values[0]
            if isinstance(value, str):
                return value.strip()
            if isinstance(value, dict) and value.keys() == {"Alphabetic"}:
                return str(value["Alphabetic"]).strip()
        return text(self.ds, keyword)

    def integer(self, keyword: str) -> int | None:
        values = self._values(keyword)
        if values == []:
            return None
        if values is not None and len(values) == 1 and type(values[0]) is int:
            return values[0]
        return integer(self.ds, keyword)


#: (tag, its DICOM JSON key) of the attributes the index reads
_TAGS: dict[str, tuple[int, str]] = {
    keyword: (tag, f"{tag:08X}")
    for keyword in (
        "PatientID",
        "IssuerOfPatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "PatientAddress",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyDescription",
        "ReferringPhysicianName",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "SeriesDate",
        "SeriesTime",
        "InstanceNumber",
    )
    if (tag := tag_for_keyword(keyword)) is not None
}
