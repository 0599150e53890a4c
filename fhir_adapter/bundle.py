"""searchset Bundles: matches, included resources, `total`, and `self`/`next`/`previous` links on keyset cursors."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode


def searchset(
    base: str,
    resource_type: str,
    query: list[tuple[str, str]],
    matches: list[dict[str, Any]],
    total: int | None,
    cursor: str | None,
    included: list[dict[str, Any]] | None = None,
    searches: list[dict[str, Any]] | None = None,
    previous: str | None = None,
) -> dict[str, Any]:
    """A searchset Bundle of `matches` (and `included`), with `next` continuing after `cursor`
    and `previous` ending before `previous`.

    Not validated again here: its entries are (validated resources, or built exactly as those,
    `imaging_study.data`), and validating a Bundle validates every entry in it a second time, the
    largest part of a search's time; the tests validate every Bundle the API answers.

    `searches` replaces the matches' `search` (a score and a grade, `$match`). `query` is the
    request's own parameters; the next page's link is the same search with the cursor of this
    page's last match (`_cursor`), the previous page's with its first match's (`_before`), so
    paging either way reads no skipped rows.
    """
    own = [(k, v) for k, v in query if k not in ("_cursor", "_before")]
    links = [{"relation": "self", "url": _url(base, resource_type, query)}]
    if cursor is not None:
        links.append({"relation": "next", "url": _url(base, resource_type, [*own, ("_cursor", cursor)])})
    if previous is not None:
        links.append({"relation": "previous", "url": _url(base, resource_type, [*own, ("_before", previous)])})
    entries = [_entry(base, r, "match") for r in matches] + [_entry(base, r, "include") for r in included or []]
    for entry, search in zip(entries, searches or [], strict=False):  # `$match`: score and grade
        entry["search"] = search
    data: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}
    if total is not None:  # None: not counted (the audit trail: a count would scan it)
        data["total"] = total
    return data


def _entry(base: str, resource: dict[str, Any], mode: str) -> dict[str, Any]:
    url = f"{base}/{resource['resourceType']}/{resource['id']}"
    return {"fullUrl": url, "resource": resource, "search": {"mode": mode}}


def _url(base: str, resource_type: str, query: list[tuple[str, str]]) -> str:
    return f"{base}/{resource_type}" + (f"?{urlencode(query)}" if query else "")
