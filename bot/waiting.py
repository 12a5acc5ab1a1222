"""A person's questions that wait behind their own earlier ones instead of being refused.

USER_MAX_CONCURRENT lets one question of a person be answered at a time (and
USER_RATE_PER_MINUTE so many a minute); the next few (USER_QUEUE_SIZE) wait here, in
order, and start as soon as the limits allow: on this replica when its answer ends, or
at the next poll for another replica's answer (shared limits) or the minute's window.
Only when the line is full is a question refused.

    line = WaitingLine(limiter=limiter, size=3)
    if line.join(key, start=submit, give_up=tell_them):
        ...  # start() runs later on the line's thread, holding the person's slot

One daemon thread admits questions; it exists only while someone waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bot.limits import UserLimiter

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how often a waiting question looks again (another replica's slot, the rate window)
MAX_WAIT_SECONDS = 600.0  # then the person is told the bot is busy rather than left waiting


@dataclass
class _Waiting:
    start: Callable[[], bool]
    give_up: Callable[[str], None]
    since: float


class WaitingLine:
    """Per-person FIFO lines in front of a UserLimiter; `size` 0 turns waiting off.

    Raises ValueError for a negative size.
    """

    def __init__(
        self, *, limiter: UserLimiter, size: int, max_wait: float = MAX_WAIT_SECONDS,
        poll_seconds: float = POLL_SECONDS, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if size < 0:
            raise ValueError("the waiting line's size must be 0 (off) or positive")
        self.size = size
        self._limiter = limiter
        self._max_wait = max_wait
        self._poll = poll_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._lines: dict[str, deque[_Waiting]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def has(self, key: str) -> bool:
        """Whether `key` has questions waiting (a new one goes behind them, not ahead)."""
        with self._lock:
            return bool(self._lines.get(key))

    def has_room(self, key: str) -> bool:
        with self._lock:
            return len(self._lines.get(key, ())) < self.size

    def join(self, key: str, *, start: Callable[[], bool], give_up: Callable[[str], None]) -> bool:
        """Wait for a slot of `key`; False when `size` questions already wait.

        `start()` runs on the line's thread holding the slot; it returns False to keep its
        place (the slot is given back: e.g. the worker pool is full) and owns the slot when
        it returns True. `give_up(reason)` runs instead when the question stops waiting:
        "stopping" (cancel_all), "timeout" (MAX_WAIT_SECONDS) or "error" (start raised).
        """
        with self._lock:
            line = self._lines.setdefault(key, deque())
            if len(line) >= self.size:
                if not line:
                    del self._lines[key]
                return False
            line.append(_Waiting(start=start, give_up=give_up, since=self._clock()))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="waiting-line", daemon=True)
                self._thread.start()
        self._wake.set()  # the slot may be free already (released between the refusal and now)
        return True

    def freed(self) -> None:
        """A person's slot was released here: look at the lines now rather than at the next poll."""
        self._wake.set()

    def waiting(self) -> int:
        with self._lock:
            return sum(len(line) for line in self._lines.values())

    def cancel_all(self, reason: str = "stopping") -> int:
        """Stop every wait (`give_up(reason)` for each); how many were waiting."""
        with self._lock:
            entries = [entry for line in self._lines.values() for entry in line]
            self._lines.clear()
        for entry in entries:
            self._give_up(entry, reason)
        self._wake.set()
        return len(entries)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._poll)
            self._wake.clear()
            with self._lock:
                keys = list(self._lines)
            for key in keys:
                self._expire(key)
                self._admit(key)
            with self._lock:
                if not self._lines:
                    self._thread = None  # a join from now on starts a new one
                    return

    def _expire(self, key: str) -> None:
        now = self._clock()
        with self._lock:
            line = self._lines.get(key)
            expired = []
            while line and now - line[0].since >= self._max_wait:
                expired.append(line.popleft())
            if line is not None and not line:
                del self._lines[key]
        for entry in expired:
            self._give_up(entry, "timeout")

    def _admit(self, key: str) -> None:
        """Start the waiting questions of `key`, in order, while its limits allow."""
        while self.has(key):
            if not self._limiter.try_acquire(key).allowed:
                return
            with self._lock:
                line = self._lines.get(key)
                if not line:  # cancelled while the slot was taken
                    entry = None
                else:
                    entry = line.popleft()
                    if not line:
                        del self._lines[key]
            if entry is None:
                self._limiter.release(key)
                return
            try:
                started = entry.start()
            except Exception:  # one failed start must not stop the line
                log.exception("could not start a waiting question")
                self._limiter.release(key)
                self._give_up(entry, "error")
                continue
            if not started:
                self._limiter.release(key)
                with self._lock:
                    self._lines.setdefault(key, deque()).appendleft(entry)  # its place is kept
                return

    @staticmethod
    def _give_up(entry: _Waiting, reason: str) -> None:
        try:
            entry.give_up(reason)
        except Exception:  # the others must still be told
            log.exception("could not end a waiting question (%s)", reason)
