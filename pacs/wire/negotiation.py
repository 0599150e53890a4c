"""The transfer syntax accepted on a storage context over which the archive sends (C-GET).

pynetdicom accepts, per presentation context, the first syntax of the acceptor's list that the
requester proposed, whatever the roles. `pacs.server.TRANSFER_SYNTAXES` puts compressed syntaxes
first, which is right for incoming C-STOREs (a modality's compressed bytes are kept) and wrong
where a C-GET requester takes the SCP role of a storage class (PS3.7 D.3.3.4) to receive the
instances: the archive sends an instance as stored or decoded to explicit (else implicit) VR
little endian, never re-compressed (`storage.retrieve.selection`), so a context accepted as JPEG Lossless
fails every instance stored otherwise. dcmtk's `getscu +xs` (or `+xv`, `+xr`...) proposes
exactly that: one context per storage class, a compressed syntax first, then the uncompressed.

So, where the archive is the storage SCU of a class, one of that class's contexts is accepted
in an uncompressed syntax whenever the requester proposed one there: a context already accepted
so is kept, else the first context that offers one is switched to it. The class's other
contexts keep their compressed syntax, so a requester that proposes a compressed syntax in a
context of its own still receives those instances as stored.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from pynetdicom import acse
from pynetdicom.presentation import PresentationContext

from storage.retrieve.selection import FALLBACK_SYNTAXES

Negotiate = Callable[..., tuple[list[PresentationContext], Any]]


def install() -> None:
    """Wrap pynetdicom's acceptor negotiation (a name in `pynetdicom.acse`) once per process."""
    negotiate: Negotiate = acse.negotiate_as_acceptor  # type: ignore[attr-defined]  # imported there
    if getattr(negotiate, "__wrapped__", None) is not None:
        return

    @functools.wraps(negotiate)
    def negotiate_sendable(
        rq_contexts: list[PresentationContext], ac_contexts: list[PresentationContext], roles: Any = None
    ) -> tuple[list[PresentationContext], Any]:
        result, reply_roles = negotiate(rq_contexts, ac_contexts, roles)
        return prefer_sendable(result, rq_contexts), reply_roles

    acse.negotiate_as_acceptor = negotiate_sendable  # type: ignore[attr-defined]


def prefer_sendable(
    result: list[PresentationContext], rq_contexts: Sequence[PresentationContext]
) -> list[PresentationContext]:
    """Give each storage class the archive sends on one context it can send every instance in.

    `result` is pynetdicom's negotiation outcome and is changed in place; `as_scu` on an
    accepted context means the archive (the acceptor) may send C-STORE requests on it.
    """
    offered = {cx.context_id: cx.transfer_syntax for cx in rq_contexts}
    sending = [cx for cx in result if cx.result == 0x00 and cx.as_scu]
    settled = {cx.abstract_syntax for cx in sending if cx.transfer_syntax[0] in FALLBACK_SYNTAXES}
    for cx in sending:
        if cx.abstract_syntax in settled:
            continue
        syntax = next((ts for ts in FALLBACK_SYNTAXES if ts in offered.get(cx.context_id, ())), None)
        if syntax is not None:
            cx.transfer_syntax = [syntax]
            settled.add(cx.abstract_syntax)
    return result
