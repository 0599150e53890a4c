"""Logging set-up of the `pacs` processes (the only place that configures logging)."""

from __future__ import annotations

import logging
import sys

from storage.logs import EventFormatter


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs every PDU at INFO; our own association lines say what matters.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin at every start
    drop_restated_pynetdicom_errors()


class _Restated(logging.Filter):
    """pynetdicom's ERROR for a C-MOVE the archive refused on purpose ("Unknown Move Destination"):
    the `dimse.move.refused` WARNING already says so, with the reason (unknown, address-less or
    another organization's AE). An operator alerting on ERROR lines should not be paged for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unknown Move Destination:")


def drop_restated_pynetdicom_errors() -> None:
    """Idempotent: the filter goes on pynetdicom's service class logger once."""
    logger = logging.getLogger("pynetdicom.service_class")
    if not any(isinstance(f, _Restated) for f in logger.filters):
        logger.addFilter(_Restated())
