"""Failed-login counting: at most N failures per key (client address, user name) in a window."""

from __future__ import annotations

import math
import time
from collections import deque

# A bound on memory under a spray of addresses or names: the stalest keys go first.
MAX_KEYS = 100_000


class FailureLimiter:
    def __init__(self, max_failures: int, window: float) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, clock: float) -> deque[float] | None:
        found = self._failures.get(key)
        if found is None:
            return None
        while found and found[0] <= clock - self.window:
            found.popleft()
        if not found:
            del self._failures[key]
            return None
        return found

    def retry_after(self, *keys: str) -> int | None:
        """Seconds until every key may try again, or None when none is over the limit."""
        clock = time.monotonic()
        waits = []
        for key in keys:
            found = self._recent(key, clock)
            if found is not None and len(found) >= self.max_failures:
                waits.append(found[-self.max_failures] + self.window - clock)
        return max(1, math.ceil(max(waits))) if waits else None

    def fail(self, *keys: str) -> None:
        clock = time.monotonic()
        for key in keys:
            self._recent(key, clock)
            self._failures.setdefault(key, deque(maxlen=self.max_failures)).append(clock)
            self._failures[key] = self._failures.pop(key)  # most recently used last
        while len(self._failures) > MAX_KEYS:
            del self._failures[next(iter(self._failures))]

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)
