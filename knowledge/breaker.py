"""A circuit breaker: stop calling a service that keeps failing, and try it again later.

Closed: every call goes through; `failure_threshold` consecutive failures open it.
Open: calls are refused at once (`allow()` is False) for `cooldown` seconds.
Half-open: after the cool-down one caller is let through as a probe; its success
closes the breaker, its failure opens it for another cool-down. Other callers are
refused while the probe runs. Thread-safe; no dependency on what is protected.

    breaker = CircuitBreaker(name="language model", failure_threshold=3, cooldown=30)
    if not breaker.allow():
        ...  # answer without the service, at once
    try:
        result = call()
    except TransientError:
        breaker.record_failure()
        raise
    breaker.record_success()

or `breaker.call(fn, *args)`, which raises CircuitOpenError when refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
State = Literal["closed", "open", "half_open"]


class CircuitOpenError(RuntimeError):
    """A call was refused because the breaker is open (or a probe is already running)."""


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a timed half-open probe (see the module doc)."""

    def __init__(
        self,
        *,
        name: str = "service",
        failure_threshold: int = 3,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`failure_threshold` < 1 disables the breaker (it never opens). Raises ValueError on a negative cooldown."""
        if cooldown < 0:
            raise ValueError("cooldown must be >= 0 seconds")
        self.name = name
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.last_error = ""  # the message of the failure that opened it (for status pages)

    @property
    def enabled(self) -> bool:
        return self.failure_threshold >= 1

    @property
    def state(self) -> State:
        with self._lock:
            return self._state()

    def _state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() - self._opened_at >= self.cooldown:
            return "half_open"
        return "open"

    def retry_in(self) -> float:
        """Seconds until the next probe may run (0 when closed or due)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self.cooldown - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """True when a call may go ahead now; in half-open state only the first caller gets True.

        A True from a half-open breaker makes the caller the probe: it must report
        the outcome with record_success() or record_failure().
        """
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "open" or self._probing:
                return False
            self._probing = True
            return True

    def record_success(self) -> None:
        """The service answered: close the breaker and forget earlier failures."""
        with self._lock:
            was_open = self._opened_at is not None
            self._failures = 0
            self._opened_at = None
            self._probing = False
            self.last_error = ""
        if was_open:
            log.info("%s answered again: circuit closed", self.name)

    def record_failure(self, error: str = "") -> None:
        """The service failed (a transient or service-side failure, not a bad request)."""
        with self._lock:
            self._failures += 1
            reopen = self._probing
            self._probing = False
            if not self.enabled or (not reopen and self._failures < self.failure_threshold):
                return
            first = self._opened_at is None
            self._opened_at = self._clock()
            self.last_error = error or self.last_error
        if first:
            log.warning(
                "%s failed %d times in a row%s: answering without it for %.0f s",
                self.name, self.failure_threshold, f" ({error})" if error else "", self.cooldown,
            )
        else:
            log.info("%s still failing: circuit stays open for %.0f s", self.name, self.cooldown)

    def release(self) -> None:
        """Give up a probe slot without an outcome (e.g. the caller's own request was bad)."""
        with self._lock:
            self._probing = False

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run fn through the breaker: any exception counts as a failure and is re-raised.

        Raises CircuitOpenError (without calling fn) while the breaker is open.
        """
        if not self.allow():
            raise CircuitOpenError(f"{self.name} is unavailable (circuit open)")
        try:
            result = fn(*args, **kwargs)
        except Exception as error:
            self.record_failure(str(error).splitlines()[0] if str(error) else type(error).__name__)
            raise
        self.record_success()
        return result
