"""The serving replica's background chores (bot.sweeper): beats kept apart, failures contained."""

from __future__ import annotations

import threading
import time

from bot.sweeper import Sweeper


def test_a_slow_hourly_chore_never_delays_lease_renewals_and_a_failing_one_skips_nothing():
    renewals: list[float] = []
    release = threading.Event()
    ran: list[str] = []

    def failing() -> None:
        ran.append("failing")
        raise RuntimeError("database blip")

    def slow() -> None:
        ran.append("slow")
        release.wait(10)  # many channels to look up, Slack asking to wait

    sweeper = Sweeper(renew=[lambda: renewals.append(time.monotonic())], take_over=lambda: 0,
                      hourly=[failing, slow], lease_seconds=0.6, sweep_seconds=30).start()
    try:
        time.sleep(1.5)
        during = len(renewals)
    finally:
        release.set()
        sweeper.stop()
    assert ran == ["failing", "slow"]  # the failure was logged, the next chore still ran
    assert during >= 5  # every 0.2 s while the slow chore held its own thread
