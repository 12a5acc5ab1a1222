"""The circuit breaker on its own: opens after N failures in a row, refuses during the
cool-down, lets one probe through after it, closes on the probe's success."""

from __future__ import annotations

import pytest

from knowledge.breaker import CircuitBreaker, CircuitOpenError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_closes_after_a_good_probe():
    clock = Clock()
    breaker = CircuitBreaker(name="llm", failure_threshold=3, cooldown=30, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure("HTTP 500")
    assert breaker.state == "closed"
    breaker.record_success()  # a success in between resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure("HTTP 500")
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.retry_in() == pytest.approx(30)

    clock.now += 30
    assert breaker.allow()  # the one probe
    assert not breaker.allow()  # everyone else still waits while it runs
    breaker.record_failure("HTTP 500")  # probe failed: another full cool-down
    assert breaker.state == "open"
    clock.now += 29
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_call_refuses_without_calling_while_open():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5, clock=clock)
    calls = []

    def boom():
        calls.append(1)
        raise OSError("down")

    with pytest.raises(OSError):
        breaker.call(boom)
    with pytest.raises(CircuitOpenError):
        breaker.call(boom)
    assert len(calls) == 1
    clock.now += 5
    assert breaker.call(lambda: "ok") == "ok" and breaker.state == "closed"


def test_threshold_zero_never_opens():
    breaker = CircuitBreaker(failure_threshold=0, cooldown=5)
    for _ in range(10):
        breaker.record_failure("x")
    assert breaker.allow() and breaker.state == "closed"
