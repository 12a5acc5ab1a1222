"""Load: 50 questions at once from 10 people, twice, through the fake Slack into a real
KnowledgeBase (tiny models, Milvus Lite) and the fake OpenAI server, with the production
per-person limits. Every question gets exactly one reply (an answer, or a polite
refusal), latency percentiles are reported, and memory does not creep up."""

from __future__ import annotations

import gc
import statistics
import time

import psutil
import pytest

from bot.limits import BUSY_MESSAGE, RATE_MESSAGE
from bot.responder import BUSY_TEXT
from tests.bot_helpers import bot_replies, outcomes, start_bot  # noqa: F401

pytestmark = pytest.mark.timeout(170)

QUESTIONS = ("How does Milvus store data?", "What is Milvus Lite?", "How do I choose an index type?",
             "Why is my search slow?", "What is a partition?")
USERS, PER_USER = 10, 5
ANSWERED = {"answered", "abstained", "retrieval_only"}
REFUSED = {"refused_busy", "refused_rate", "busy"}
MAX_RSS_GROWTH_MB = 40.0


def _burst(fake_slack, outcomes, *, label: str, already: int) -> dict:
    """Send USERS x PER_USER mentions at once; wait for every outcome; check every thread."""
    sent: dict[str, tuple[str, float]] = {}  # thread ts -> (channel, wall time sent)
    for round_ in range(PER_USER):
        for user in range(USERS):
            channel = f"C{label}{user % 3}"
            event = fake_slack.mention(QUESTIONS[round_], channel=channel, user=f"U{label}{user:02d}")
            sent[event["ts"]] = (channel, time.time())
            fake_slack.send_event(event)
    total = USERS * PER_USER
    records = outcomes.wait(already + total, timeout=120)[already:]
    assert len(records) == total

    by_thread = {r.thread_ts: r for r in records}
    assert set(by_thread) == set(sent), "a question got no outcome, or one got two"
    refusals = {BUSY_TEXT, BUSY_MESSAGE.replace("&", "&amp;")}
    latencies = []
    for thread_ts, (channel, sent_at) in sent.items():
        record = by_thread[thread_ts]
        replies = bot_replies(fake_slack, channel, thread_ts)
        assert len(replies) == 1, f"{record.outcome}: {len(replies)} replies in one thread"  # none silent, none twice
        reply = replies[0]
        if record.outcome in ANSWERED:
            assert reply.get("blocks"), "an answered question shows the answer blocks"
            latencies.append(record.created - sent_at)
        else:
            assert record.outcome in REFUSED, record.outcome
            text = reply["text"]
            assert text in refusals or text.startswith(RATE_MESSAGE.split("{")[0]), text
    latencies.sort()
    counts = {"answered": len(latencies), "refused": total - len(latencies)}
    p50 = statistics.median(latencies)
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    return {**counts, "p50_s": round(p50, 3), "p95_s": round(p95, 3)}


def test_two_bursts_everyone_answered_or_told_once_and_memory_is_flat(
    make_kb, fake_openai, fake_slack, start_bot, outcomes, record_property, capsys
):
    kb = make_kb(abstain_threshold=0.0)
    # Production defaults for the limits: 6 a minute and 1 at a time per person, 4 workers, 16 waiting.
    start_bot(kb, user_rate_per_minute=6, user_max_concurrent=1, bot_workers=4, bot_queue_size=16)
    process = psutil.Process()

    first = _burst(fake_slack, outcomes, label="A", already=0)
    gc.collect()
    rss_after_first = process.memory_info().rss / 2**20
    second = _burst(fake_slack, outcomes, label="B", already=USERS * PER_USER)
    gc.collect()
    rss_after_second = process.memory_info().rss / 2**20

    line = (f"burst of {USERS * PER_USER} from {USERS} users: first {first}, second {second}; "
            f"RSS {rss_after_first:.0f} MB after the first, {rss_after_second:.0f} MB after the second")
    for name, value in (("burst_first", first), ("burst_second", second),
                        ("rss_mb_after_first", round(rss_after_first)), ("rss_mb_after_second", round(rss_after_second))):
        record_property(name, value)
    with capsys.disabled():  # shown without -s too
        print(f"\n{line}")

    for burst in (first, second):
        assert burst["answered"] + burst["refused"] == USERS * PER_USER
        assert burst["answered"] >= USERS  # everyone's first question goes through
        assert burst["p95_s"] < 30
    assert rss_after_second - rss_after_first < MAX_RSS_GROWTH_MB, line


def test_burst_without_person_limits_fills_the_pool_and_the_rest_hear_busy(
    make_kb, fake_openai, fake_slack, start_bot, outcomes, record_property, capsys
):
    kb = make_kb(abstain_threshold=0.0)
    bot = start_bot(kb, user_rate_per_minute=0, user_max_concurrent=0, bot_workers=2, bot_queue_size=8)
    result = _burst(fake_slack, outcomes, label="P", already=0)
    kinds = {r.outcome for r in outcomes.records}
    record_property("burst_pool_only", result)
    with capsys.disabled():
        print(f"\nburst of {USERS * PER_USER}, per-person limits off, 2 workers + 8 waiting: {result}")
    assert result["answered"] + result["refused"] == USERS * PER_USER
    assert result["answered"] >= 10 and kinds <= ANSWERED | {"busy"}
    assert bot.services.metrics.queue_depth._value.get() == 0  # nothing left waiting
