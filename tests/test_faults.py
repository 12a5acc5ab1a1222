"""Faults end to end: the real bot over the fake Slack, a real KnowledgeBase (tiny models,
Milvus Lite) and the fake OpenAI server misbehaving. Every question gets exactly one
answer, the right kind of answer, and exactly one outcome log line."""

from __future__ import annotations

import time

import pytest

from tests.bot_helpers import context_text, final_answers, outcomes, section_text, start_bot  # noqa: F401

pytestmark = pytest.mark.timeout(150)

QUESTION = "How does Milvus store data?"


def _openai_500_once(fake_openai, fake_slack):
    fake_openai.fail(500, times=1)  # the client's one retry (OPENAI_MAX_RETRIES=1) succeeds


def _openai_429_retry_after(fake_openai, fake_slack):
    fake_openai.fail(429, times=1, retry_after=1)


def _openai_500_always(fake_openai, fake_slack):
    fake_openai.fail(500, times=2)


def _openai_hangs(fake_openai, fake_slack):
    fake_openai.hang(3.0, times=2)  # past OPENAI_TIMEOUT=1 s, twice


def _openai_garbage(fake_openai, fake_slack):
    fake_openai.garbage(times=1)  # not retried: an unreadable reply is not a transient failure


def _slack_429_on_update(fake_openai, fake_slack):
    # The first streaming update takes one 429 (skipped, no wait), the final replacement the other (retried).
    fake_slack.fail_next("chat.update", status=429, retry_after=1, times=2)


def _slack_429_on_post(fake_openai, fake_slack):
    fake_slack.fail_next("chat.postMessage", status=429, retry_after=1)


# name, set-up, expected answer status, words expected in the note (retrieval-only answers)
CASES = [
    ("openai 500 once", _openai_500_once, "answered", ""),
    ("openai 429 + Retry-After", _openai_429_retry_after, "answered", ""),
    ("openai 500 every try", _openai_500_always, "retrieval_only", "HTTP 500"),
    ("openai hangs past timeout", _openai_hangs, "retrieval_only", "did not answer in time"),
    ("openai garbage", _openai_garbage, "retrieval_only", "unreadable response"),
    ("slack 429 on chat.update", _slack_429_on_update, "answered", ""),
    ("slack 429 on chat.postMessage", _slack_429_on_post, "answered", ""),
]


def test_each_fault_gets_the_right_answer_once(make_kb, fake_openai, fake_slack, start_bot, outcomes,
                                               record_property):
    # Each fault on its own: three model failures in a row would open the circuit breaker
    # (tests/test_openai_outage.py) and answer the next cases without the model.
    kb = make_kb(abstain_threshold=0.0, openai_timeout=1.0, openai_max_retries=1, answer_breaker_failures=0)
    bot = start_bot(kb)
    rows = []
    for index, (name, script, status, note) in enumerate(CASES):
        channel = f"CF{index}"
        requests_before = len(fake_openai.requests)
        script(fake_openai, fake_slack)
        sent = time.monotonic()
        event = fake_slack.mention(QUESTION, channel=channel)
        fake_slack.send_event(event)
        [record] = outcomes.wait(index + 1)[index:]
        seconds = time.monotonic() - sent
        answers = final_answers(fake_slack, channel, event["ts"])
        rows.append((name, record.outcome, len(answers), len(fake_openai.requests) - requests_before, seconds))

        assert record.outcome == status, name
        assert record.thread_ts == event["ts"] and record.total_ms > 0
        assert len(answers) == 1, f"{name}: {len(answers)} answers"
        if status == "answered":
            assert section_text(answers[0]).startswith("Milvus stores data in object storage"), name
            assert context_text(answers[0]) == ""
        else:
            # The passages, marked as such: a note says the model failed and why.
            assert section_text(answers[0]).startswith("Here are the most relevant passages"), name
            assert note in context_text(answers[0]) and "not a written answer" in context_text(answers[0]), name
        assert bot.services.records.recent_answers(1)[0].status == status

    summary = "; ".join(f"{n}: {o}, {a} answer, {r} model calls, {s:.1f}s" for n, o, a, r, s in rows)
    print(f"\nfault outcomes: {summary}")
    record_property("fault_outcomes", summary)
    # Retries really happened: two model calls where the first one failed.
    assert [r[3] for r in rows[:5]] == [2, 2, 2, 2, 1]
    assert rows[1][4] >= 1.0  # Retry-After: 1 was honoured
    assert rows[5][4] >= 1.0 and rows[6][4] >= 1.0  # Slack's Retry-After waited out, then delivered once
    assert len(outcomes.records) == len(CASES)  # one outcome line per question, none lost
