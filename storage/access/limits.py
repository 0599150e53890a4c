"""Request rates per caller: a token bucket per token subject (HTTP) and per calling AE (DIMSE).

DESIGN.md's limits: one provider's runaway script or misconfigured workstation must not take the
archive from everybody else. Each caller has a bucket that fills at `rate` requests a second up
to `burst`; a request takes one token or is refused with how long to wait (HTTP 429 with
`Retry-After`, DIMSE 0xA700 with an Error Comment). The burst is generous on HTTP on purpose: a
viewer opening a CT series asks for hundreds of frames at once. Buckets live in the process
(several processes behind a load balancer each allow the rate), and at most `MAX_CALLERS` are
kept: the least recently used are forgotten, which only ever lets a request through.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from storage.errors import OutOfResources

MAX_CALLERS = 10_000


class RateLimited(OutOfResources):
    """Too many requests from one caller; `retry_after` says in how many seconds to try again."""

    status = 0xA700  # Refused: Out of Resources (PS3.4 C.4.1.1.4)
    reason = "rate_limited"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token buckets by caller key; `rate` 0 lets everything through."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, max(burst, 1.0)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, what: str) -> None:
        """Take one request of `key`'s bucket, or raise `RateLimited` saying how long to wait."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.pop(key, None) or _Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
            self._buckets[key] = bucket
            if len(self._buckets) > MAX_CALLERS:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return
            wait = math.ceil((1 - bucket.tokens) / self.rate)
        raise RateLimited(f"{what}: over {self.rate:g} requests/s, retry in {wait} s", wait)


@dataclass(frozen=True)
class RateLimits:
    """The limiters of one process: HTTP requests per token subject, DIMSE queries per calling AE."""

    http: RateLimiter
    dicom: RateLimiter

    @classmethod
    def of(cls, http_rate: float, dicom_rate: float) -> RateLimits:
        return cls(RateLimiter(http_rate, http_rate * 10), RateLimiter(dicom_rate, dicom_rate * 2))
