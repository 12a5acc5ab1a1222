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


@dataclass(eq=False)
class Ticket:
    """A place in a person's line (`WaitingLine.reserve`); it starts once `ready` gave it its
    callbacks. Taken before the placeholder is posted, so two questions arriving together
    keep their order."""

    key: str
    since: float
    start: Callable[[], bool] | None = None
    give_up: Callable[[str], None] | None = None
    ended: str = ""  # why it left the line before it started ("stopping", "timeout")
    told: bool = False  # give_up was called


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
        self._lines: dict[str, deque[Ticket]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def has(self, key: str) -> bool:
        """Whether `key` has questions waiting (a new one goes behind them, not ahead)."""
        with self._lock:
            return bool(self._lines.get(key))

    def reserve(self, key: str) -> Ticket | None:
        """Take the last place in `key`'s line; None when `size` questions already wait.
        Then `ready` (or `withdraw`) it."""
        with self._lock:
            line = self._lines.setdefault(key, deque())
            if len(line) >= self.size:
                if not line:
                    del self._lines[key]
                return None
            ticket = Ticket(key=key, since=self._clock())
            line.append(ticket)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="waiting-line", daemon=True)
                self._thread.start()
            return ticket

    def ready(self, ticket: Ticket, *, start: Callable[[], bool], give_up: Callable[[str], None]) -> None:
        """Let the ticket start when the key's limits allow.

        `start()` runs on the line's thread holding the slot; it returns False to keep its
        place (the slot is given back: e.g. the worker pool is full) and owns the slot when
        it returns True. `give_up(reason)` runs instead when the question stops waiting:
        "stopping" (cancel_all), "timeout" (MAX_WAIT_SECONDS) or "error" (start raised).
        """
        with self._lock:
            ticket.start, ticket.give_up = start, give_up
            ended = ticket.ended
        if ended:  # cancelled or expired while its placeholder was being posted
            self._give_up(ticket, ended)
        self._wake.set()  # the slot may be free already

    def withdraw(self, ticket: Ticket) -> None:
        """Leave the line without starting (nothing could be posted for it)."""
        with self._lock:
            self._remove(ticket)
        self._wake.set()

    def join(self, key: str, *, start: Callable[[], bool], give_up: Callable[[str], None]) -> bool:
        """`reserve` and `ready` at once; False when the line is full."""
        ticket = self.reserve(key)
        if ticket is None:
            return False
        self.ready(ticket, start=start, give_up=give_up)
        return True

    def freed(self) -> None:
        """A person's slot was released here: look at the lines now rather than at the next poll."""
        self._wake.set()

    def waiting(self) -> int:
        with self._lock:
            return sum(len(line) for line in self._lines.values())

    def cancel_all(self, reason: str = "stopping") -> int:
        """Stop every wait (`give_up(reason)` for each, now or once it is ready); how many waited."""
        with self._lock:
            tickets = [ticket for line in self._lines.values() for ticket in line]
            self._lines.clear()
            for ticket in tickets:
                ticket.ended = reason
        for ticket in tickets:
            self._give_up(ticket, reason)
        self._wake.set()
        return len(tickets)

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
                    self._thread = None  # a reserve from now on starts a new one
                    return

    def _expire(self, key: str) -> None:
        now = self._clock()
        with self._lock:
            line = self._lines.get(key)
            expired = []
            while line and now - line[0].since >= self._max_wait:
                expired.append(line.popleft())
                expired[-1].ended = "timeout"
            if line is not None and not line:
                del self._lines[key]
        for ticket in expired:
            self._give_up(ticket, "timeout")

    def _head(self, key: str) -> Ticket | None:
        """The first ticket of `key` if it is ready to start (under the lock)."""
        line = self._lines.get(key)
        return line[0] if line and line[0].start is not None else None

    def _admit(self, key: str) -> None:
        """Start the waiting questions of `key`, in order, while its limits allow."""
        while True:
            with self._lock:
                if self._head(key) is None:
                    return  # nobody waits, or the first is still posting its placeholder
            if not self._limiter.try_acquire(key).allowed:
                return
            with self._lock:
                ticket = self._head(key)
                if ticket is not None:
                    self._remove(ticket)
            if ticket is None:  # cancelled while the slot was taken
                self._limiter.release(key)
                return
            try:
                started = ticket.start()
            except Exception:  # one failed start must not stop the line
                log.exception("could not start a waiting question")
                self._limiter.release(key)
                self._give_up(ticket, "error")
                continue
            if not started:
                self._limiter.release(key)
                with self._lock:
                    self._lines.setdefault(key, deque()).appendleft(ticket)  # its place is kept
                return

    def _remove(self, ticket: Ticket) -> None:
        line = self._lines.get(ticket.key)
        if line is not None and ticket in line:
            line.remove(ticket)
            if not line:
                del self._lines[ticket.key]

    def _give_up(self, ticket: Ticket, reason: str) -> None:
        """Tell the ticket's question once (cancel_all and ready may both try)."""
        with self._lock:
            if ticket.give_up is None or ticket.told:
                return  # not ready yet (`ready` tells it), or told already
            ticket.told = True
        try:
            ticket.give_up(reason)
        except Exception:  # the others must still be told
            log.exception("could not end a waiting question (%s)", reason)
