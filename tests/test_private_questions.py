"""Questions asked in private conversations are never quoted to admins: not through the saved
answers' use counts, and not when an @mention comes from a private channel whose id starts with C
(app_mention events do not say; conversations.info does)."""

from __future__ import annotations

import json
import time

import pytest
from slack_sdk import WebClient

from bot.blocks import ASK_HUMAN
from bot.conversations import ConversationKinds
from tests.bot_helpers import start_bot  # noqa: F401  (fixture)
from tests.test_learning import (QUESTION, REPHRASED, _answer_calls, _blocks, _button, _confirmations,
                                 _expert_replies, _wait_answers)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def learning_kb(make_kb):
    return make_kb(embedder="minilm", reranker=False)


def _home_text(fake) -> str:
    before = len(fake.calls("views.publish"))
    fake.send_event({"type": "app_home_opened", "user": "UADMIN", "channel": "D1", "tab": "home"})
    view = fake.wait_for("views.publish", before + 1)[-1].params["view"]
    return view if isinstance(view, str) else json.dumps(view, ensure_ascii=False)


def test_a_dm_question_a_saved_answer_helped_with_is_counted_not_quoted(learning_kb, fake_slack, start_bot):
    fake_slack.set_channel("CHELP", name="help")
    start_bot(learning_kb, escalation_contacts="CHELP=U9", learn_review="false", admin_user_ids="UADMIN")
    # A question nobody documented, answered by a person in the thread and saved with ✅.
    mention = fake_slack.mention(QUESTION, channel="CHELP", user="U1")
    fake_slack.send_event(mention)
    [abstained] = _wait_answers(fake_slack, "CHELP", 1)
    fake_slack.send_action(fake_slack.action_payload(
        ASK_HUMAN, _button(abstained.params, ASK_HUMAN), channel="CHELP", user="U1",
        message_ts=abstained.params["ts"], thread_ts=mention["ts"]))
    fake_slack.wait_for("chat.postMessage", where=lambda c: "asked for a person" in c.params.get("text", ""))
    reply = _expert_replies(fake_slack, channel="CHELP", thread_ts=mention["ts"])
    fake_slack.send_event(fake_slack.reaction_event(reply, channel="CHELP", user="U9"))
    _confirmations(fake_slack, "CHELP")
    # The same question in a public channel and, in other words, in a DM: both cite it.
    secret = "Which person signs off on Berlin expense claims for my medical leave trip?"
    fake_slack.send_event(fake_slack.mention(REPHRASED, channel="CHELP", user="U3"))
    fake_slack.send_event(fake_slack.message_event(secret, channel="D777", user="U2", channel_type="im"))
    _wait_answers(fake_slack, "D777", 1)
    _wait_answers(fake_slack, "CHELP", 2)
    home = _home_text(fake_slack)
    assert "answered 2 question(s)" in home, home
    assert "medical leave trip" not in home
    assert REPHRASED in home  # a public question is still quoted


def test_a_mention_in_a_private_channel_with_a_c_id_is_recorded_as_private(learning_kb, fake_slack, start_bot):
    fake_slack.set_channel("CPRIVNEW", name="layoffs-planning", private=True, members=("U1", "UBOT"))
    fake_slack.set_channel("CPUBLIC", name="general")
    bot = start_bot(learning_kb, admin_user_ids="UADMIN")
    for channel, user in (("CPRIVNEW", "U1"), ("CPUBLIC", "U2"), ("CPRIVNEW", "U1")):
        fake_slack.send_event(fake_slack.mention(f"{QUESTION} ({user})", channel=channel, user=user))
    _wait_answers(fake_slack, "CPRIVNEW", 2)
    _wait_answers(fake_slack, "CPUBLIC", 1)
    kinds = {channel: {bot.services.records.answer(_button(call.params, ASK_HUMAN)).conversation
                       for call in _answer_calls(fake_slack, channel)} for channel in ("CPRIVNEW", "CPUBLIC")}
    assert kinds == {"CPRIVNEW": {"private"}, "CPUBLIC": {"channel"}}
    asked = [call.params.get("channel") for call in fake_slack.calls("conversations.info")]
    assert asked.count("CPRIVNEW") == 1  # cached: asked once for two mentions
    home = _home_text(fake_slack)
    assert "(U1)" not in home and "(U2)" in home  # unanswered questions: only the public one quoted


def test_an_ask_command_in_a_private_channel_with_a_c_id_is_recorded_as_private(learning_kb, fake_slack, start_bot):
    """/ask's payload names the channel, not its kind: a private channel's own name is no hint."""
    fake_slack.set_channel("CPRIVASK", name="layoffs-planning", private=True, members=("U1", "UBOT"))
    bot = start_bot(learning_kb, admin_user_ids="UADMIN")
    fake_slack.send_command(fake_slack.command_payload("/ask", QUESTION, channel="CPRIVASK", user="U1"))
    [reply] = fake_slack.wait_for("response_url", where=lambda c: _blocks(c.params))
    assert bot.services.records.answer(_button(reply.params, ASK_HUMAN)).conversation == "private"
    assert QUESTION not in _home_text(fake_slack)


def test_a_mention_counts_as_private_when_slack_cannot_say(learning_kb, fake_slack, start_bot):
    bot = start_bot(learning_kb, admin_user_ids="UADMIN")
    fake_slack.fail_next("conversations.info", status=200, error="internal_error", retry_after=None)
    fake_slack.send_event(fake_slack.mention(QUESTION, channel="CUNKNOWN", user="U1"))
    [answer] = _wait_answers(fake_slack, "CUNKNOWN", 1)
    assert bot.services.records.answer(_button(answer.params, ASK_HUMAN)).conversation == "private"


def test_conversation_kinds_count_shared_channels_as_private_and_forget_a_changed_one(fake_slack):
    """The cached kind of a channel: shared with another organisation counts as private; a channel
    Slack says changed is asked again (not after the cache's hour)."""
    client = WebClient(token=fake_slack.bot_token, base_url=fake_slack.api_url)
    kinds = ConversationKinds()
    fake_slack.set_channel("CEXT", name="acme-support")
    fake_slack.channels["CEXT"].update(is_ext_shared=True, is_shared=True)
    assert kinds.kind("CEXT", client=client) == "private"
    fake_slack.set_channel("CHELP", name="help")
    assert kinds.kind("CHELP", client=client) == "channel"
    fake_slack.set_channel("CHELP", name="help", private=True)
    assert kinds.kind("CHELP", client=client) == "channel"  # cached
    kinds.forget("CHELP")
    assert kinds.kind("CHELP", client=client) == "private"


def test_a_channel_made_private_is_seen_so_by_every_replica(learning_kb, fake_slack, start_bot, tmp_path):
    """channel_convert_to_private reaches one replica; the other forgets the channel's cached kind
    at its sweeper's next beat (through the state database), not after the cache's hour."""
    fake_slack.set_channel("CHELP", name="help")
    settings = dict(feedback_db=tmp_path / "shared.sqlite")
    a, b = start_bot(learning_kb, **settings), start_bot(learning_kb, **settings)
    fake_slack.wait_connected(count=2)
    conn_a = fake_slack.connections()[-2]
    client = WebClient(token=fake_slack.bot_token, base_url=fake_slack.api_url)
    assert b.services.kinds.kind("CHELP", client=client) == "channel"  # B has it cached

    fake_slack.set_channel("CHELP", name="help", private=True)
    fake_slack.wait_ack(fake_slack.send_event(fake_slack.converted_to_private_event("CHELP", user="U1"),
                                              connection=conn_a))
    deadline = time.monotonic() + 20
    while b.services.kinds.kind("CHELP", client=client) != "private":  # B's beat (or this call's)
        assert time.monotonic() < deadline, "B still calls the channel public"
        b.services.access.forget_changed()
        time.sleep(0.05)
    assert a.services.kinds.kind("CHELP", client=client) == "private"
