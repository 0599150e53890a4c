"""C-GET SCP (PS3.4 C.4.3): send what the identifier names back over the requester's association.

The same rules as C-MOVE (`pacs.move`) without a destination: the instances go as C-STORE
sub-operations on the presentation contexts for which the requester took the storage SCP
role (PS3.4 C.4.3.3, role selection PS3.7 D.3.3.4), as stored when it accepted the stored
syntax, else decoded to explicit or implicit VR little endian.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pynetdicom.events import Event

from pacs.association import state_of
from pacs.policy import audit_studies, context_for, limit
from pacs.suboperations import Retrieval, model_of, refuse
from storage.access.policy import require_read
from storage.archive import Archive
from storage.errors import StorageError
from storage.retrieve.selection import parse_identifier, select_instances


def handle(event: Event, archive: Archive) -> Iterator[Any]:
    """pynetdicom's EVT_C_GET handler.

    Yields
    ------
    int
        The number of C-STORE sub-operations (0 for a refused request: `refuse` sets why).
    (status, dataset)
        The sub-operations, from `Retrieval.run`.
    """
    ctx = context_for(event.assoc, archive)
    fields = {"calling_ae": ctx.principal.sub}
    try:
        require_read(ctx, "C-GET")
        limit(ctx, archive, "C-GET")
        keys = parse_identifier(event.identifier, model_of(event))
        with archive.db.read() as session:
            instances = select_instances(session, ctx, keys)
        audit_studies(ctx, "C-GET", (i.study_uid for i in instances), f"{len(instances)} instances")
    except StorageError as exc:
        refuse(event, exc, service="get", fields=fields)
        yield 0
        return
    retrieval = Retrieval(archive, instances, service="get", originator=ctx.principal.sub, fields=fields)
    retrieval.send_through(event.assoc, state_of(event.assoc).direct)
    try:
        yield len(instances)
        yield from retrieval.run(event)
    finally:
        retrieval.finish()
