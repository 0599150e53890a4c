"""The DICOM side's answer to "who is asking": calling AE title -> Principal.

A registered AE speaks for its organization; an unknown AE gets a principal without an
organization, which ingest files as unassigned (DESIGN.md "DICOM surface"). The lookup is
made once per association, against the database, so an AE added with `pacs org add`
is recognized by the next association without a restart.
"""

from __future__ import annotations

import weakref
from typing import Any

from storage.access.orgs import org_of_ae
from storage.access.principal import Principal
from storage.archive import Archive

_cache: weakref.WeakKeyDictionary[Any, Principal] = weakref.WeakKeyDictionary()


def principal_for(assoc: Any, archive: Archive) -> Principal:
    """The principal of an association (pynetdicom `Association`), resolved once."""
    principal = _cache.get(assoc)
    if principal is None:
        calling_ae = str(assoc.requestor.ae_title).strip()
        with archive.db.read() as session:
            org = org_of_ae(session, calling_ae)
        principal = Principal.dicom_node(calling_ae, org, str(assoc.requestor.address))
        _cache[assoc] = principal
    return principal
