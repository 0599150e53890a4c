"""Which process holds something (a pending write, a claim, a forwarder's cursor), and whether it is gone.

The lowest layer of storage, so that every room that keeps claims in the database (ingest
recovery, storage commitment, the audit forwarder) asks the same question the same way.
"""

from __future__ import annotations

import os
import socket


def process_owner() -> str:
    """Who holds a pending write: host and pid, so recovery knows a dead writer on this host."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_gone(owner: str) -> bool:
    """Whether the process named by a `process_owner` value has surely ended: it ran on this
    host and its pid is dead. Another host's process cannot be seen, so it is never gone here."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
