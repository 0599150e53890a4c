"""C-MOVE SCP (PS3.4 C.4.2): send what the identifier names to a registered node of the caller.

The caller must be a registered AE (`storage.access.policy.require_read`), the identifier valid for
its information model (`storage.retrieve.selection`), and the Move Destination an AE of the caller's
own organization registered with an address (`storage.access.orgs.move_destination`). pynetdicom then
opens one association to it, proposing each SOP class in its stored syntaxes and in explicit
and implicit VR little endian, and sends the sub-operations `pacs.suboperations` yields.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pynetdicom.events import Event

from pacs.policy import audit_studies, context_for, limit
from pacs.suboperations import Retrieval, destination_contexts, model_of, refuse
from storage.access.orgs import move_destination
from storage.access.policy import require_read
from storage.archive import Archive
from storage.errors import StorageError
from storage.retrieve.selection import parse_identifier, select_instances


def handle(event: Event, archive: Archive) -> Iterator[Any]:
    """pynetdicom's EVT_C_MOVE handler.

    Yields
    ------
    (host, port, {"contexts", "evt_handlers"}) or (None, None)
        The destination, or no destination: the request is refused (`refuse` sets why).
    int
        The number of C-STORE sub-operations.
    (status, dataset)
        The sub-operations, from `Retrieval.run`.
    """
    ctx = context_for(event.assoc, archive)
    fields = {"calling_ae": ctx.principal.sub, "destination": event.move_destination or ""}
    try:
        require_read(ctx, "C-MOVE")
        limit(ctx, archive, "C-MOVE")
        keys = parse_identifier(event.identifier, model_of(event))
        with archive.db.read() as session:
            destination = move_destination(session, event.move_destination or "", ctx.principal.org)
            instances = select_instances(session, ctx, keys)
        audit_studies(ctx, "C-MOVE", (i.study_uid for i in instances), f"{len(instances)} instances")
    except StorageError as exc:
        refuse(event, exc, service="move", fields=fields)
        yield None, None
        return
    retrieval = Retrieval(archive, instances, service="move", originator=ctx.principal.sub, fields=fields)
    try:
        options = {"contexts": destination_contexts(instances), "evt_handlers": retrieval.destination_handlers()}
        yield destination.host, destination.port, options
        yield len(instances)
        yield from retrieval.run(event)
    finally:
        retrieval.finish()
