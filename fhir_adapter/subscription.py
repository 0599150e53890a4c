"""Subscription (FHIR R4, channel rest-hook): parsed from a client's resource, and shown back.

The criteria is an ImagingStudy search (`ImagingStudy?patient=Patient/12&modality=CT`), read by
the same parser as the search route (`imaging_study.keys_of`), so a subscription is told of
exactly the studies that search would find for its owner, arriving after it was made. Result
parameters (`_count`, `_sort`, `_include`, `_cursor`) mean nothing for a notification and are
refused. Everything a client names is bounded: the endpoint (an http or https URL, within
`PACS_SUBSCRIPTION_ENDPOINTS` when set), at most `MAX_HEADERS` headers (`Name: value`, no line
breaks: a header cannot smuggle another), the reason. A resource that is not a Subscription is
400; one that is, but that this server cannot serve as asked, is 422 naming what.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fhir.resources.R4B.subscription import Subscription
from pydantic import ValidationError

from fhir_adapter import imaging_study
from fhir_adapter.meta import fhir_instant, versioned
from fhir_adapter.outcome import FhirError
from fhir_adapter.params import RESULT_PARAMS
from storage.workflow.subscriptions import ACTIVE, OFF, Record, Spec

#: the search parameters of Subscription (the CapabilityStatement lists these)
SEARCH_PARAMS: dict[str, tuple[str, str]] = {
    "status": ("token", "active, error or off"),
}
#: the payloads this server sends: none (an empty POST, a ping) or the ImagingStudy as FHIR JSON
PAYLOADS = frozenset({"application/fhir+json", "application/json"})
MAX_CRITERIA, MAX_ENDPOINT, MAX_REASON = 2048, 2048, 1024
MAX_HEADERS, MAX_HEADER = 10, 1024
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}:[ \t]*[\x20-\x7e]*$")
_STATUSES = {"requested": ACTIVE, "active": ACTIVE, "off": OFF}


def spec_of(body: Any, allowed: Sequence[str]) -> Spec:
    """What a client's Subscription asks for, checked; `allowed`: the endpoint prefixes
    permitted (empty: any http or https URL).

    Raises
    ------
    FhirError
        400 for a body that is not a valid Subscription, 422 for one this server will not serve.
    """
    if not isinstance(body, dict) or body.get("resourceType") != "Subscription":
        raise FhirError(400, "the body must be a Subscription resource")
    try:
        parsed = Subscription.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise FhirError(400, f"not a valid Subscription: {where}: {first.get('msg', '')}"[:300]) from None
    status = _STATUSES.get(str(parsed.status))
    if status is None:
        raise FhirError(422, f"status: {parsed.status} is the server's to set (requested, active or off)")
    channel = parsed.channel
    if channel.type != "rest-hook":
        raise FhirError(422, f"channel.type: only rest-hook is served, not {str(channel.type)[:40]!r}")
    payload = str(channel.payload or "")
    if payload and payload not in PAYLOADS:
        raise FhirError(422, f"channel.payload: none or application/fhir+json, not {payload[:60]!r}")
    reason = str(parsed.reason or "")
    if len(reason) > MAX_REASON:
        raise FhirError(422, f"reason: at most {MAX_REASON} characters")
    return Spec(
        criteria=check_criteria(str(parsed.criteria)),
        endpoint=_endpoint(str(channel.endpoint or ""), allowed),
        headers=_headers([str(h) for h in channel.header or []]),
        payload=payload,
        reason=reason,
        status=status,
        end=_end(parsed.end),
    )


def check_criteria(criteria: str) -> str:
    """The criteria, if it is an ImagingStudy search this server can match."""
    if len(criteria) > MAX_CRITERIA:
        raise FhirError(422, f"criteria: at most {MAX_CRITERIA} characters")
    resource_type, _, _ = criteria.partition("?")
    if resource_type != "ImagingStudy":
        raise FhirError(422, f"criteria: only ImagingStudy searches are served, not {resource_type[:40]!r}")
    query = query_of(criteria)
    result = sorted(n for n in query if n in RESULT_PARAMS or n in imaging_study.OWN_RESULT_PARAMS)
    if result:
        raise FhirError(422, f"criteria: {result[0]} shapes a page of results, not which study to notify")
    if "_lastUpdated" in query:
        raise FhirError(422, "criteria: _lastUpdated: a notification is for a study that has just changed")
    try:
        imaging_study.keys_of(query)
        imaging_study.patient_of(query)
    except FhirError as exc:
        raise FhirError(422, f"criteria: {exc.diagnostics}") from None
    return criteria


def query_of(criteria: str) -> dict[str, list[str]]:
    """The criteria's parameters, name -> values (a stored criteria was checked when given)."""
    _, _, text = criteria.partition("?")
    try:
        return parse_qs(text, keep_blank_values=True, strict_parsing=False, max_num_fields=30)
    except ValueError:
        raise FhirError(422, "criteria: at most 30 parameters") from None


def resource(record: Record) -> dict[str, Any]:
    """The Subscription resource of a stored one, validated."""
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": record.endpoint}
    if record.payload:
        channel["payload"] = record.payload
    if record.headers:
        channel["header"] = list(record.headers)
    data: dict[str, Any] = {
        "resourceType": "Subscription",
        "id": str(record.id),
        "meta": {"lastUpdated": fhir_instant(record.updated_at)},
        "status": record.status,
        "reason": record.reason or "notify new studies",
        "criteria": record.criteria,
        "channel": channel,
    }
    if record.end is not None:
        data["end"] = fhir_instant(record.end)
    if record.error:
        data["error"] = record.error
    return Subscription.model_validate(versioned(data)).model_dump(mode="json", exclude_none=True)


def _endpoint(url: str, allowed: Sequence[str]) -> str:
    if not url:
        raise FhirError(422, "channel.endpoint: a rest-hook needs the URL to post to")
    if len(url) > MAX_ENDPOINT or not url.isascii() or not url.isprintable():
        raise FhirError(422, f"channel.endpoint: an ASCII URL of at most {MAX_ENDPOINT} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FhirError(422, "channel.endpoint: an http or https URL")
    if allowed and not any(url.startswith(prefix) for prefix in allowed):
        raise FhirError(422, "channel.endpoint: not among the endpoints this server may post to")
    return url


def _headers(given: list[str]) -> tuple[str, ...]:
    if len(given) > MAX_HEADERS:
        raise FhirError(422, f"channel.header: at most {MAX_HEADERS}")
    for header in given:
        if len(header) > MAX_HEADER or not _HEADER.match(header):
            raise FhirError(422, f"channel.header: each 'Name: value', printable, at most {MAX_HEADER} characters")
    return tuple(given)


def _end(end: Any) -> datetime | None:
    if end is None:
        return None
    if not isinstance(end, datetime):
        raise FhirError(422, "end: an instant with its time zone")
    return end if end.tzinfo else end.replace(tzinfo=UTC)
