"""QIDO-RS, the Search Transaction (PS3.18 10.6): URL parameters in, DICOM JSON or XML out.

The routes only translate: query parameters (PS3.18 8.3.4) become a `storage.query.search.Query`,
the search runs in `storage.query.search`, and the matches go out as ``application/dicom+json`` (a
JSON array; 200 with ``[]`` when nothing matches) or, when Accept asks for it, as
``multipart/related; type="application/dicom+xml"`` with one Native DICOM Model part per match
(PS3.19 A.1; 204 when nothing matches, since a multipart body needs a part). Results cut by
``limit`` or by the server maximum carry the PS3.18 8.3.4.4 Warning.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET

from fastapi import APIRouter, HTTPException, Request, Response

from gateway.audit import record_early
from gateway.deps import ArchiveDep, DicomwebContext, SeriesUid, SettingsDep, StudyUid, dicomweb_root
from gateway.dicomweb import multipart as mp
from storage.query.keys import IMAGE, SERIES, STUDY, attribute_tag, keyword
from storage.query.matching import InvalidQuery
from storage.query.search import Query, SearchResult, search

router = APIRouter(tags=["QIDO-RS"])

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
CUT = "The number of results exceeded the maximum supported by the server. Additional results can be requested."
_UID_KEYS = frozenset({"0020000D", "0020000E", "00080016", "00080018"})
_PN_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")


@router.get("/studies", summary="Search for studies")
def search_studies(request: Request, archive: ArchiveDep, ctx: DicomwebContext, settings: SettingsDep) -> Response:
    return _search(request, archive, ctx, settings, STUDY)


@router.get("/series", summary="Search for series")
def search_all_series(request: Request, archive: ArchiveDep, ctx: DicomwebContext, settings: SettingsDep) -> Response:
    return _search(request, archive, ctx, settings, SERIES)


@router.get("/studies/{study}/series", summary="Search for series of a study")
def search_series(
    study: StudyUid, request: Request, archive: ArchiveDep, ctx: DicomwebContext, settings: SettingsDep
) -> Response:
    return _search(request, archive, ctx, settings, SERIES, study)


@router.get("/instances", summary="Search for instances")
def search_all_instances(
    request: Request, archive: ArchiveDep, ctx: DicomwebContext, settings: SettingsDep
) -> Response:
    return _search(request, archive, ctx, settings, IMAGE)


@router.get("/studies/{study}/instances", summary="Search for instances of a study")
def search_study_instances(
    study: StudyUid, request: Request, archive: ArchiveDep, ctx: DicomwebContext, settings: SettingsDep
) -> Response:
    return _search(request, archive, ctx, settings, IMAGE, study)


@router.get(
    "/studies/{study}/series/{series}/instances", summary="Search for instances of a series (application/dicom+json)"
)
def search_series_instances(
    study: StudyUid,
    series: SeriesUid,
    request: Request,
    archive: ArchiveDep,
    ctx: DicomwebContext,
    settings: SettingsDep,
) -> Response:
    return _search(request, archive, ctx, settings, IMAGE, study, series)


def _search(
    request: Request,
    archive: ArchiveDep,
    ctx: DicomwebContext,
    settings: SettingsDep,
    level: str,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    params = request.query_params.multi_items()
    xml = _wants_xml(dict(params).get("accept") or request.headers.get("accept"))
    query, limit, offset, warnings = parse_params(params, level, study, series)
    base = dicomweb_root(request, settings)
    with archive.db.read(per_statement=True) as session:
        result = search(query, ctx, session=session, limit=limit, offset=offset, base_url=base)
    record_early(request)  # the rows are read: the record commits while the answer is built
    response = _xml_response(result.matches) if xml else _json_response(result.to_json())
    for text in warnings + _warnings(result):
        response.headers.append("Warning", f'299 {urlsplit(base).netloc}: "{text}"')
    return response


def parse_params(
    params: Iterable[tuple[str, str]], level: str, study: str | None = None, series: str | None = None
) -> tuple[Query, int | None, int, list[str]]:
    """PS3.18 8.3.4 parameters -> (query, limit, offset, warnings); InvalidQuery names a bad one."""
    keys: dict[str, str] = {}
    include: set[str] = set()
    include_all, fuzzy, limit, offset, warnings = False, False, None, 0, []
    for name, value in params:
        if name == "includefield":
            for item in (v.strip() for v in value.split(",") if v.strip()):
                if item == "all":
                    include_all = True
                else:
                    include.add(attribute_tag(item.split(".")[0]))
        elif name in ("limit", "offset"):
            if not (value.isascii() and value.isdigit() and len(value) <= 9):
                raise InvalidQuery(f"{name} must be a non-negative integer below 10^9, not {value[:40]!r}")
            limit, offset = (int(value), offset) if name == "limit" else (limit, int(value))
        elif name in ("fuzzymatching", "emptyvaluematching", "multiplevaluematching"):
            if value.lower() not in ("true", "false"):
                raise InvalidQuery(f"{name} must be true or false, not {value[:40]!r}")
            fuzzy = fuzzy or (name == "fuzzymatching" and value.lower() == "true")
            if name != "fuzzymatching" and value.lower() == "true":
                kind = "Empty Value" if name == "emptyvaluematching" else "Multiple Value"
                warnings.append(f"The {name} parameter is not supported. {kind} Matching has not been performed.")
        elif name == "accept":
            continue
        elif name == "charset":
            if value.strip().lower() not in ("utf-8", "utf8"):
                raise HTTPException(406, f"answers are encoded in UTF-8 only, not {value[:40]!r}")
        else:
            path = [attribute_tag(part) for part in name.split(".")]
            tag = ".".join(path)
            include.add(path[0])  # a sequence path: return the whole top-level sequence
            if tag in keys and tag not in _UID_KEYS:
                raise InvalidQuery(f"{name} is given more than once")
            keys[tag] = f"{keys[tag]},{value}" if tag in keys else value
    query = Query(level, keys, frozenset(include), include_all, fuzzy, study_uid=study, series_uid=series)
    return query, limit, offset, warnings


def _warnings(result: SearchResult) -> list[str]:
    out = [CUT] if result.more else []
    if result.ignored:
        names = ", ".join(sorted(set(result.ignored)))
        out.append(f"These attributes are not supported for matching and were matched universally: {names}")
    return out


def _wants_xml(accept: str | None) -> bool:
    """Accept negotiation (PS3.18 8.7): True for multipart XML, False for JSON, else 406."""
    for r in mp.parse_accept(accept):
        if r.media_type in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return False
        if r.media_type in (mp.MULTIPART, "multipart/*") and r.params.get("type", DICOM_XML).lower() == DICOM_XML:
            return True
    raise mp.not_acceptable(f'QIDO-RS answers {DICOM_JSON} or {mp.MULTIPART}; type="{DICOM_XML}"')


def _json_response(body: bytes) -> Response:
    return Response(body, media_type=DICOM_JSON)


def _xml_response(matches: list[dict[str, Any]]) -> Response:
    if not matches:
        return Response(status_code=204)
    boundary = mp.new_boundary()
    body = b"".join(mp.stream((mp.Part(DICOM_XML, [native_xml(ds)]) for ds in matches), boundary))
    return Response(body, media_type=mp.content_type(DICOM_XML, boundary))


def native_xml(dataset: dict[str, Any]) -> bytes:
    """One DICOM JSON data set as a Native DICOM Model document (PS3.19 A.1)."""
    root = ET.Element("NativeDicomModel", {"xmlns": "http://dicom.nema.org/PS3.19/models/NativeDICOM"})
    root.set("xml:space", "preserve")
    _xml_attributes(root, dataset)
    text: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return text


def _xml_attributes(parent: ET.Element, dataset: dict[str, Any]) -> None:
    for tag in sorted(dataset):
        element = dataset[tag]
        vr = element.get("vr", "UN")
        attrib = {"tag": tag, "vr": vr}
        if (kw := keyword(tag)) != tag:
            attrib["keyword"] = kw
        node = ET.SubElement(parent, "DicomAttribute", attrib)
        if "InlineBinary" in element:
            ET.SubElement(node, "InlineBinary").text = element["InlineBinary"]
        elif "BulkDataURI" in element:
            ET.SubElement(node, "BulkData", {"uri": element["BulkDataURI"]})
        for number, value in enumerate(element.get("Value", []), 1):
            if vr == "SQ":
                _xml_attributes(ET.SubElement(node, "Item", {"number": str(number)}), value)
            elif vr == "PN":
                name = ET.SubElement(node, "PersonName", {"number": str(number)})
                for group in ("Alphabetic", "Ideographic", "Phonetic"):
                    if value and value.get(group):
                        group_node = ET.SubElement(name, group)
                        for part, text in zip(_PN_PARTS, value[group].split("^"), strict=False):
                            if text:
                                ET.SubElement(group_node, part).text = text
            else:
                ET.SubElement(node, "Value", {"number": str(number)}).text = None if value is None else str(value)
