"""The DICOM side's answer to "who is asking": a calling AE title, as a request context.

A registered AE speaks for its organization; an unknown AE gets a principal without an
organization, which ingest files as unassigned and the access policy lets only echo and store
(DESIGN.md "DICOM surface"). AE titles are not secrets, so a registered AE is also held to its
registered address or network and to its organization being enabled
(`storage.access.standing`): that is checked against the database when the association is
requested, so a change is seen by the next association without a restart; a refused request
gets an A-ASSOCIATE-RJ, a log line and an audit record saying why.

Every operation on patient data leaves one audit record, committed before its answer goes out
(`audit`): a C-FIND, a worklist query, a C-MOVE or C-GET (one per study it sends), a storage
commitment request, and the first instance of each study an association stores.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association

from pacs.admission import reject
from pacs.association import state_of
from storage.access.context import AccessEvent, Channel, Context
from storage.access.limits import RateLimited
from storage.access.orgs import org_of_ae
from storage.access.principal import Principal
from storage.access.standing import check_node
from storage.archive import Archive

log = logging.getLogger(__name__)

#: A-ASSOCIATE-RJ: rejected-permanent, service user, calling AE title not recognized (PS3.8 9.3.4)
CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
#: the most studies one retrieval's audit names in records of their own
MAX_AUDITED_STUDIES = 100


def context_for(assoc: Association, archive: Archive) -> Context:
    """The request context of an association, resolved on first use and kept with it."""
    state = state_of(assoc)
    if state.context is None:
        calling_ae = str(assoc.requestor.ae_title).strip()
        with archive.db.read() as session:
            org = org_of_ae(session, calling_ae)
        principal = Principal.dicom_node(calling_ae, org)
        state.context = Context(
            principal,
            Channel.DIMSE,
            str(assoc.requestor.address),
            archive.audit,
            care_relationship=archive.settings.care_relationship,
        )
    return state.context


def on_requested(e: evt.Event, archive: Archive) -> None:
    """EVT_REQUESTED: reject a registered AE calling from elsewhere, or of a disabled organization."""
    assoc = e.assoc
    request = assoc.requestor.primitive
    if request is None or assoc.is_rejected or assoc.is_aborted:
        return  # another check (`pacs.admission`) rejected it already
    calling, address = str(request.calling_ae_title).strip(), str(assoc.requestor.address)
    node = check_node(archive.db, calling, address, certificate_cn(assoc))
    if node.refusal is None:
        return
    reject(assoc, CALLING_AE_NOT_RECOGNIZED, node.refusal)
    archive.audit.submit(  # not waited for: nothing is answered but the rejection
        AccessEvent(calling, node.org, Channel.DIMSE, address, "association", "refused", node.refusal)
    )


def certificate_cn(assoc: Association) -> str | None:
    """The common name of the client certificate the peer presented over DICOM TLS (verified by
    `PACS_DICOM_TLS_CA`), or None on the plain port or without a certificate."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    subject: Any = (sock.getpeercert() or {}).get("subject", ())  # ((("commonName", "ct1"),), ...)
    names = [value for rdn in subject for key, value in rdn if key == "commonName"]
    return str(names[0]) if names else None


def limit(ctx: Context, archive: Archive, action: str) -> None:
    """Refuse an AE over PACS_DICOM_RATE_LIMIT, with an Error Comment saying when to try again:
    0xA700 for C-FIND, 0xA701 for C-MOVE and C-GET (PS3.4 C.4.2.1.5, C.4.3.1.4: out of resources)."""
    try:
        archive.rate_limits.dicom.take(ctx.principal.sub, f"{action} of AE {ctx.principal.sub}")
    except RateLimited as exc:
        if action != "C-FIND":
            exc.status = 0xA701
        raise


def audit(ctx: Context, action: str, *, patient: str | None = None, study: str | None = None, detail: str = "") -> None:
    """Record one operation of `ctx`, and return once the record is committed.

    Raises
    ------
    OutOfResources
        (`AuditUnavailable`) the record could not be written: the handler answers a failure.
    """
    ctx.audit.record(ctx.event(action, "ok", patient=patient or None, study=study or None, detail=detail))


def audit_studies(ctx: Context, action: str, studies: Iterable[str], detail: str) -> None:
    """One record per study a retrieval sends (at most `MAX_AUDITED_STUDIES`), or one without."""
    uids: list[str | None] = [*sorted(set(studies))[:MAX_AUDITED_STUDIES]]
    for uid in uids or [None]:
        audit(ctx, action, study=uid, detail=detail)


def keys_named(identifier: Dataset | None) -> tuple[str | None, str | None]:
    """The PatientID and StudyInstanceUID a query names (single values only), for its record."""
    if identifier is None:
        return None, None
    found: list[str | None] = []
    for keyword in ("PatientID", "StudyInstanceUID"):
        try:
            value = identifier.get(keyword)
        except Exception:  # noqa: BLE001 - a malformed identifier is refused elsewhere, with a reason
            value = None
        found.append(str(value)[:64] if isinstance(value, str) and value and "*" not in value else None)
    return found[0], found[1]
