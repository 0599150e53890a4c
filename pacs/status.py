"""StorageError -> DIMSE status (PS3.4 Annex B.2.3, PS3.7 Annex C), with an Error Comment that fits.

Error Comment (0000,0902) is an LO: 64 characters at most, no backslash or control characters.
The errors' details are written to fit where they can; a longer one (a long UID quoted, a
path of keywords) is cut at a word and marked with "...", never mid-word, and the whole detail
goes to the log line of the request, which every handler writes.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from storage.errors import StorageError

SUCCESS = 0x0000
MAX_COMMENT = 64  # Error Comment (0000,0902) is LO
_MORE = "..."


def failure(exc: StorageError) -> Dataset:
    """A status dataset whose Error Comment tells the sender what was wrong."""
    status = Dataset()
    status.Status = exc.status
    status.ErrorComment = error_comment(exc.detail)
    return status


def error_comment(text: str) -> str:
    """`text` as an LO value: printable ASCII, at most 64 characters, cut at a word if longer."""
    clean = " ".join("".join(c if 32 <= ord(c) < 127 and c != "\\" else " " for c in text).split())
    if len(clean) <= MAX_COMMENT:
        return clean
    room = MAX_COMMENT - len(_MORE)
    cut = clean.rfind(" ", 0, room + 1)
    head = clean[:cut] if cut > room // 2 else clean[:room]  # one very long word: cut it, marked
    return head.rstrip(" ,;:(") + _MORE
