"""Client-side limits: a token-bucket request rate and retry backoff delays."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime


class TokenBucket:
    """At most ``rate`` acquisitions per second on average, bursts of up to ``capacity``.

    :meth:`reserve` takes a token now (the balance may go negative: a reservation) and returns
    how many seconds the caller must wait before using it, so concurrent callers queue fairly.
    """

    def __init__(self, rate_per_s: float, capacity: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or capacity < 1:
            raise ValueError("rate_per_s must be > 0 and capacity >= 1")
        self.rate = rate_per_s
        self.capacity = capacity
        self.clock = clock
        self.tokens = capacity
        self.last = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        with self._lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now
            self.tokens -= 1.0
            return max(0.0, -self.tokens / self.rate)

    def acquire(self, sleep: Callable[[float], None] = time.sleep) -> float:
        wait = self.reserve()
        if wait > 0:
            sleep(wait)
        return wait


def backoff_delay(retry: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: ``d = min(cap, base·2^retry)``, uniform in [d/2, d]."""
    d = min(cap, base * (2.0**retry))
    return d / 2 + rng.random() * d / 2


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or
    unreadable (the caller then uses its own backoff)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())
