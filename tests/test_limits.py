"""Per-user rate and concurrency limits, driven by a fake clock."""

from __future__ import annotations

import threading

import pytest

from bot.limits import BUSY_MESSAGE, UserLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _ask(limiter: UserLimiter, key: str):
    """One question that finishes at once."""
    with limiter.slot(key) as decision:
        return decision


def test_rate_limit_is_a_sliding_minute_per_user(clock):
    limiter = UserLimiter(per_minute=3, max_concurrent=0, clock=clock)
    for _ in range(3):
        assert _ask(limiter, "U1").allowed
        clock.advance(10)  # questions at t=0, 10, 20

    refused = _ask(limiter, "U1")
    assert (refused.allowed, refused.reason) == (False, "rate")
    # The oldest question leaves the window at t=60; it is t=30 now.
    assert refused.retry_after == pytest.approx(30)
    assert refused.message == "You're asking faster than I can answer — try again in 30 seconds."
    assert _ask(limiter, "U2").allowed  # other users are not affected

    clock.advance(29.5)
    assert _ask(limiter, "U1").message.endswith("try again in 1 second.")  # never "0 seconds"
    clock.advance(0.5)
    assert _ask(limiter, "U1").allowed  # t=60: the first one expired
    assert not _ask(limiter, "U1").allowed  # t=10 and t=20 are still inside


def test_refused_questions_do_not_count(clock):
    limiter = UserLimiter(per_minute=1, max_concurrent=0, clock=clock)
    assert _ask(limiter, "U1").allowed
    for _ in range(5):
        clock.advance(10)
        assert not _ask(limiter, "U1").allowed
    clock.advance(10)  # t=60
    assert _ask(limiter, "U1").allowed


def test_concurrency_limit_until_release(clock):
    limiter = UserLimiter(per_minute=0, max_concurrent=1, clock=clock)
    assert limiter.try_acquire("U1").allowed
    busy = limiter.try_acquire("U1")
    assert (busy.allowed, busy.reason, busy.message) == (False, "busy", BUSY_MESSAGE)
    assert busy.message.startswith("I'm still working on your previous question")
    assert limiter.try_acquire("U2").allowed
    assert limiter.active("U1") == 1

    limiter.release("U1")
    limiter.release("U1")  # an extra release must not open a second slot
    assert limiter.active("U1") == 0
    assert limiter.try_acquire("U1").allowed
    assert not limiter.try_acquire("U1").allowed


def test_slot_releases_when_the_body_raises(clock):
    limiter = UserLimiter(per_minute=0, max_concurrent=1, clock=clock)
    with pytest.raises(RuntimeError):
        with limiter.slot("U1") as decision:
            assert decision.allowed
            raise RuntimeError("answer failed")
    assert limiter.active("U1") == 0
    with limiter.slot("U1") as first, limiter.slot("U1") as second:
        assert first.allowed and not second.allowed
    # The refused inner slot did not release the outer one early, and both are done.
    assert limiter.active("U1") == 0


def test_idle_users_are_forgotten(clock):
    limiter = UserLimiter(per_minute=5, max_concurrent=2, clock=clock)
    for user in range(100):
        _ask(limiter, f"U{user}")
    assert limiter.try_acquire("busy-user").allowed  # still in flight: must be kept
    assert limiter.tracked_users() == 101
    clock.advance(61)
    assert limiter.tracked_users() == 1
    # The sweep also happens on its own during normal use.
    limiter.release("busy-user")
    clock.advance(61)
    _ask(limiter, "new")
    assert limiter.tracked_users() == 1


def test_both_limits_off_allows_everything(clock):
    limiter = UserLimiter(per_minute=0, max_concurrent=0, clock=clock)
    assert all(limiter.try_acquire("U1").allowed for _ in range(1000))


def test_negative_limits_are_rejected():
    with pytest.raises(ValueError, match="0 \\(off\\) or positive"):
        UserLimiter(per_minute=-1, max_concurrent=1)


def test_thread_safe_under_contention():
    limiter = UserLimiter(per_minute=50, max_concurrent=0)
    allowed = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        allowed.extend(limiter.try_acquire("U1").allowed for _ in range(25))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 50 and len(allowed) == 200
