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

With `shared` (bot.state.limits.SharedLimits) the counts live in the state
database, so the limits hold across replicas; a slot of a replica that died
frees itself when its lease lapses.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from bot.state.limits import SharedLimits

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0
RATE_MESSAGE = "You're asking faster than I can answer — try again in {seconds} {unit}."
# Refused, not queued: the text must not promise an answer later.
BUSY_MESSAGE = "I'm still working on your previous question… please ask this one again once that answer is in."


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
        shared: SharedLimits | None = None,
    ) -> None:
        if per_minute < 0 or max_concurrent < 0:
            raise ValueError("per-user limits must be 0 (off) or positive")
        self.per_minute = per_minute
        self.max_concurrent = max_concurrent
        self._clock = clock
        self._lock = threading.Lock()
        self._users: dict[str, _UserState] = {}
        self._last_sweep = clock()
        self._shared = shared
        self._held: dict[str, list[int]] = {}  # shared slots this process holds, per key

    def try_acquire(self, key: str) -> Decision:
        """Start a question for `key` if both limits allow it (then call release once)."""
        if self._shared is not None:
            return self._try_shared(key)
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

    def _try_shared(self, key: str) -> Decision:
        if not self.per_minute and not self.max_concurrent:
            return ALLOWED
        try:
            slot = self._shared.acquire(key, per_minute=self.per_minute, max_concurrent=self.max_concurrent,
                                        window=WINDOW_SECONDS)
        except Exception as error:  # noqa: BLE001 - a database blip must not refuse everyone
            log.warning("per-person limits unavailable (%s): letting the question in", error)
            return ALLOWED
        if slot.reason == "busy":
            return Decision(allowed=False, reason="busy", message=BUSY_MESSAGE)
        if slot.reason == "rate":
            seconds = max(1, math.ceil(slot.retry_after))
            return Decision(
                allowed=False, reason="rate", retry_after=slot.retry_after,
                message=RATE_MESSAGE.format(seconds=seconds, unit="second" if seconds == 1 else "seconds"),
            )
        with self._lock:
            self._held.setdefault(key, []).append(slot.slot_id)
        return ALLOWED

    def release(self, key: str) -> None:
        """End a question started by an allowed `try_acquire`; extra calls are ignored."""
        if self._shared is not None:
            with self._lock:
                held = self._held.get(key)
                slot_id = held.pop(0) if held else None
                if held == []:
                    del self._held[key]
            if slot_id is not None:
                try:
                    self._shared.release(slot_id)
                except Exception as error:  # noqa: BLE001 - the slot's lease frees it anyway
                    log.warning("could not release a per-person slot (%s)", error)
            return
        with self._lock:
            state = self._users.get(key)
            if state is not None and state.active > 0:
                state.active -= 1

    def renew(self) -> None:
        """Extend the leases of the shared slots this process holds (nothing without `shared`)."""
        if self._shared is not None:
            self._shared.renew()

    def purge(self) -> None:
        """Forget shared slots outside the window (nothing without `shared`)."""
        if self._shared is not None:
            self._shared.purge(window=WINDOW_SECONDS)

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
        if self._shared is not None:
            return self._shared.active(key)
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
