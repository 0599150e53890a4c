"""StorageError -> DIMSE status (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from storage.errors import StorageError

SUCCESS = 0x0000
MAX_COMMENT = 64  # Error Comment (0000,0902) is LO


def failure(exc: StorageError) -> Dataset:
    """A status dataset whose Error Comment tells the sender what was wrong."""
    status = Dataset()
    status.Status = exc.status
    status.ErrorComment = _comment(exc.detail)
    return status


def _comment(text: str) -> str:
    clean = "".join(c if 32 <= ord(c) < 127 and c != "\\" else " " for c in text)
    return clean[:MAX_COMMENT]
