"""Who reads saved answers, across replicas and restarts (bot.access, bot.learning), end to end over
the fake Slack with a real KnowledgeBase (MiniLM, Milvus Lite, the fake OpenAI): a private channel's
answers are kept to its members by their source's name, whichever process saved or approved them."""

from __future__ import annotations

import json

import pytest

from bot.learned_blocks import LEARN_APPROVE
from bot.state.saved_answers import ACTIVE, PENDING
from tests.bot_helpers import start_bot  # noqa: F401  (fixture)
from tests.test_learning import (REPHRASED, REPLY, _ask_and_hand_off, _confirmations, _expert_replies,
                                 _text, _wait_answers, learning_kb)  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(180)

PRIVATE_TEXT = "submit them in Payflow"


def _asks(fake_slack, fake_openai, *, channel, user, connection=None, dm=False) -> str:
    """The answer shown and every prompt the model was sent for it, as one text."""
    before = len(fake_openai.requests)
    event = (fake_slack.message_event(REPHRASED, channel=channel, user=user, channel_type="im") if dm
             else fake_slack.mention(REPHRASED, channel=channel, user=user))
    fake_slack.send_event(event, connection=connection)
    shown = _text(_wait_answers(fake_slack, channel, 1)[-1].params)
    return shown + json.dumps(fake_openai.requests[before:], ensure_ascii=False)


def test_a_private_answer_approved_after_a_restart_stays_with_its_members(
        learning_kb, fake_slack, fake_openai, start_bot, tmp_path):
    kb = learning_kb()
    fake_slack.set_channel("GPRIV", name="finance-private", private=True, members=("U1", "U9", "UBOT"))
    settings = dict(feedback_db=tmp_path / "shared.sqlite", escalation_contacts="*=U9", admin_user_ids="UADMIN",
                    learn_review="auto")
    first = start_bot(kb, **settings)
    mention = _ask_and_hand_off(fake_slack, channel="GPRIV", user="U1")
    reply = _expert_replies(fake_slack, channel="GPRIV", thread_ts=mention["ts"])
    fake_slack.send_event(fake_slack.reaction_event(reply, channel="GPRIV", user="U1"))  # the asker: review
    _confirmations(fake_slack, "GPRIV")
    [saved] = first.services.learner.store.list((PENDING,))

    # The process restarts (the new one is the newest connection) and an admin approves it there.
    restarted = start_bot(kb, **settings)
    fake_slack.send_action(fake_slack.action_payload(LEARN_APPROVE, saved.id, channel="", user="UADMIN"))
    fake_slack.wait_for("views.publish")
    assert restarted.services.learner.store.get(saved.id).status == ACTIVE

    shown = _asks(fake_slack, fake_openai, channel="CPUB", user="U5")  # not a member, in a public channel
    assert saved.permalink not in shown and PRIVATE_TEXT not in shown
    shown = _asks(fake_slack, fake_openai, channel="D100", user="U1", dm=True)  # a member, in a DM
    assert saved.permalink in shown and PRIVATE_TEXT in shown


def test_a_replica_that_did_not_save_a_private_answer_keeps_it_with_its_members(
        learning_kb, fake_slack, fake_openai, start_bot, tmp_path):
    kb = learning_kb()
    fake_slack.set_channel("GPRIV", name="finance-private", private=True, members=("U1", "U9", "UBOT"))
    settings = dict(feedback_db=tmp_path / "shared.sqlite", escalation_contacts="*=U9")
    saver = start_bot(kb, **settings)
    start_bot(kb, **settings)
    fake_slack.wait_connected(count=2)
    on_saver, on_other = fake_slack.connections()[-2:]

    mention = _ask_and_hand_off(fake_slack, channel="GPRIV", user="U1")
    reply = fake_slack.message_event(REPLY, channel="GPRIV", user="U9", thread_ts=mention["ts"])
    fake_slack.wait_ack(fake_slack.send_event(reply, connection=on_saver))
    fake_slack.send_event(fake_slack.reaction_event(reply, channel="GPRIV", user="U9"), connection=on_saver)
    _confirmations(fake_slack, "GPRIV")
    [saved] = saver.services.learner.store.list((ACTIVE,))

    # The other replica never saw the capture: the source's name alone keeps it to GPRIV's members.
    shown = _asks(fake_slack, fake_openai, channel="D555", user="U5", dm=True, connection=on_other)
    assert saved.permalink not in shown and PRIVATE_TEXT not in shown
    # A member, but in a public channel: everyone there sees the answer.
    shown = _asks(fake_slack, fake_openai, channel="CPUB", user="U1", connection=on_other)
    assert saved.permalink not in shown and PRIVATE_TEXT not in shown
    shown = _asks(fake_slack, fake_openai, channel="D100", user="U1", dm=True, connection=on_other)
    assert saved.permalink in shown and PRIVATE_TEXT in shown
