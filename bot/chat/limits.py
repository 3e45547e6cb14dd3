"""Per-user limits: a token bucket (rate and burst) and a cap on requests in flight at once.

A refused user is told when to try again: the time until the bucket holds a token again, or, for the
in-flight cap, nothing to wait for but the current answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

# Buckets of users who have gone quiet are forgotten once this many users are tracked.
_PRUNE_ABOVE = 10_000


@dataclass(frozen=True)
class Limited:
    """Why a request was refused, and (for the rate limit) how many seconds until one is allowed."""

    reason: Literal["rate", "in_flight"]
    retry_after_s: float = 0.0

    @property
    def retry_after_whole_s(self) -> int:
        return max(1, math.ceil(self.retry_after_s))


@dataclass
class _Bucket:
    tokens: float
    updated: float
    in_flight: int = 0


class UserLimits:
    """Token bucket of ``burst`` tokens refilled at ``per_minute`` per minute, plus ``max_in_flight``."""

    def __init__(self, *, per_minute: float, burst: int, max_in_flight: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def try_acquire(self, user_key: str) -> Limited | None:
        """Take a token and an in-flight slot for ``user_key``; ``None`` when admitted (then call
        :meth:`release` exactly once when the request ends), else why not."""
        bucket = self._refilled(user_key)
        if bucket.in_flight >= self._max_in_flight:
            return Limited("in_flight")
        if bucket.tokens < 1.0:
            return Limited("rate", (1.0 - bucket.tokens) / self._rate)
        bucket.tokens -= 1.0
        bucket.in_flight += 1
        return None

    def release(self, user_key: str) -> None:
        bucket = self._buckets.get(user_key)
        if bucket is not None and bucket.in_flight > 0:
            bucket.in_flight -= 1

    def _refilled(self, user_key: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(user_key)
        if bucket is None:
            if len(self._buckets) > _PRUNE_ABOVE:
                self._forget_idle(now)
            bucket = self._buckets[user_key] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        return bucket

    def _forget_idle(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            full = bucket.tokens + (now - bucket.updated) * self._rate >= self._burst
            if full and bucket.in_flight == 0:
                del self._buckets[key]
