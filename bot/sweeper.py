"""The background chores of a serving replica, on two daemon threads.

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

A failing database is logged and retried at the next beat; it never stops the threads (the
hourly chores run on a second one, so a slow chore never delays a renewal).
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
        self._threads: list[threading.Thread] = []

    def start(self) -> "Sweeper":
        # The hourly chores on a thread of their own: a slow one (many channels to look up, Slack
        # asking to wait) must never delay the lease renewals, or other replicas take work over.
        self._threads = [threading.Thread(target=self._loop, name="state-sweeper", daemon=True),
                         threading.Thread(target=self._hourly_loop, name="hourly-chores", daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def _loop(self) -> None:
        now = time.monotonic()
        next_renew, next_sweep = now, now + self._sweep_every
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_renew:
                next_renew = now + self._renew_every
                for renew in self._renew:
                    self._safely(renew, "renewing leases")
            if now >= next_sweep:
                next_sweep = now + self._sweep_every
                self._safely(self._take_over, "taking over lapsed events and questions")
            self._stop.wait(max(0.05, min(next_renew, next_sweep) - time.monotonic()))

    def _hourly_loop(self) -> None:
        while not self._stop.is_set():
            for chore in self._hourly:  # each on its own: one failing does not skip the next
                if self._stop.is_set():
                    return
                self._safely(chore, "an hourly chore")
            self._stop.wait(self._purge_every)

    @staticmethod
    def _safely(call: Callable[[], object], what: str) -> None:
        try:
            call()
        except Exception as error:  # noqa: BLE001 - a database blip must not end the chores
            log.warning("%s failed: %s", what, error)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
