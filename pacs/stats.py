"""Per-association counters, for the one log line each association leaves when it ends."""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any


@dataclass
class AssocStats:
    started: float = field(default_factory=time.perf_counter)
    stored: int = 0
    already_present: int = 0
    rejected: int = 0
    bytes: int = 0


_stats: weakref.WeakKeyDictionary[Any, AssocStats] = weakref.WeakKeyDictionary()


def stats_for(assoc: Any) -> AssocStats:
    stats = _stats.get(assoc)
    if stats is None:
        stats = _stats[assoc] = AssocStats()
    return stats


def pop(assoc: Any) -> AssocStats:
    return _stats.pop(assoc, None) or AssocStats()
