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
    # a line per request with its whole URL: a Subscription's endpoint may carry a secret in its
    # query; our own `fhir.subscription.*` lines say what was sent
    logging.getLogger("httpx").setLevel(logging.WARNING)
    drop_restated_library_errors()


class _Restated(logging.Filter):
    """A library's ERROR for something the archive handles and says itself, in a line of its own.

    - pynetdicom's for a C-MOVE the archive refused on purpose ("Unknown Move Destination"): the
      `dimse.move.refused` WARNING already says so, with the reason (unknown, address-less or
      another organization's AE);
    - pydicom's "Error while processing tag ..." when a value inside a sequence violates its VR:
      the element is left out of the index's DICOM JSON, as pydicom's own `to_json_dict` does
      (`storage.dicom.fastjson`), the object is stored as sent, and `dicomjson.element_dropped`
      says which element, as a WARNING.

    An operator alerting on ERROR lines should not be paged for an object that was accepted.
    """

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


_RESTATED = {
    "pynetdicom.service_class": "Unknown Move Destination:",
    "pydicom": "Error while processing tag",
}


def drop_restated_library_errors() -> None:
    """Idempotent: each filter goes on its library's logger once."""
    for name, prefix in _RESTATED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Restated) for f in logger.filters):
            logger.addFilter(_Restated(prefix))
