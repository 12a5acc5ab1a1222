"""The background chores of a serving replica, on one daemon thread.

- every `lease/3` seconds: renew the leases of what this replica works on (question claims,
  per-person slots, a running refresh), so no other replica takes them over, and forget the
  cached members of channels whose membership another replica saw change;
- every `sweep` seconds: take over questions whose replica stopped renewing (it died after
  acknowledging them) and answer them here, and dispatch again the events kept in the inbox
  whose replica died before handling them (Services.take_over), and start a /reindex
  that a stopped replica had queued (Refresher.adopt_queued);
- every hour (and at start): purge old claims, limit slots, refresh runs and records
  (RECORDS_RETENTION_DAYS), and recheck the channels of the team's saved answers (one made
  private while no replica heard of it: Learner.recheck_channels).

A failing database is logged and retried at the next beat; it never stops the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

PURGE_EVERY = 3600.0


class Sweeper:
    """Runs `renew` callables, `take_over` and the `hourly` callables on their own beats until `stop()`."""

    def __init__(
        self, *, renew: list[Callable[[], object]], take_over: Callable[[], int], hourly: list[Callable[[], object]],
        lease_seconds: float, sweep_seconds: float, purge_seconds: float = PURGE_EVERY,
    ) -> None:
        self._renew = renew
        self._take_over = take_over
        self._hourly = hourly
        self._renew_every = max(0.2, lease_seconds / 3)
        self._sweep_every = sweep_seconds
        self._purge_every = purge_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Sweeper":
        self._thread = threading.Thread(target=self._loop, name="state-sweeper", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        now = time.monotonic()
        next_renew, next_sweep, next_purge = now, now + self._sweep_every, now
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_renew:
                next_renew = now + self._renew_every
                for renew in self._renew:
                    self._safely(renew, "renewing leases")
            if now >= next_sweep:
                next_sweep = now + self._sweep_every
                self._safely(self._take_over, "taking over lapsed events and questions")
            if now >= next_purge:
                next_purge = now + self._purge_every
                for chore in self._hourly:  # each on its own: one failing does not skip the next
                    self._safely(chore, "the hourly chores")
            self._stop.wait(max(0.05, min(next_renew, next_sweep, next_purge) - time.monotonic()))

    @staticmethod
    def _safely(call: Callable[[], object], what: str) -> None:
        try:
            call()
        except Exception as error:  # noqa: BLE001 - a database blip must not end the chores
            log.warning("%s failed: %s", what, error)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
