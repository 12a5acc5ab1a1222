"""A person's questions waiting for their earlier answer (bot.waiting), in one process and
across two replicas sharing the limits in a database."""

from __future__ import annotations

import threading
import time

import pytest

from bot.limits import UserLimiter
from bot.state import Database, database_url
from bot.state.limits import SharedLimits
from bot.waiting import WaitingLine
from tests.bot_helpers import bot_replies, final_answers, outcomes, section_text, start_bot  # noqa: F401  (fixtures)


class Starts:
    """Records which waiting question started (holding the slot) or gave up, and why."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gave_up: list[tuple[str, str]] = []
        self.accept = True
        self.event = threading.Event()

    def start(self, name: str):
        def run() -> bool:
            if not self.accept:
                return False
            self.started.append(name)
            self.event.set()
            return True
        return run

    def give_up(self, name: str):
        def run(reason: str) -> None:
            self.gave_up.append((name, reason))
            self.event.set()
        return run

    def join(self, line: WaitingLine, key: str, name: str) -> bool:
        return line.join(key, start=self.start(name), give_up=self.give_up(name))


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_waiting_questions_start_in_order_as_the_persons_slot_frees():
    limiter = UserLimiter(per_minute=0, max_concurrent=1)
    line = WaitingLine(limiter=limiter, size=2, poll_seconds=30)  # only a release wakes it here
    starts = Starts()
    assert limiter.try_acquire("T:U1").allowed  # the first question is being answered
    assert starts.join(line, "T:U1", "second") and starts.join(line, "T:U1", "third")
    assert line.reserve("T:U1") is None and not starts.join(line, "T:U1", "fourth")  # the line is full
    assert line.has("T:U1") and not line.has("T:U2")
    time.sleep(0.1)
    assert starts.started == []  # nothing starts while the first is answered

    limiter.release("T:U1")
    line.freed()
    wait_until(lambda: starts.started == ["second"])
    assert limiter.active("T:U1") == 1 and line.waiting() == 1  # "second" holds the slot now
    time.sleep(0.1)
    assert starts.started == ["second"]  # one at a time

    limiter.release("T:U1")
    line.freed()
    wait_until(lambda: starts.started == ["second", "third"])
    assert not line.has("T:U1") and line.waiting() == 0
    limiter.release("T:U1")
    wait_until(lambda: line._thread is None)  # the line's thread ends when nobody waits


def test_a_place_taken_before_the_placeholder_keeps_the_order_of_arrival():
    """Two questions arriving together: the first reserves, posts its placeholder slowly; the
    second, ready sooner, still starts after it. A ticket cancelled before it was ready is told once."""
    limiter = UserLimiter(per_minute=0, max_concurrent=1)
    line = WaitingLine(limiter=limiter, size=2, poll_seconds=0.05)
    starts = Starts()
    assert limiter.try_acquire("T:U1").allowed
    first, second = line.reserve("T:U1"), line.reserve("T:U1")
    line.ready(second, start=starts.start("second"), give_up=starts.give_up("second"))
    limiter.release("T:U1")
    time.sleep(0.3)
    assert starts.started == [] and limiter.active("T:U1") == 0  # the first is not ready: nobody jumps it
    line.ready(first, start=starts.start("first"), give_up=starts.give_up("first"))
    wait_until(lambda: starts.started == ["first"])
    limiter.release("T:U1")
    wait_until(lambda: starts.started == ["first", "second"])

    late = line.reserve("T:U2")
    assert line.cancel_all("stopping") == 1 and starts.gave_up == []  # nothing to tell yet
    line.ready(late, start=starts.start("late"), give_up=starts.give_up("late"))
    line.cancel_all("stopping")
    assert starts.gave_up == [("late", "stopping")]  # told once, when it became ready
    withdrawn = line.reserve("T:U3")
    line.withdraw(withdrawn)
    assert line.waiting() == 0


def test_a_start_that_cannot_run_keeps_its_place_and_is_tried_again():
    limiter = UserLimiter(per_minute=0, max_concurrent=1)
    line = WaitingLine(limiter=limiter, size=3, poll_seconds=0.05)
    starts = Starts()
    starts.accept = False  # e.g. the worker pool is full
    assert starts.join(line, "T:U1", "a") and starts.join(line, "T:U1", "b")
    time.sleep(0.3)
    assert starts.started == [] and line.waiting() == 2
    assert limiter.active("T:U1") == 0  # the slot is given back each time
    starts.accept = True
    wait_until(lambda: starts.started == ["a"])
    assert line.waiting() == 1


def test_a_rate_limited_person_waits_for_the_window_and_stops_waiting_at_the_limit():
    now = [1000.0]
    limiter = UserLimiter(per_minute=1, max_concurrent=0, clock=lambda: now[0])
    line = WaitingLine(limiter=limiter, size=3, poll_seconds=0.02, max_wait=100, clock=lambda: now[0])
    starts = Starts()
    assert limiter.try_acquire("T:U1").allowed
    limiter.release("T:U1")
    assert starts.join(line, "T:U1", "later")
    time.sleep(0.2)
    assert starts.started == []
    now[0] += 61  # the rate window moved on
    wait_until(lambda: starts.started == ["later"])

    assert starts.join(line, "T:U1", "too late")
    now[0] += 100
    wait_until(lambda: starts.gave_up == [("too late", "timeout")])
    assert starts.started == ["later"] and line.waiting() == 0


def test_cancel_all_and_a_failing_start_tell_each_waiting_question():
    limiter = UserLimiter(per_minute=0, max_concurrent=1)
    line = WaitingLine(limiter=limiter, size=3, poll_seconds=30)
    starts = Starts()
    assert limiter.try_acquire("T:U1").allowed and limiter.try_acquire("T:U2").allowed
    assert starts.join(line, "T:U1", "a") and starts.join(line, "T:U2", "b")
    assert line.cancel_all("stopping") == 2
    assert sorted(starts.gave_up) == [("a", "stopping"), ("b", "stopping")] and line.waiting() == 0

    def broken() -> bool:
        raise RuntimeError("boom")

    assert line.join("T:U1", start=broken, give_up=starts.give_up("broken"))
    assert starts.join(line, "T:U1", "after")
    limiter.release("T:U1")
    line.freed()
    wait_until(lambda: starts.started == ["after"])
    assert ("broken", "error") in starts.gave_up  # and the line went on to the next one
    assert limiter.active("T:U1") == 1  # only "after" holds a slot

    with pytest.raises(ValueError):
        WaitingLine(limiter=limiter, size=-1)


def test_a_question_waiting_on_one_replica_starts_when_the_other_replica_answers(tmp_path):
    url = database_url(f"sqlite:///{tmp_path / 'state.sqlite'}", default_path="unused")
    first, second = Database(url=url), Database(url=url)
    try:
        a = UserLimiter(per_minute=0, max_concurrent=1,
                        shared=SharedLimits(database=first, holder="A", lease_seconds=30))
        b = UserLimiter(per_minute=0, max_concurrent=1,
                        shared=SharedLimits(database=second, holder="B", lease_seconds=30))
        line_b = WaitingLine(limiter=b, size=1, poll_seconds=0.05)
        starts = Starts()
        assert a.try_acquire("T:U1").allowed  # replica A answers the person's first question
        assert not b.try_acquire("T:U1").allowed
        assert starts.join(line_b, "T:U1", "on B")
        time.sleep(0.3)
        assert starts.started == []
        a.release("T:U1")  # A's answer is out: B's poll sees the slot free
        wait_until(lambda: starts.started == ["on B"])
        assert b.active("T:U1") == 1 and not a.try_acquire("T:U1").allowed
    finally:
        first.close()
        second.close()


class _Slow:
    """Answers after ~`seconds`, like a model writing."""

    def __init__(self, seconds: float = 1.5) -> None:
        self.seconds = seconds
        self.asked: list[str] = []

    def ask(self, question, *, history=(), source_names=None, on_delta=None):
        from knowledge.types import Answer

        self.asked.append(question)
        time.sleep(self.seconds)
        return Answer(question=question, text=f"about {question}", status="answered")


def _placeholder(fake_slack, channel: str, question: dict) -> dict:
    [message] = bot_replies(fake_slack, channel, question["ts"])
    return message


def test_two_replicas_one_person_the_second_question_waits_for_the_answer_on_the_other(
        fake_slack, start_bot, outcomes, tmp_path):
    from bot.services import WAITING_TEXT

    settings = {"feedback_db": tmp_path / "shared.sqlite", "user_max_concurrent": 1, "user_queue_size": 2}
    start_bot(_Slow(), **settings)
    start_bot(_Slow(), **settings)
    fake_slack.wait_connected(count=2)
    conn_a, conn_b = fake_slack.connections()
    first = fake_slack.mention("How do I rebuild?", channel="CW1", user="U7")
    fake_slack.send_event(first, connection=conn_a)
    wait_until(lambda: bot_replies(fake_slack, "CW1", first["ts"]))  # A is answering it
    second = fake_slack.mention("And how do I back up?", channel="CW1", user="U7")
    fake_slack.send_event(second, connection=conn_b)
    wait_until(lambda: bot_replies(fake_slack, "CW1", second["ts"]))
    assert _placeholder(fake_slack, "CW1", second)["text"] == WAITING_TEXT

    records = outcomes.wait(2, timeout=30)
    assert [r.outcome for r in records] == ["answered", "answered"]
    for question in (first, second):  # one reply each: the placeholder became the answer
        [answer] = bot_replies(fake_slack, "CW1", question["ts"])
        assert answer.get("blocks")
    assert "back up" in section_text(final_answers(fake_slack, "CW1", second["ts"])[0])


def test_a_waiting_question_is_handed_over_when_its_replica_stops(fake_slack, start_bot, outcomes, tmp_path):
    settings = {"feedback_db": tmp_path / "shared.sqlite", "user_max_concurrent": 1, "user_queue_size": 2,
                "claim_lease_seconds": 1.0}
    a = start_bot(_Slow(3.0), **settings)
    b = start_bot(_Slow(0.1), **settings)
    fake_slack.wait_connected(count=2)
    conn_a, _ = fake_slack.connections()
    first = fake_slack.mention("How do I rebuild?", channel="CW2", user="U7")
    fake_slack.send_event(first, connection=conn_a)
    wait_until(lambda: bot_replies(fake_slack, "CW2", first["ts"]))
    second = fake_slack.mention("And how do I back up?", channel="CW2", user="U7")
    fake_slack.send_event(second, connection=conn_a)
    wait_until(lambda: a.services.waiting.waiting() == 1)

    a.services.stop_taking_questions()  # SIGTERM: the answer in flight goes on, the waiting one is handed over
    assert a.services.waiting.waiting() == 0
    wait_until(lambda: b.services.take_over() == 1, timeout=10)
    records = outcomes.wait(2, timeout=30)
    assert sorted(r.outcome for r in records) == ["answered", "answered"]
    [answer] = bot_replies(fake_slack, "CW2", second["ts"])  # B answered in A's placeholder
    assert answer.get("blocks") and "back up" in section_text(answer)


def test_a_question_over_the_per_minute_limit_waits_for_the_window_instead_of_being_refused(
        fake_slack, start_bot, tmp_path):
    from bot.services import RATE_WAITING_TEXT

    bot = start_bot(_Slow(0.1), user_rate_per_minute=1, user_max_concurrent=0, user_queue_size=1)
    first = fake_slack.mention("How do I rebuild?", channel="CW3", user="U7")
    fake_slack.send_event(first)
    wait_until(lambda: final_answers(fake_slack, "CW3", first["ts"]))
    second = fake_slack.mention("And how do I back up?", channel="CW3", user="U7")
    fake_slack.send_event(second)
    wait_until(lambda: bot_replies(fake_slack, "CW3", second["ts"]))
    [waiting] = bot_replies(fake_slack, "CW3", second["ts"])
    prefix = RATE_WAITING_TEXT.split("{")[0]
    assert waiting["text"].startswith(prefix) and "seconds" in waiting["text"]  # about a minute, said
    assert bot.services.waiting.waiting() == 1
    assert "supportbot_waiting_questions 1.0" in bot.services.metrics.render()[0].decode()
    third = fake_slack.mention("And a third?", channel="CW3", user="U7")
    fake_slack.send_event(third)  # the line (1) is full: refused as before
    wait_until(lambda: bot_replies(fake_slack, "CW3", third["ts"]))
    assert bot_replies(fake_slack, "CW3", third["ts"])[0]["text"].startswith("I'm still working")


def test_a_second_ask_command_waits_for_the_first_answer(fake_slack, start_bot):
    start_bot(_Slow(1.0), user_max_concurrent=1, user_queue_size=1)
    for text in ("How do I rebuild?", "And how do I back up?"):
        fake_slack.send_command(fake_slack.command_payload("/ask", text, channel="CW4", user="U7"))
    answers = fake_slack.wait_for("response_url", 2, timeout=30, where=lambda c: c.params.get("blocks"))
    texts = sorted(answer.params["text"] for answer in answers)  # Bolt runs the two commands concurrently
    assert texts == ["about And how do I back up?", "about How do I rebuild?"]
    assert answers[1].at - answers[0].at >= 0.8  # one at a time
    assert not [c for c in fake_slack.calls("response_url") if "still working" in c.params.get("text", "")]
