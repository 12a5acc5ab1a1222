"""Unit tests: question detection, per-channel settings, hand-off and share blocks, insights, Home texts."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import ValidationError

from bot.blocks import ASK_HUMAN, SHARE_ANSWER, answer_messages
from bot.channels import ChannelRules, mention, parse_channel_ids, parse_channel_sources, parse_escalation_contacts
from bot.handoff import NO_CONTACTS, handoff_message
from bot.home import index_text
from bot.records import Records
from bot.settings import BotSettings
from bot.triage import is_chitchat, is_thanks, looks_like_question
from knowledge.types import Answer, Citation

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


@pytest.mark.parametrize("text, thanks", [
    ("thanks!", True), ("Thank you so much 🙏", True), ("perfect, works now", True), ("谢谢！", True),
    ("hi there", False), ("good morning :wave:", False), ("thanks, how do I back up?", False), ("", False),
])
def test_thanks_are_told_apart_from_greetings(text, thanks):
    assert is_thanks(text) is thanks


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
    assert rules.unknown_sources({"docs"}) == ["faq"] and rules.unknown_sources({"faq"}) == []


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


@pytest.mark.parametrize("text, chitchat", [
    ("thanks, that works!", True),
    ("Thanks a lot 🙏", True),
    ("谢谢", True),
    (":+1:", True),
    ("it still fails with error 13", False),
    ("and in Java", False),
])
def test_chitchat_in_threads(text, chitchat):
    assert is_chitchat(text) is chitchat


def test_abstention_offers_the_hand_off_and_private_answers_can_be_shared():
    abstained = Answer(question="q", text="Not in the docs.", status="abstained")
    [message] = answer_messages(abstained, record_id="rec1")
    offer = [b for b in message["blocks"] if b.get("accessory")]
    assert offer and offer[0]["accessory"]["action_id"] == ASK_HUMAN and offer[0]["accessory"]["value"] == "rec1"
    [message] = answer_messages(Answer(question="q", text="Yes [1].", status="answered"), record_id="r2", private=True)
    actions = [e["action_id"] for e in message["blocks"][-1]["elements"]]
    assert actions == [SHARE_ANSWER, "feedback_up", "feedback_down", ASK_HUMAN]
    assert not [b for b in message["blocks"] if b.get("accessory")]


def test_handoff_message_tags_contacts_and_lists_sources():
    sources = [Citation(1, "FAQ", ("Storage",), "https://docs.example/faq#storage", "faq.md").to_dict(), {"bad": 1}]
    message = handoff_message(question="Where is <data> kept?", requested_by="U1", contacts=("U9", "S2"),
                              sources=sources)
    text = json.dumps(message["blocks"], ensure_ascii=False)
    assert "<@U1> asked for a person to help: <@U9> <!subteam^S2>" in text
    assert "Where is &lt;data&gt; kept?" in text and "[1] <https://docs.example/faq#storage|FAQ › Storage>" in text
    alone = handoff_message(question="q", requested_by="U1", contacts=(), sources=[])
    assert NO_CONTACTS in alone["text"] and "found nothing relevant" in json.dumps(alone["blocks"])


def test_insights_count_the_period_only(tmp_path):
    records = Records(path=tmp_path / "r.sqlite")
    try:
        old = records.record_answer(Answer("Old gap?", "no", "abstained"), channel="C1", thread_ts="1")
        with records.db.begin() as connection:
            connection.exec_driver_sql("UPDATE answers SET created_at = created_at - 8 * 86400 WHERE id = ?", (old,))
        records.record_answer(Answer("New gap?", "no", "abstained"), channel="C1", thread_ts="2")
        insights = records.insights(since=time.time() - 7 * 86400)
        assert (insights.questions, insights.abstained, insights.gaps) == (1, 1, [("New gap?", 1)])
        assert not records.record_handoff("unknown", channel="C1", thread_ts="2", user_id="U1", contacts=())
    finally:
        records.close()


def test_home_index_text():
    status = {"chunks": 1234, "last_run": {"ok": True, "finished_at": 1_700_000_000.0}, "scheduled": True,
              "next_run_at": 1_700_086_400.0}
    text = index_text(status)
    assert "*Index:* 1,234 chunks" in text
    assert "<!date^1700000000^{date_short_pretty} {time}|2023-11-14 22:13 UTC>" in text
    assert "*Next refresh:* <!date^1700086400^" in text
    assert index_text({"index_error": "down"}) == "*Index:* unavailable (down)"
    assert "none since the bot started" in index_text({"chunks": 0})
