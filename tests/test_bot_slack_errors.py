"""Slack refusing or throttling the bot's posts, through the fake Slack and a real KnowledgeBase:
a channel the bot cannot post in costs no model call and leaves no trace; a throttled
placeholder replacement leaves one message in the thread, the answer."""

from __future__ import annotations

import logging

import pytest

from tests.bot_helpers import bot_replies, final_answers, outcomes, start_bot  # noqa: F401  (fixtures)
from tests.fixtures.slack_fake import TEAM_ID

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


def test_requests_no_listener_wants_are_acknowledged(fake_slack, start_bot, outcomes):
    """Slack re-sends what is not acknowledged, and shows the person an error on a button it
    thinks failed: events the bot does not use, and buttons or shortcuts it no longer has."""
    start_bot(_NeverAsked())
    sent = [
        fake_slack.send_event({"type": "reaction_removed", "user": "U1", "reaction": "eyes",
                               "item": {"type": "message", "channel": "C1", "ts": fake_slack.next_ts()}}),
        fake_slack.send_event({"type": "channel_left", "channel": "C1", "actor_id": "U1"}),
        fake_slack.send_action(fake_slack.action_payload("a_button_from_an_older_version", "x", channel="C1")),
        fake_slack.send_envelope("interactive", {**fake_slack.shortcut_payload(
            "an_old_shortcut", {"ts": fake_slack.next_ts(), "text": "hi"}, channel="C1", user="U1"),
            "type": "shortcut"}),
        fake_slack.send_envelope("interactive", {"type": "view_closed", "team": {"id": TEAM_ID}, "user": {"id": "U1"},
                                                 "view": {"id": "V1", "callback_id": "an_old_modal"}, "is_cleared": False}),
    ]
    for envelope in sent:
        fake_slack.wait_ack(envelope, timeout=5)
    # An external select's options the bot does not serve: an empty list, not an error in the menu.
    suggestion = fake_slack.send_envelope("interactive", {
        "type": "block_suggestion", "team": {"id": TEAM_ID}, "user": {"id": "U1"}, "action_id": "an_old_select",
        "block_id": "b1", "value": "mil", "container": {"type": "view", "view_id": "V1"}})
    assert fake_slack.wait_ack(suggestion, timeout=5).get("payload") == {"options": []}
    assert not outcomes.records and not fake_slack.calls("chat.postMessage")


class _NeverAsked:
    def ask(self, question, **kwargs):
        raise AssertionError("nothing here is a question")


def test_a_placeholder_slack_will_not_update_is_not_left_behind(make_kb, fake_slack, start_bot, outcomes):
    start_bot(make_kb(abstain_threshold=0.0, api_key=""))  # retrieval-only: no streamed updates, the final one only
    # Slack will not let the bot edit its placeholder (as when it keeps throttling every retry).
    fake_slack.fail_next("chat.update", status=200, error="cant_update_message", retry_after=None)
    mention = fake_slack.mention(QUESTION, channel="CX2")
    fake_slack.send_event(mention)
    assert [r.outcome for r in outcomes.wait(1, timeout=60)] == ["retrieval_only"]
    replies = bot_replies(fake_slack, "CX2", mention["ts"])
    assert len(replies) == 1, [r["text"][:40] for r in replies]  # the answer, not "Looking through the docs…" too
    assert final_answers(fake_slack, "CX2", mention["ts"]) == replies


def test_an_answer_waits_out_slacks_throttling_rather_than_being_lost(make_kb, fake_slack, start_bot, outcomes):
    start_bot(make_kb(abstain_threshold=0.0, api_key=""))  # retrieval-only: the final post is the only one
    thread_ts = fake_slack.next_ts()
    question = fake_slack.message_event(QUESTION, channel="DX3", channel_type="im", thread_ts=thread_ts)
    # The assistant pane shows a status, so the answer is a new post: Slack throttles it three times running.
    fake_slack.fail_next("chat.postMessage", status=429, retry_after=1, times=3)
    fake_slack.send_event(question)
    assert [r.outcome for r in outcomes.wait(1, timeout=60)] == ["retrieval_only"]
    replies = bot_replies(fake_slack, "DX3", thread_ts)
    assert [r["text"][:40] for r in replies] == [r["text"][:40] for r in final_answers(fake_slack, "DX3", thread_ts)]
    assert len(replies) == 1 and "went wrong" not in replies[0]["text"]


def test_commands_and_buttons_are_acknowledged_while_slack_throttles_placeholders(make_kb, fake_slack, start_bot,
                                                                                  outcomes):
    from bot.blocks import FEEDBACK_UP
    from bot.listeners.commands.ask import USAGE

    start_bot(make_kb(abstain_threshold=0.0, api_key=""))
    # A burst of questions while Slack throttles chat.postMessage (Retry-After: 2 s, three times each).
    fake_slack.fail_next("chat.postMessage", status=429, retry_after=2, times=30)
    mentions = [fake_slack.mention(f"{QUESTION} ({n})", channel=f"CT{n}") for n in range(10)]
    for mention in mentions:
        fake_slack.send_event(mention)
    fake_slack.wait_for("chat.postMessage", 5)
    # Slack shows the person an error when a command or a click is not acknowledged within 3 s.
    for envelope in (fake_slack.send_command(fake_slack.command_payload("/ask", "", channel="CT0")),
                     fake_slack.send_action(fake_slack.action_payload(FEEDBACK_UP, "unknown", channel="CT0"))):
        acked = fake_slack.wait_ack(envelope, timeout=10)
        assert fake_slack.ack_times[envelope] - fake_slack.sent_times[envelope] < 2.0
    assert acked is not None and USAGE  # the usage line rode on the command's ack
    assert len(outcomes.wait(10, timeout=90)) == 10
    for n, mention in enumerate(mentions):
        assert len(final_answers(fake_slack, f"CT{n}", mention["ts"])) == 1, n


def test_commands_are_acknowledged_while_slack_throttles_home_tabs(make_kb, fake_slack, start_bot):
    from bot.listeners.commands.ask import USAGE

    start_bot(make_kb(abstain_threshold=0.0, api_key=""))
    # Many people open the bot's Home tab while Slack throttles views.publish: each listener waits
    # out the Retry-After on one of Bolt's listener threads.
    fake_slack.fail_next("views.publish", status=429, retry_after=3, times=40)
    for n in range(8):
        fake_slack.send_event({"type": "app_home_opened", "user": f"UH{n}", "channel": f"DH{n}", "tab": "home"})
    fake_slack.wait_for("views.publish", 8)
    envelope = fake_slack.send_command(fake_slack.command_payload("/ask", "", channel="CT0"))
    acked = fake_slack.wait_ack(envelope, timeout=10)
    assert fake_slack.ack_times[envelope] - fake_slack.sent_times[envelope] < 2.0
    assert acked is not None and USAGE


def test_an_answer_whose_blocks_slack_refuses_still_arrives_as_text(make_kb, fake_openai, fake_slack, start_bot,
                                                                    outcomes, monkeypatch, caplog):
    """A limit Slack enforces and the bot does not know (here: the blocks' total text made tiny)
    refuses the answer's blocks: it is posted again as text, and no apology replaces it."""
    from tests.fixtures import block_kit

    monkeypatch.setattr(block_kit, "BLOCKS_TEXT", 40)
    start_bot(make_kb(abstain_threshold=0.0))
    mention = fake_slack.mention(QUESTION, channel="CX9")
    fake_slack.send_event(mention)
    [record] = outcomes.wait(1)
    assert record.outcome == "answered"
    [reply] = bot_replies(fake_slack, "CX9", mention["ts"])  # the placeholder became the answer
    assert not reply.get("blocks") and "object storage" in reply["text"] and "docs.example" in reply["text"]
    assert "went wrong" not in reply["text"]
    assert [method for method, _ in fake_slack.block_kit_rejections] == ["chat.update"]
    assert "posting it as text" in caplog.text
    fake_slack.block_kit_rejections.clear()  # refused on purpose
