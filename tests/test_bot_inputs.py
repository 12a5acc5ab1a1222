"""What people type, as Slack delivers it, through the fake Slack into the real answer path:
the question the model reads is the person's words without Slack's markup, and input with
no question in it gets a short usage reply instead of an answer."""

from __future__ import annotations

import pytest

from bot.history import clean_text
from bot.listeners.commands.ask import USAGE
from bot.services import FILES_ONLY_TEXT
from bot.triage import SMALL_TALK_TEXT, THANKS_TEXT
from tests.bot_helpers import bot_replies, outcomes, start_bot  # noqa: F401  (fixtures)
from tests.fixtures.slack_fake import BOT_USER_ID

pytestmark = pytest.mark.timeout(120)


def test_ask_command_with_only_the_bots_mention_or_a_hello_is_usage_and_a_mention_is_not_the_question(
        make_kb, fake_openai, fake_slack, start_bot):
    start_bot(make_kb(abstain_threshold=0.0))
    # Slack sends "@docsbot" as typed when the command does not escape users (auth.test's "user").
    for text in (f"<@{BOT_USER_ID}>", f"  <@{BOT_USER_ID}|docsbot>  ", "hello!", "@docsbot", "@DocsBot:"):
        envelope = fake_slack.send_command(fake_slack.command_payload("/ask", text, channel="CI1"))
        assert fake_slack.wait_ack(envelope)["payload"]["text"] == USAGE, text
    asked = len(fake_openai.requests)
    fake_slack.send_command(fake_slack.command_payload("/ask", f"<@{BOT_USER_ID}> what is a partition?", channel="CI1"))
    fake_slack.wait_for("response_url", where=lambda c: c.params.get("blocks"))
    assert len(fake_openai.requests) == asked + 1
    question = fake_openai.requests[-1]["messages"][-1]["content"]
    assert "what is a partition?" in question and BOT_USER_ID not in question
    fake_slack.send_command(fake_slack.command_payload("/ask", "@docsbot how do I drop a partition?", channel="CI1"))
    fake_slack.wait_for("response_url", count=2, where=lambda c: c.params.get("blocks"))
    question = fake_openai.requests[-1]["messages"][-1]["content"]
    assert "how do I drop a partition?" in question and "@docsbot" not in question


@pytest.mark.parametrize("text, expected", [
    # Slack sends a channel mention with an empty label (or none): the id, not the raw markup.
    ("is <#C0123|> the right place? see <#C0456|general>, <#C0789>", "is #C0123 the right place? see #general, #C0789"),
    ("mail <mailto:ops@example.com|ops@example.com> about it?", "mail ops@example.com (mailto:ops@example.com) about it?"),
    ("call <tel:+15551234|+1 555 1234> or open <slack://channel?id=C1>?", "call +1 555 1234 or open slack://channel?id=C1?"),
    ("<!here> <!subteam^S1|@ops> since <!date^1392734382^{date}|Feb 18>?", "@here @ops since Feb 18?"),
    ("<@U123|bob> and <@U456> say `a &lt; b` &amp; *this*?", "@bob and @U456 say `a < b` & this?"),
    (f"<@{BOT_USER_ID}>   what   is <https://x.io/a?b=1&amp;c=2|the link>?", "what is the link (https://x.io/a?b=1&c=2)?"),
])
def test_the_question_is_the_persons_words_without_slack_markup(text, expected):
    assert clean_text(text, bot_user_id=BOT_USER_ID) == expected


def test_greetings_and_thanks_to_the_bot_are_not_looked_up(make_kb, fake_openai, fake_slack, start_bot, outcomes):
    bot = start_bot(make_kb(abstain_threshold=0.0))
    asked = len(fake_openai.requests)
    # A first "hi" in a DM or a mention: one short line on how to ask, no retrieval, no model call.
    hello = fake_slack.message_event("hi there!", channel="DI1", channel_type="im")
    fake_slack.send_event(hello)
    mention = fake_slack.mention("good morning :wave:", channel="CI2")
    fake_slack.send_event(mention)
    assert sorted(r.outcome for r in outcomes.wait(2)) == ["small_talk", "small_talk"]
    for channel, event in (("DI1", hello), ("CI2", mention)):
        [reply] = bot_replies(fake_slack, channel, event["ts"])
        assert reply["text"].startswith(SMALL_TALK_TEXT) and not reply.get("blocks"), reply["text"]
    assert len(fake_openai.requests) == asked

    # A real question in the DM is answered; "thanks 🙏" under the answer, like in a channel, needs no reply.
    question = fake_slack.message_event("GC?", channel="DI3", channel_type="im")  # short, but a question
    fake_slack.send_event(question)
    assert outcomes.wait(3)[-1].outcome == "answered"
    assert bot.services.pool.wait_idle(10)
    fake_slack.send_event(fake_slack.message_event("thanks 🙏", channel="DI3", channel_type="im",
                                                   thread_ts=question["ts"]))
    assert outcomes.wait(4)[-1].outcome == "small_talk"
    assert len(bot_replies(fake_slack, "DI3", question["ts"])) == 1  # the answer only
    assert len(fake_openai.requests) == asked + 1
    assert bot.services.records.totals()["answers"] == 1  # small talk is not counted as a question

    # "@docsbot hello" in a thread the bot is not in yet is a first hello there: it gets the line.
    topic = fake_slack.message_event("Deploy notes for today", channel="CI4")
    hello_in_thread = fake_slack.mention("hello", channel="CI4", thread_ts=topic["ts"])
    fake_slack.send_event(hello_in_thread)
    assert outcomes.wait(5)[-1].outcome == "small_talk"
    [reply] = bot_replies(fake_slack, "CI4", topic["ts"])
    assert reply["text"].startswith(SMALL_TALK_TEXT)

    # "thanks!" as a new DM message after an answer: a "you're welcome", not how to ask.
    thanks = fake_slack.message_event("thanks, that worked!", channel="DI3", channel_type="im")
    fake_slack.send_event(thanks)
    assert outcomes.wait(6)[-1].outcome == "small_talk"
    [reply] = bot_replies(fake_slack, "DI3", thanks["ts"])
    assert reply["text"] == THANKS_TEXT

    # A bare "@docsbot": the same line on how to ask, no placeholder, not "the message is empty".
    bare = fake_slack.mention("", channel="CI6")
    fake_slack.send_event(bare)
    assert outcomes.wait(7)[-1].outcome == "small_talk"
    [reply] = bot_replies(fake_slack, "CI6", bare["ts"])
    assert reply["text"].startswith(SMALL_TALK_TEXT)
    assert len(fake_openai.requests) == asked + 1


def test_a_file_without_words_is_told_to_ask_in_words(make_kb, fake_openai, fake_slack, start_bot, outcomes):
    start_bot(make_kb(abstain_threshold=0.0))
    screenshot = [{"id": "F1", "name": "error.png", "mimetype": "image/png"}]
    dm = fake_slack.message_event("", channel="DI5", channel_type="im", subtype="file_share", files=screenshot)
    fake_slack.send_event(dm)
    assert outcomes.wait(1)[-1].outcome == "invalid"
    [reply] = bot_replies(fake_slack, "DI5", dm["ts"])
    assert reply["text"] == FILES_ONLY_TEXT  # not "the message is empty": it had a file
    # A file with a question is answered from the words.
    with_words = fake_slack.message_event("why does this fail?", channel="DI5", channel_type="im",
                                          subtype="file_share", files=screenshot)
    fake_slack.send_event(with_words)
    assert outcomes.wait(2)[-1].outcome == "answered"
