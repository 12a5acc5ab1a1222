"""Follow-ups in the bot's threads, through the fake Slack and a real KnowledgeBase: a reply
needs no mention once the bot has taken the thread, even before its first answer is out."""

from __future__ import annotations

import json
import time

import pytest

from tests.bot_helpers import final_answers, outcomes, start_bot  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(120)

QUESTION = "How does Milvus store data?"


def test_a_follow_up_sent_while_the_first_answer_is_written_is_answered(make_kb, fake_openai, fake_slack, start_bot,
                                                                        outcomes):
    start_bot(make_kb(abstain_threshold=0.0))
    fake_openai.hang(2.0)  # the first answer takes a while: its placeholder is all the thread shows yet
    asked = len(fake_openai.requests)
    mention = fake_slack.mention(QUESTION, channel="CX4")
    fake_slack.send_event(mention)
    fake_slack.wait_for("chat.postMessage", where=lambda c: c.params.get("thread_ts") == mention["ts"])
    fake_openai.wait_for_requests(asked + 1)
    # No mention: the bot is already answering in this thread.
    fake_slack.send_event(fake_slack.message_event("also, does it run on ARM?", channel="CX4", thread_ts=mention["ts"]))
    assert sorted(r.outcome for r in outcomes.wait(2, timeout=60)) == ["answered", "answered"]
    assert len(final_answers(fake_slack, "CX4", mention["ts"])) == 2


def test_a_reply_to_the_bots_request_for_a_question_is_answered(make_kb, fake_openai, fake_slack, start_bot, outcomes):
    start_bot(make_kb(abstain_threshold=0.0))
    # "hi" gets a line on how to ask; the question that follows in the thread needs no mention.
    hello = fake_slack.mention("hi!", channel="CX5")
    fake_slack.send_event(hello)
    assert outcomes.wait(1)[-1].outcome == "small_talk"
    fake_slack.send_event(fake_slack.message_event("how do I create a collection?", channel="CX5",
                                                   thread_ts=hello["ts"]))
    assert outcomes.wait(2)[-1].outcome == "answered"
    assert len(final_answers(fake_slack, "CX5", hello["ts"])) == 1


@pytest.mark.parametrize("retry_after, with_context", [(1, True), (30, False)])
def test_a_throttled_thread_read_waits_briefly_or_answers_without_it(make_kb, fake_openai, fake_slack, start_bot,
                                                                     outcomes, retry_after, with_context):
    """conversations.replies answering 429: a short Retry-After is waited out, a long one is not
    (the person would wait for context the answer can do without)."""
    start_bot(make_kb(abstain_threshold=0.0))
    mention = fake_slack.mention(QUESTION, channel="CX6")
    fake_slack.send_event(mention)
    assert outcomes.wait(1, timeout=60)[-1].outcome == "answered"
    asked = len(fake_openai.requests)
    fake_slack.fail_next("conversations.replies", status=429, retry_after=retry_after)
    started = time.monotonic()
    fake_slack.send_event(fake_slack.message_event("and on ARM?", channel="CX6", thread_ts=mention["ts"]))
    assert outcomes.wait(2, timeout=60)[-1].outcome == "answered"
    assert time.monotonic() - started < 20
    sent = json.dumps(fake_openai.requests[asked:])
    assert (QUESTION in sent) is with_context
