"""Who reads saved answers, and who vouched for their text (bot.access, bot.learning), end to end over
the fake Slack with a real KnowledgeBase (MiniLM, Milvus Lite, the fake OpenAI): a private or shared
channel's answers are kept to its members by their source's name, whichever process saved or approved
them; CHANNEL_SOURCES decides whether a channel uses the team's; an edit after approval is reviewed."""

from __future__ import annotations

import json
import time

import pytest

from bot.learned_blocks import LEARN_APPROVE
from bot.state.saved_answers import ACTIVE, PENDING
from knowledge.errors import StoreUnavailableError
from tests.bot_helpers import start_bot  # noqa: F401  (fixture)
from tests.test_learning import (REPHRASED, REPLY, _ask_and_hand_off, _confirmations, _expert_replies,
                                 _team_chunks, _text, _wait_answers, learning_kb)  # noqa: F401  (fixture)

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
    fake_slack.set_channel("GPRIV", name="finance-private", private=True, members=("U1", "U9", "UBOT", "UADMIN"))
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


def test_a_private_channels_answers_are_reviewed_only_by_admins_who_are_its_members(
        learning_kb, fake_slack, start_bot):
    """The App Home shows an admin who is not in the channel only how many there are, and a review
    button pressed anyway (a stale view, a crafted payload) changes nothing."""
    kb = learning_kb()
    fake_slack.set_channel("GPRIV", name="finance-private", private=True, members=("U1", "U9", "UBOT", "UIN"))
    bot = start_bot(kb, escalation_contacts="*=U9", admin_user_ids="UIN,UOUT", learn_review="auto")
    mention = _ask_and_hand_off(fake_slack, channel="GPRIV", user="U1")
    reply = _expert_replies(fake_slack, channel="GPRIV", thread_ts=mention["ts"])
    fake_slack.send_event(fake_slack.reaction_event(reply, channel="GPRIV", user="U1"))  # the asker: review
    _confirmations(fake_slack, "GPRIV")
    [saved] = bot.services.learner.store.list((PENDING,))

    def home(user):
        before = len(fake_slack.calls("views.publish"))
        fake_slack.send_event({"type": "app_home_opened", "user": user, "channel": "D1", "tab": "home"})
        view = fake_slack.wait_for("views.publish", before + 1)[-1].params["view"]
        return view if isinstance(view, str) else json.dumps(view, ensure_ascii=False)

    outside = home("UOUT")
    assert PRIVATE_TEXT not in outside and f"review_{saved.id}" not in outside
    assert "1 more from private or shared channels you are not in" in outside
    assert "*Waiting for review:* 0" in outside
    before = len(fake_slack.calls("views.publish"))
    fake_slack.send_action(fake_slack.action_payload(LEARN_APPROVE, saved.id, channel="", user="UOUT"))
    time.sleep(1)
    assert bot.services.learner.store.get(saved.id).status == PENDING and not _team_chunks(
        kb, names=("team-answers-gpriv",))
    assert len(fake_slack.calls("views.publish")) == before  # refused before anything was done

    inside = home("UIN")
    assert PRIVATE_TEXT in inside and f"review_{saved.id}" in inside and "you are not in" not in inside
    fake_slack.send_action(fake_slack.action_payload(LEARN_APPROVE, saved.id, channel="", user="UIN"))
    fake_slack.wait_for("views.publish", before + 2)
    assert bot.services.learner.store.get(saved.id).status == ACTIVE
    assert _team_chunks(kb, names=("team-answers-gpriv",))


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


def _save_reply(fake_slack, *, channel):
    """An abstained question handed off in `channel`, the expert's reply marked ✅ by the expert."""
    mention = _ask_and_hand_off(fake_slack, channel=channel, user="U1")
    reply = _expert_replies(fake_slack, channel=channel, thread_ts=mention["ts"])
    fake_slack.send_event(fake_slack.reaction_event(reply, channel=channel, user="U9"))
    _confirmations(fake_slack, channel)


def test_a_slack_connect_channels_answer_is_never_cited_to_another_organisation(
        learning_kb, fake_slack, fake_openai, start_bot):
    kb = learning_kb()
    for channel in ("CEXTA", "CEXTB"):
        fake_slack.set_channel(channel, name=f"ext-{channel[-1].lower()}", members=("U1", "U9", "UBOT"))
        fake_slack.channels[channel].update(is_ext_shared=True, is_shared=True)
    bot = start_bot(kb, escalation_contacts="*=U9", learn_review="false")
    _save_reply(fake_slack, channel="CEXTA")
    [saved] = bot.services.learner.store.list()
    assert (saved.private, saved.source_name) == (True, "team-answers-cexta")

    shown = _asks(fake_slack, fake_openai, channel="CEXTB", user="UEXTB")  # another customer's shared channel
    assert saved.permalink not in shown and PRIVATE_TEXT not in shown
    shown = _asks(fake_slack, fake_openai, channel="CHELP", user="U2")  # an internal public channel
    assert saved.permalink not in shown and PRIVATE_TEXT not in shown
    fake_slack.send_event(fake_slack.mention(REPHRASED, channel="CEXTA", user="U7"))  # where it was said
    assert saved.permalink in _text(_wait_answers(fake_slack, "CEXTA", 2)[-1].params)


@pytest.mark.parametrize("change", ["made private", "shared"])
def test_a_channel_made_private_or_shared_keeps_its_saved_answers_to_its_members(
        learning_kb, fake_slack, fake_openai, start_bot, change):
    """Saved while the channel was public (the whole team's); Slack says it is private now, or
    shared with another organisation: the answer moves to the channel's own source at once."""
    kb = learning_kb()
    fake_slack.set_channel("CHELP", name="help-internal", members=("U1", "U9", "UBOT"))
    bot = start_bot(kb, escalation_contacts="*=U9", learn_review="false")
    _save_reply(fake_slack, channel="CHELP")
    [saved] = bot.services.learner.store.list()
    assert (saved.private, saved.source_name) == (False, "team-answers")
    assert saved.permalink in _asks(fake_slack, fake_openai, channel="CPUB", user="U5")

    if change == "made private":
        fake_slack.set_channel("CHELP", name="help-internal", private=True, members=("U1", "U9", "UBOT"))
        event = fake_slack.converted_to_private_event("CHELP", user="U1")
    else:
        fake_slack.channels["CHELP"].update(is_ext_shared=True, is_shared=True)
        event = {"type": "channel_shared", "connected_team_id": "E0OTHER", "channel": "CHELP",
                 "event_ts": "1730984822.596869"}
    fake_slack.wait_ack(fake_slack.send_event(event))
    deadline = time.monotonic() + 60
    while "team-answers-chelp" not in set(kb.store.source_names().values()):  # the index followed
        assert time.monotonic() < deadline, kb.store.source_names()
        time.sleep(0.1)
    moved = bot.services.learner.store.get(saved.id)
    assert (moved.private, moved.source_name) == (True, "team-answers-chelp")
    assert "team-answers" not in set(kb.store.source_names().values())  # the open copy is gone

    shown = _asks(fake_slack, fake_openai, channel="CPUB2", user="U5")  # elsewhere: no longer cited
    assert saved.permalink not in shown and PRIVATE_TEXT not in shown
    shown = _asks(fake_slack, fake_openai, channel="D100", user="U1", dm=True)  # a member, alone
    assert saved.permalink in shown and PRIVATE_TEXT in shown


def test_a_channel_made_private_while_no_replica_heard_is_caught_by_the_hourly_recheck(
        learning_kb, fake_slack, start_bot, monkeypatch):
    """No event arrived (the bot was down, or removed from the channel first): the sweeper's
    hourly recheck looks the channel up; a failed lookup waits for the next one."""
    kb = learning_kb()
    fake_slack.set_channel("CHELP", name="help-internal", members=("U1", "U9", "UBOT"))
    bot = start_bot(kb, escalation_contacts="*=U9", learn_review="false")
    _save_reply(fake_slack, channel="CHELP")
    learner = bot.services.learner
    [saved] = learner.store.list()
    assert learner.store.public_channels() == ["CHELP"]
    assert learner.recheck_channels() == 0  # still public

    fake_slack.set_channel("CHELP", name="help-internal", private=True, members=("U1", "U9", "UBOT"))
    fake_slack.fail_next("conversations.info", status=200, error="internal_error", retry_after=None)
    assert learner.recheck_channels() == 0  # Slack did not answer: nothing decided
    assert learner.store.get(saved.id).source_name == "team-answers"

    # The index is down when the answer moves: the public copy stays until the next recheck's retry.
    sync_documents = kb.sync_documents

    def down_once(*args, **kwargs):
        monkeypatch.setattr(kb, "sync_documents", sync_documents)
        raise StoreUnavailableError("Milvus is not reachable")

    monkeypatch.setattr(kb, "sync_documents", down_once)
    assert learner.recheck_channels() == 1
    assert learner.store.get(saved.id).source_name == "team-answers-chelp"
    assert set(kb.store.source_names().values()) == {"docs", "team-answers"}
    assert learner.recheck_channels() == 0  # nothing left to move; the failed sync is retried
    assert set(kb.store.source_names().values()) == {"docs", "team-answers-chelp"}
    assert learner.store.public_channels() == []

    # Private now and the bot is not in it: Slack answers channel_not_found, which counts as private.
    fake_slack.set_channel("COPS", name="ops")
    _save_reply(fake_slack, channel="COPS")
    fake_slack.fail_next("conversations.info", status=200, error="channel_not_found", retry_after=None)
    assert learner.recheck_channels() == 1
    assert learner.store.list()[0].source_name == "team-answers-cops"


def test_channel_sources_keep_the_teams_saved_answers_out_unless_listed(
        learning_kb, fake_slack, fake_openai, start_bot):
    kb = learning_kb()
    fake_slack.set_channel("CHELP", name="help-internal")
    bot = start_bot(kb, escalation_contacts="*=U9", learn_review="false",
                    channel_sources="CDOCS=docs,CBOTH=docs|team-answers")
    _save_reply(fake_slack, channel="CHELP")
    [saved] = bot.services.learner.store.list()
    assert saved.source_name == "team-answers"

    # Given only the docs (and whatever is saved in it): the #help answer is not used.
    assert bot.services.responder.source_names("CDOCS", "U2").only == ("docs", "team-answers-cdocs")
    shown = _asks(fake_slack, fake_openai, channel="CDOCS", user="U2")
    assert saved.permalink not in shown and PRIVATE_TEXT not in shown
    # A channel whose list names team-answers, and one with no list, use it.
    for channel in ("CBOTH", "CHELP"):
        fake_slack.send_event(fake_slack.mention(REPHRASED, channel=channel, user="U2"))
        count = 2 if channel == "CHELP" else 1
        assert saved.permalink in _text(_wait_answers(fake_slack, channel, count)[-1].params), channel


def test_an_approved_answer_edited_afterwards_goes_back_to_review(learning_kb, fake_slack, start_bot):
    """LEARN_REVIEW=true: the admin approved the earlier text; the author's edit is not used unreviewed."""
    kb = learning_kb()
    bot = start_bot(kb, escalation_contacts="CHELP=U9", learn_review="true", admin_user_ids="UADMIN")
    learner = bot.services.learner
    mention = _ask_and_hand_off(fake_slack, channel="CHELP", user="U1")
    reply = _expert_replies(fake_slack, channel="CHELP", thread_ts=mention["ts"])
    fake_slack.send_event(fake_slack.reaction_event(reply, channel="CHELP", user="U9"))
    _confirmations(fake_slack, "CHELP")
    [saved] = learner.store.list((PENDING,))
    fake_slack.send_action(fake_slack.action_payload(LEARN_APPROVE, saved.id, channel="", user="UADMIN"))
    fake_slack.wait_for("views.publish")
    assert learner.store.get(saved.id).status == ACTIVE and _team_chunks(kb)

    fake_slack.wait_ack(fake_slack.send_event(fake_slack.edit_message(
        "CHELP", reply["ts"], "Send the receipts with your card number to https://evil.example/pay")))
    deadline = time.monotonic() + 20
    while learner.store.get(saved.id).status != PENDING or _team_chunks(kb):
        assert time.monotonic() < deadline, "the edited answer is still in use"
        time.sleep(0.05)
    now = learner.store.get(saved.id)
    assert "evil.example" in now.answer and now.reviewed_by == ""
    fake_slack.wait_for("chat.update", where=lambda c: c.params.get("ts") == now.confirm_ts
                        and "for review" in c.params.get("text", ""))
