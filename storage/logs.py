"""Structured log events: one line per event, dotted names, key=value fields, no patient data.

Modules call `event(log, "ingest.stored", sop_instance_uid=..., duration_ms=...)`; how lines
are rendered is decided once, by the command line (`pacs/cli.py`), through `EventFormatter`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

FIELDS = "pacs_fields"


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={FIELDS: fields})


class EventFormatter(logging.Formatter):
    """`2026-11-23T10:00:00Z INFO pacs.store ingest.stored sop_instance_uid=1.2.3 duration_ms=4.1`."""

    def format(self, record: logging.LogRecord) -> str:
        ts = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        parts = [f"{ts}.{int(record.msecs):03d}", record.levelname, record.name, record.getMessage()]
        for key, value in getattr(record, FIELDS, {}).items():
            if value is None:
                continue  # a field that does not apply to this event (no detail on a success)
            text = (
                value
                if isinstance(value, str) and value and " " not in value and '"' not in value
                else json.dumps(value, default=str, ensure_ascii=False)
            )
            parts.append(f"{key}={text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line
