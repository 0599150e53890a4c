"""Versions of derived resources: `meta.versionId` and the ETag from what the resource says.

Every resource here is built from the index on each read; none is stored with a history. Its
version is therefore a digest of its content (meta aside): it changes exactly when the resource
does (a study receives an instance, an identity takes a later study's demographics) and stays the
same across processes and restarts, which is what a client's `If-None-Match` and a cache need.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson


def versioned(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with `meta.versionId` set to the digest of the rest of it (its canonical JSON:
    keys sorted; orjson, as a search page digests a hundred studies)."""
    body = {key: value for key, value in data.items() if key != "meta"}
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return {**data, "meta": {**data.get("meta", {}), "versionId": digest}}


def etag(resource: dict[str, Any]) -> str:
    """The weak ETag of a resource (FHIR R4 3.1.0.5.2: `W/"<versionId>"`)."""
    return f'W/"{resource["meta"]["versionId"]}"'


def fhir_instant(moment: datetime) -> str:
    """A FHIR instant of an index time (SQLite hands times back without their zone: UTC), in
    UTC with `Z`, as fhir.resources writes one: a resource built without validation (a search's,
    `imaging_study.data`) reads the same as a validated one."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
