"""What the SCP keeps about one association while it lasts: who it is, what it did, how it sends.

One `AssociationState` per accepted association, made when pynetdicom reports it accepted and
dropped when it ends; every handler reads it through `state_of`. It replaces what used to be
three module-level maps keyed by association (the principal, the counters, the direct sender).
The caller's request context is resolved on first use, so an association that only echoes
never touches the database.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field

from pynetdicom.association import Association

from pacs.wire import direct_send
from pacs.wire.direct_send import DirectSend
from storage.access.context import Context


@dataclass
class AssocStats:
    """The counters of the one log line an association leaves when it ends."""

    started: float = field(default_factory=time.perf_counter)
    stored: int = 0
    already_present: int = 0
    rejected: int = 0
    bytes: int = 0


class AssociationState:
    """The state of one accepted association; its handlers run one at a time, on its thread."""

    def __init__(self, assoc: Association) -> None:
        self.stats = AssocStats()
        #: the association's direct sender (`pacs.wire.direct_send`); None on TLS
        self.direct: DirectSend | None = direct_send.install(assoc)
        #: the caller's request context, set on first use by `pacs.policy.context_for`
        self.context: Context | None = None
        #: the studies this association stored into that have their audit record
        self.audited_studies: set[str] = set()


_states: weakref.WeakKeyDictionary[Association, AssociationState] = weakref.WeakKeyDictionary()


def begin(assoc: Association) -> AssociationState:
    """Start keeping an accepted association's state (before its first request)."""
    state = _states[assoc] = AssociationState(assoc)
    return state


def state_of(assoc: Association) -> AssociationState:
    """The state of an association `begin` was called for (made now if it was not: a safety net)."""
    state = _states.get(assoc)
    return state if state is not None else begin(assoc)


def end(assoc: Association) -> AssocStats:
    """Forget an association that was released or aborted; its counters, for the log line."""
    state = _states.pop(assoc, None)
    return state.stats if state is not None else AssocStats()
