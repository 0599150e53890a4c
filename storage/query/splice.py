"""Fast paths of the default QIDO-RS answers: stored JSON text spliced, never parsed.

A page of 1,000 studies spent most of its time parsing each stored JSON, picking the default
keys and serializing them again; a page of instances the same per instance. Here the stored
text is kept as it is and the computed attributes are written around it, so a default answer
carries every attribute ingest keeps at its level (the PS3.18 defaults and more, which PS3.18
allows) and costs no parse. `storage.query.search` takes these paths only where they answer
what its main, dict-built path answers; tests/storage/query/test_splice.py holds them to that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import orjson

from storage.dicom.parse import INSTANCE_TAGS
from storage.index.models import Study
from storage.query import answers

#: the columns of a spliced study search, in the order `studies` unpacks its rows: at 1,000 rows,
#: naming them cost as much as the rest of the answer, so they are read by position
STUDY_COLUMNS = (
    Study.id.label("study_pk"),
    Study.identity_id,
    Study.study_uid,
    Study.attrs_json,
    Study.modalities,
    Study.num_series,
    Study.num_instances,
)


def studies(base_url: str) -> Callable[[list[Any]], Iterator[bytes]]:
    """Default study answers: each study's stored attributes with the computed ones appended.

    The rows are `STUDY_COLUMNS`, by position; on PostgreSQL the stored JSON comes as UTF-8
    bytes (`storage.index.db.TEXT_AS_BYTES`) and is spliced without a decode and re-encode. The
    tail is `answers.study_computed` and RetrieveURL, written as text in one go.
    """
    prefix = json_text(f"{base_url}/studies/") if base_url else None

    def build(rows: list[Any]) -> Iterator[bytes]:
        for _pk, _identity, study_uid, stored, modalities, num_series, num_instances in rows:
            text = stored if isinstance(stored, bytes) else stored.encode()
            # UIDs are digits and dots (checked at ingest): nothing to escape
            url = f',"00081190":{{"vr":"UR","Value":["{prefix}{study_uid}"]}}' if prefix is not None else ""
            tail = (
                f'"00080056":{{"vr":"CS","Value":["ONLINE"]}},"00080061":{modalities_json(modalities)},'
                f'"00201206":{{"vr":"IS","Value":[{int(num_series)}]}},'
                f'"00201208":{{"vr":"IS","Value":[{int(num_instances)}]}}{url}}}'
            ).encode()
            yield b"{" + tail if text == b"{}" else b"%b,%b" % (text[:-1], tail)

    return build


class SeriesText:
    """What every default instance answer of one series shares, serialized once per series.

    `fragment` is the wanted study and series attributes of the series, as JSON object members
    without braces (instance-level tags are left to the instance's own subset, so no key
    appears twice); `url_prefix` is the series' RetrieveURL prefix for its instances.
    """

    __slots__ = ("fragment", "url_prefix")

    def __init__(self, fragment: str, url_prefix: str) -> None:
        self.fragment = fragment
        self.url_prefix = url_prefix


class InstanceSplicer:
    """Default instance answers: the stored instance-level subset spliced after its series' text.

    `parents(row)` gives the study and series attributes of a row (parsed once per search).
    """

    def __init__(self, wanted: frozenset[str], base_url: str, parents: Callable[[Any], dict[str, Any]]) -> None:
        self._wanted = wanted
        self._base_url = base_url
        self._parents = parents
        self._series: dict[int, SeriesText] = {}

    def answer(self, row: Any) -> bytes:
        """One instance's answer; like a study answer it carries every instance attribute ingest
        keeps (storage.dicom.parse.INSTANCE_TAGS), not only the PS3.18 defaults."""
        shared = self._series.get(row.series_pk) or self._series_text(row)
        own = row.dicom_json
        text = members(shared.fragment, own[1:-1])
        if self._base_url:  # UIDs are digits and dots (checked at ingest): nothing to escape
            text = members(text, f'"00081190":{{"vr":"UR","Value":["{shared.url_prefix}{row.sop_uid}"]}}')
        if row.number_of_frames and '"00280008"' not in own:  # single-frame objects have no element
            text = members(text, f'"00280008":{{"vr":"IS","Value":[{int(row.number_of_frames)}]}}')
        return f"{{{text}}}".encode()

    def _series_text(self, row: Any) -> SeriesText:
        attrs = self._parents(row) | answers.study_computed(row)
        attrs["00201209"] = {"vr": "IS", "Value": [row.series_instances]}
        keep = {tag: attrs[tag] for tag in sorted(self._wanted & attrs.keys()) if tag not in INSTANCE_TAGS}
        prefix = f"{self._base_url}/studies/{row.study_uid}/series/{row.series_uid}/instances/"
        shared = self._series[row.series_pk] = SeriesText(orjson.dumps(keep).decode()[1:-1], json_text(prefix))
        return shared


def members(first: str, second: str) -> str:
    """Two runs of JSON object members (either may be empty) as one."""
    return f"{first},{second}" if first and second else first or second


def json_text(text: str) -> str:
    """`text` escaped for use inside a JSON string."""
    return orjson.dumps(text).decode()[1:-1]


@lru_cache(maxsize=1024)
def modalities_json(modalities: str | None) -> str:
    """ModalitiesInStudy as DICOM JSON text: a pure function of the column, and an archive has
    few distinct combinations, so a page of studies serializes each once."""
    values = [v for v in (modalities or "").split("\\") if v]
    return f'{{"vr":"CS","Value":{orjson.dumps(values).decode()}}}' if values else '{"vr":"CS"}'
