"""Unit tests: the question-detection rule and the per-channel settings formats."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bot.channels import ChannelRules, mention, parse_channel_ids, parse_channel_sources, parse_escalation_contacts
from bot.settings import BotSettings
from bot.triage import looks_like_question

QUESTIONS = [
    "How do I create a collection?",
    "how do I create a collection",  # no "?"
    "What is the default index type",
    "can milvus run on ARM",
    "Is there a way to rename a field",
    "Does anyone know why search returns fewer results than limit",
    "hi all, how do I load a partition",
    "Thanks! How do I drop an index",
    "explain consistency levels",
    "tell me about Milvus Lite",
    "Help: insert fails with a dimension mismatch",
    "I'm trying to connect from Java and it times out",
    "Not sure how to set the metric type for binary vectors",
    "<@UBOT> what is a segment",
    "search is slow?",
    "如何创建集合",
    "Milvus 支持哪些索引类型",
    "为什么查询这么慢",
    "这个参数是干嘛的？",
    "Milvus Lite 可以在 Windows 上用吗",
    "请问怎么删除一个 collection",
]

NOT_QUESTIONS = [
    "thanks all!",
    "Thank you so much 🙏",
    "thx",
    "hi everyone",
    "Good morning team :wave:",
    "hello!",
    "ok",
    "+1",
    "👍",
    "🎉🎉🎉",
    ":tada: :tada:",
    "https://milvus.io/docs/install_standalone-docker.md",
    "<https://milvus.io/docs|docs> <https://example.com>",
    "Deployed 2.4.5 to staging",
    "FYI the docs moved to the new site",
    "lunch is here",
    "sounds good, will do",
    "谢谢大家！",
    "大家好",
    "收到",
    "",
    "   ",
]


@pytest.mark.parametrize("text", QUESTIONS)
def test_questions_are_recognised(text):
    assert looks_like_question(text)


@pytest.mark.parametrize("text", NOT_QUESTIONS)
def test_chitchat_statements_emoji_and_links_are_not_questions(text):
    assert not looks_like_question(text)


def test_channel_settings_parse():
    assert parse_channel_ids("C01, c02 ;G03") == {"C01", "C02", "G03"}
    assert parse_channel_sources("C01=docs|faq, *=faq") == {"C01": ("docs", "faq"), "*": ("faq",)}
    assert parse_escalation_contacts("C01=u01|S02,*=W09") == {"C01": ("U01", "S02"), "*": ("W09",)}
    assert (mention("U01"), mention("S02")) == ("<@U01>", "<!subteam^S02>")

    settings = BotSettings(_env_file=None, auto_answer_channels="C01", channel_sources="C01=faq",
                           escalation_contacts="C01=U01|S02,*=U09")
    rules = ChannelRules.from_settings(settings)
    assert rules.answers_everything("C01") and not rules.answers_everything("C02")
    assert (rules.sources_for("C01"), rules.sources_for("C02")) == (("faq",), None)
    assert (rules.contacts_for("C01"), rules.contacts_for("C02")) == (("U01", "S02"), ("U09",))
    assert ChannelRules.from_settings(BotSettings(_env_file=None)).contacts_for("C01") == ()


@pytest.mark.parametrize("field, value, message", [
    ("auto_answer_channels", "#general", "not a Slack channel id"),
    ("channel_sources", "C01", "should look like CHANNEL=A|B"),
    ("channel_sources", "C01=faq,C01=docs", "listed twice"),
    ("escalation_contacts", "C01=@alice", "is not valid"),
    ("escalation_contacts", "#help=U01", "not a channel id"),
])
def test_malformed_channel_settings_are_rejected_with_a_clear_message(field, value, message):
    with pytest.raises(ValidationError, match=message):
        BotSettings(_env_file=None, **{field: value})
