"""Per-user limits: how many questions a minute, and how many at once.

    limiter = UserLimiter(per_minute=settings.user_rate_per_minute,
                          max_concurrent=settings.user_max_concurrent)
    with limiter.slot(f"{team_id}:{user_id}") as decision:
        if not decision.allowed:
            reply(decision.message)
            return
        answer()

Or `try_acquire(key)` when the question is received and `release(key)` when
its worker finishes (exactly once per allowed decision).

The rate limit is a sliding one-minute window; a refused question does not
count towards it. Users with nothing in flight and nothing in the window are
forgotten, so memory only grows with the users active in the last minute.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

WINDOW_SECONDS = 60.0
RATE_MESSAGE = "You're asking faster than I can answer — try again in {seconds} {unit}."
BUSY_MESSAGE = "I'm still working on your previous question… I'll get to the next one once it's answered."


@dataclass(frozen=True)
class Decision:
    """Whether a question may go ahead; `message` is the friendly refusal to show."""

    allowed: bool
    reason: Literal["ok", "rate", "busy"] = "ok"
    message: str = ""
    retry_after: float = 0.0  # seconds until the rate limit lets the next question in


ALLOWED = Decision(allowed=True)


@dataclass
class _UserState:
    recent: deque[float] = field(default_factory=deque)  # start times inside the window
    active: int = 0


class UserLimiter:
    """Thread-safe per-user rate and concurrency limits; 0 turns a limit off.

    Raises ValueError for a negative limit.
    """

    def __init__(
        self,
        *,
        per_minute: int,
        max_concurrent: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 0 or max_concurrent < 0:
            raise ValueError("per-user limits must be 0 (off) or positive")
        self.per_minute = per_minute
        self.max_concurrent = max_concurrent
        self._clock = clock
        self._lock = threading.Lock()
        self._users: dict[str, _UserState] = {}
        self._last_sweep = clock()

    def try_acquire(self, key: str) -> Decision:
        """Start a question for `key` if both limits allow it (then call release once)."""
        with self._lock:
            now = self._clock()
            self._sweep(now)
            state = self._users.setdefault(key, _UserState())
            _expire(state.recent, now)
            if self.max_concurrent and state.active >= self.max_concurrent:
                return Decision(allowed=False, reason="busy", message=BUSY_MESSAGE)
            if self.per_minute and len(state.recent) >= self.per_minute:
                wait = state.recent[0] + WINDOW_SECONDS - now
                seconds = max(1, math.ceil(wait))
                return Decision(
                    allowed=False, reason="rate", retry_after=wait,
                    message=RATE_MESSAGE.format(seconds=seconds, unit="second" if seconds == 1 else "seconds"),
                )
            if self.per_minute:
                state.recent.append(now)
            state.active += 1
            return ALLOWED

    def release(self, key: str) -> None:
        """End a question started by an allowed `try_acquire`; extra calls are ignored."""
        with self._lock:
            state = self._users.get(key)
            if state is not None and state.active > 0:
                state.active -= 1

    @contextmanager
    def slot(self, key: str) -> Iterator[Decision]:
        """`try_acquire` for the `with` body; released on exit when it was allowed."""
        decision = self.try_acquire(key)
        try:
            yield decision
        finally:
            if decision.allowed:
                self.release(key)

    def active(self, key: str) -> int:
        """Questions `key` has in flight."""
        with self._lock:
            state = self._users.get(key)
            return state.active if state is not None else 0

    def tracked_users(self) -> int:
        """How many users are remembered (after forgetting the idle ones)."""
        with self._lock:
            self._sweep(self._clock(), force=True)
            return len(self._users)

    def _sweep(self, now: float, *, force: bool = False) -> None:
        # At most once a window: a full pass is O(users), cheap at that rate.
        if not force and now - self._last_sweep < WINDOW_SECONDS:
            return
        self._last_sweep = now
        for key in list(self._users):
            state = self._users[key]
            _expire(state.recent, now)
            if not state.active and not state.recent:
                del self._users[key]


def _expire(recent: deque[float], now: float) -> None:
    while recent and recent[0] <= now - WINDOW_SECONDS:
        recent.popleft()
