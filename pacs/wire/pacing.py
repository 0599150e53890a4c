"""Pacing a long C-FIND answer so that a C-CANCEL can still be read.

pynetdicom queues every response in memory, and its reactor reads from the peer (where a
C-CANCEL arrives) only when that queue is empty. Unpaced, a long answer (study search or
worklist) would be encoded in full ahead of the network and its C-CANCEL read only after the
last match. Both C-FIND handlers call `keep_pace` every `PACE_EVERY` answers. Where
`pacs.wire.direct_send` writes the answers (every plain-TCP association) nothing is queued and the
DUL thread reads meanwhile; the pause when the peer has spoken still lets it take the C-CANCEL
before the next answer is read from the index.
"""

from __future__ import annotations

import select
import time
from typing import Any

#: responses pynetdicom may hold unsent before the handler waits (each is two P-DATA primitives)
BACKLOG = 64
#: answers between two looks at the network (a look releases the GIL, which costs a thread switch)
PACE_EVERY = 16
#: the longest a handler waits for the network before it goes on anyway
PACE_TIMEOUT = 2.0


def keep_pace(assoc: Any) -> None:
    """Wait before the next answer while pynetdicom has many queued or the peer has spoken."""
    dul = assoc.dul
    deadline = time.monotonic() + PACE_TIMEOUT
    while assoc.is_established and time.monotonic() < deadline:
        if dul.to_provider_queue.qsize() <= 2 * BACKLOG and not _peer_spoke(dul):
            return
        time.sleep(0.0005)


def _peer_spoke(dul: Any) -> bool:
    """Whether bytes from the peer wait unread (a select on the socket, without side effects)."""
    sock = getattr(dul.socket, "socket", None)
    if sock is None:
        return False
    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(ready)
