"""The DICOM side's answer to "who is asking": a calling AE title, as a request context.

A registered AE speaks for its organization; an unknown AE gets a principal without an
organization, which ingest files as unassigned and the access policy lets only echo and store
(DESIGN.md "DICOM surface"). The lookup is made once per association, on its first request,
against the database, so an AE added with `pacs org add` is recognized by the next association
without a restart.
"""

from __future__ import annotations

from pynetdicom.association import Association

from pacs.association import state_of
from storage.access.context import Channel, Context
from storage.access.orgs import org_of_ae
from storage.access.principal import Principal
from storage.archive import Archive


def context_for(assoc: Association, archive: Archive) -> Context:
    """The request context of an association, resolved on first use and kept with it."""
    state = state_of(assoc)
    if state.context is None:
        calling_ae = str(assoc.requestor.ae_title).strip()
        with archive.db.read() as session:
            org = org_of_ae(session, calling_ae)
        principal = Principal.dicom_node(calling_ae, org)
        state.context = Context(principal, Channel.DIMSE, str(assoc.requestor.address), archive.audit)
    return state.context
