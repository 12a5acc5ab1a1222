"""Slack refusing or throttling the bot's posts, through the fake Slack and a real KnowledgeBase:
a channel the bot cannot post in costs no model call and leaves no trace; a throttled
placeholder replacement leaves one message in the thread, the answer."""

from __future__ import annotations

import logging

import pytest

from tests.bot_helpers import bot_replies, final_answers, outcomes, start_bot  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(120)

QUESTION = "How does Milvus store data?"


@pytest.mark.parametrize("code", ["not_in_channel", "channel_not_found", "is_archived"])
def test_a_channel_the_bot_cannot_post_in_costs_nothing(code, make_kb, fake_openai, fake_slack, start_bot, outcomes,
                                                        caplog):
    bot = start_bot(make_kb(abstain_threshold=0.0))
    asked = len(fake_openai.requests)
    # The bot was removed from the channel after Slack sent the event.
    fake_slack.fail_next("chat.postMessage", status=200, error=code, retry_after=None, times=3)
    mention = fake_slack.mention(QUESTION, channel="CX1")
    fake_slack.wait_ack(fake_slack.send_event(mention))
    [record] = outcomes.wait(1)
    assert bot.services.pool.wait_idle(10)
    assert record.outcome == "undeliverable"
    assert len(fake_slack.calls("chat.postMessage")) == 1  # the placeholder only: no answer, no apology
    assert len(fake_openai.requests) == asked  # no model call for an answer nobody can see
    assert bot.services.records.totals()["answers"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

