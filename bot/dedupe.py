"""Remember recently seen event ids so a retried delivery is answered only once."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class SeenKeys:
    """A bounded set of keys that forgets them after `ttl` seconds (thread-safe)."""

    def __init__(self, *, ttl: float = 600.0, max_entries: int = 10_000) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, *keys: str) -> bool:
        """True (and remember them all) if none of the non-empty keys was seen recently."""
        keys = tuple(k for k in keys if k)
        if not keys:
            return True
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            if any(k in self._seen for k in keys):
                return False
            for key in keys:
                self._seen[key] = now
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)
            return True

    def _expire(self, now: float) -> None:
        # Insertion order is time order, so expired keys are at the front.
        while self._seen:
            key, seen_at = next(iter(self._seen.items()))
            if now - seen_at < self._ttl:
                break
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)
