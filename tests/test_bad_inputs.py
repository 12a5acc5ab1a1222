"""Hostile and odd questions through the fake Slack into the real answer path: nothing
crashes, each gets one clear reply, and no reply pings anyone or links anywhere new."""

from __future__ import annotations

import json
import re

import pytest

from tests.bot_helpers import bot_replies, outcomes, section_text, start_bot  # noqa: F401
from tests.fixtures.slack_fake import BOT_USER_ID

pytestmark = pytest.mark.timeout(150)

INJECTION = "<!channel> <!here> <!everyone> <@U123> <#C999> <!subteam^S1> <https://evil.example|click> hi"
CASES = [
    # name, question text (after the mention), outcomes accepted, text the reply starts with
    ("empty", "", {"small_talk"}, "👋 I answer questions from the docs"),  # a bare mention: how to ask
    ("only spaces and newlines", "   \n\t  ", {"small_talk"}, "👋 I answer questions from the docs"),
    ("only control characters", "\x00\x01\x1b\x7f", {"invalid"}, "Please ask a question"),
    ("100k characters", "How do I index? " * 6250, {"invalid"}, "The question is too long (99999 characters"),
    ("control characters", "What is\x00 Milvus\x07 \x1b[31mLite\x1b[0m?\x7f\x9b", {"answered"}, ""),
    ("mention and link injection", INJECTION, {"answered"}, ""),
    ("right-to-left", "ما هو Milvus Lite؟ \u202eetiL suvliM\u202c", {"answered"}, ""),
    ("zero-width", "What\u200b is\u200d Milvus\ufeff Lite\u2060?", {"answered"}, ""),
    ("combining marks", "Wha\u0301t i\u0308s Mi\u0301\u0302\u0303lvus Z\u0335\u0321a\u0336l\u0337g\u0338o?", {"answered"}, ""),
    ("emoji", "🚀 What is Milvus? 👩‍👩‍👧 🏳️‍🌈 🇺🇳", {"answered"}, ""),
    ("lone surrogates", "What is \ud800 Milvus \udfff Lite?", {"answered"}, ""),
]
# The model is scripted to echo hostile mrkdwn too: the rendering must defuse it.
MODEL_TEXT = f"Milvus Lite is embedded [1]. {INJECTION} and [more](https://evil.example/x)."
RAW_CONTROL = re.compile(r"<[!@#]|<https?://(?!docs\.example/)")


def _everything_posted(message: dict) -> str:
    return json.dumps({"text": message.get("text"), "blocks": message.get("blocks")}, ensure_ascii=False)


def test_bad_inputs_get_one_clear_reply_and_ping_nobody(make_kb, fake_openai, fake_slack, start_bot, outcomes,
                                                        record_property):
    kb = make_kb(abstain_threshold=0.0)
    start_bot(kb)
    fake_openai.default_text = MODEL_TEXT
    results = []
    for index, (name, text, accepted, starts) in enumerate(CASES):
        channel = f"CB{index}"
        event = fake_slack.mention(text, channel=channel)
        fake_slack.send_event(event)
        [record] = outcomes.wait(index + 1)[index:]
        replies = bot_replies(fake_slack, channel, event["ts"])
        results.append(f"{name}: {record.outcome}")
        assert record.outcome in accepted, f"{name}: {record.outcome}"
        assert len(replies) == 1, f"{name}: {len(replies)} replies"
        reply = replies[0]
        shown = section_text(reply) or reply["text"]
        if starts:
            assert shown.startswith(starts), f"{name}: {shown[:120]!r}"
        else:
            assert shown.startswith("Milvus Lite is embedded [1]."), f"{name}: {shown[:120]!r}"
        assert not RAW_CONTROL.search(_everything_posted(reply)), f"{name}: {_everything_posted(reply)[:400]}"
        assert len(reply["text"]) < 4000  # never the 100k question echoed back
    print("\nbad inputs: " + "; ".join(results))
    record_property("bad_inputs", "; ".join(results))

    # Nothing the bot posted anywhere pings or links beyond the cited docs.
    for index in range(len(CASES)):
        for message in fake_slack.messages(f"CB{index}"):
            if message.get("user") == BOT_USER_ID:
                assert not RAW_CONTROL.search(_everything_posted(message))
