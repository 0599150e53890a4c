"""The one UID check of the archive (PS3.5 9.1): digits and dots, no leading zeros, 64 at most.

Every place a UID arrives from outside (a received object, a URL path, a query key, a retrieve
identifier, a commitment request, a worklist entry) checks it here, so that they cannot drift
apart, and an invalid UID is refused before it reaches a query or the index.
"""

from __future__ import annotations

import re

from storage.errors import InvalidUid, StorageError

#: PS3.5 9.1: components of digits without a leading zero, separated by dots, at least two
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
MAX_LENGTH = 64


def is_uid(value: str) -> bool:
    """Whether `value` is a valid UID, as is (no padding is stripped)."""
    return len(value) <= MAX_LENGTH and UID_RE.match(value) is not None


def check_uid(keyword: str, value: str, error: type[StorageError] = InvalidUid) -> str:
    """`value` if it is a valid UID, else raise `error` naming `keyword` (if any) and the value's start.

    `error` lets each caller keep its own vocabulary: `InvalidUid` (0xA900) for objects and paths,
    `InvalidQuery` for a search key, `InvalidCommitmentRequest` for a commitment request.
    """
    if not is_uid(value):
        what = f"{keyword} {value[:80]!r}" if keyword else repr(value[:80])
        raise error(f"{what} is not a valid UID (PS3.5 9.1)")
    return value
