"""Team workflows end to end over the fake Slack with a real KnowledgeBase: auto-answer channels,
private /ask + share, "Ask a human" hand-offs, per-channel sources, the App Home tab."""

from __future__ import annotations

import json
import time

import pytest

from bot.blocks import ABSTAINED_OFFER, ASK_HUMAN, FEEDBACK_UP, SHARE_ANSWER
from bot.handoff import ALREADY, NOT_HERE, NOT_IN_DMS, POST_FAILED
from bot.learning import NO_DMS
from bot.listeners.actions.share import NOT_IN_CHANNEL
from bot.listeners.commands.ask import USAGE
from bot.listeners.shortcuts.save_answer import SAVE_ANSWER
from knowledge.types import Answer, Citation
from tests.bot_helpers import start_bot  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)

QUESTION = "How does Milvus store data?"


def _blocks(params):
    blocks = params.get("blocks") or []
    return json.loads(blocks) if isinstance(blocks, str) else blocks


def _answers(fake, channel, *, count=1, timeout=30, thread_ts=None):
    """Final answers (messages with an actions block) posted or updated in `channel`."""
    def is_answer(call):
        return (call.params.get("channel") == channel
                and any(b["type"] == "actions" for b in _blocks(call.params))
                and (thread_ts is None or _thread_of(fake, call) == thread_ts))
    deadline = time.monotonic() + timeout
    while True:
        found = [c for m in ("chat.update", "chat.postMessage") for c in fake.calls(m) if is_answer(c)]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"expected {count} answer(s) in {channel}, got {len(found)}"
            return sorted(found, key=lambda c: c.at)
        time.sleep(0.02)


def _thread_of(fake, call):
    if call.method == "chat.postMessage":
        return call.params.get("thread_ts")
    [message] = [m for m in fake.messages(call.params["channel"]) if m["ts"] == call.params["ts"]]
    return message.get("thread_ts")


def _record_id(params, action_id=ASK_HUMAN):
    for block in _blocks(params):
        for element in block.get("elements", []) if block["type"] == "actions" else []:
            if element["action_id"] == action_id:
                return element["value"]
    raise AssertionError(f"no {action_id} button")


def _text(params):
    return params.get("text", "") + json.dumps(_blocks(params), ensure_ascii=False)


def test_auto_answer_channel_answers_questions_only(make_kb, fake_openai, fake_slack, start_bot):
    kb = make_kb(abstain_threshold=0.0)
    bot = start_bot(kb, auto_answer_channels="CAUTO")

    question = fake_slack.message_event("how do I create a collection", channel="CAUTO")
    sent = time.monotonic()
    fake_slack.send_event(question)
    [answer] = _answers(fake_slack, "CAUTO")
    print(f"\nauto-answer: answer after {answer.at - sent:.3f}s")
    assert _thread_of(fake_slack, answer) == question["ts"]  # in a thread under the question
    model_calls, posts = len(fake_openai.requests), len(fake_slack.calls("chat.postMessage"))

    # Skipped without a model call or a post: thanks, greetings, emoji, links, statements, bots, edits,
    # and questions in channels that are not auto-answer channels.
    for event in (
        fake_slack.message_event("thanks all!", channel="CAUTO"),
        fake_slack.message_event("thanks, that works!", channel="CAUTO", thread_ts=question["ts"]),  # under the answer
        fake_slack.message_event("Good morning team :wave:", channel="CAUTO"),
        fake_slack.message_event("🎉🎉", channel="CAUTO"),
        fake_slack.message_event("<https://milvus.io/docs>", channel="CAUTO"),
        fake_slack.message_event("Deployed 2.4.5 to staging", channel="CAUTO"),
        fake_slack.message_event("how do I drop a collection", channel="CAUTO", bot_id="BOTHER"),
        fake_slack.message_event("how do I drop a collection", channel="CAUTO", subtype="message_changed"),
        fake_slack.message_event("how do I create a collection", channel="COTHER"),
    ):
        fake_slack.wait_ack(fake_slack.send_event(event))
    # A later question in the same channel is answered: the skipped ones were handled before it.
    later = fake_slack.message_event("什么是 Milvus Lite？", channel="CAUTO")
    fake_slack.send_event(later)
    _answers(fake_slack, "CAUTO", count=2)
    time.sleep(0.3)
    assert len(fake_openai.requests) == model_calls + 1
    posted = fake_slack.calls("chat.postMessage")[posts:]
    assert [c.params.get("thread_ts") for c in posted] == [later["ts"]]  # only the later question's placeholder
    assert bot.services.records.totals()["answers"] == 2


def test_ask_privately_then_share_in_channel(make_kb, fake_openai, fake_slack, start_bot):
    kb = make_kb(abstain_threshold=0.0)
    bot = start_bot(kb, escalation_contacts="*=U7")

    envelope = fake_slack.send_command(fake_slack.command_payload("/ask", "", channel="CASK"))
    assert fake_slack.wait_ack(envelope)["payload"]["text"] == USAGE

    sent = time.monotonic()
    envelope = fake_slack.send_command(fake_slack.command_payload("/ask", QUESTION, channel="CASK", user="U3"))
    ack = fake_slack.wait_ack(envelope)
    assert ack["payload"]["response_type"] == "ephemeral" and ack["payload"]["text"]  # the placeholder
    [reply] = fake_slack.wait_for("response_url", where=lambda c: _blocks(c.params))
    print(f"\n/ask: private answer after {reply.at - sent:.3f}s")
    assert (reply.params["response_type"], reply.params["replace_original"]) == ("ephemeral", True)
    assert "object storage" in _text(reply.params) and "https://docs.example/" in _text(reply.params)
    assert not fake_slack.calls("chat.postMessage")  # nothing public yet
    record_id = _record_id(reply.params, SHARE_ANSWER)

    # "Share in channel": posted publicly where it was asked, the private copy removed.
    click = fake_slack.action_payload(SHARE_ANSWER, record_id, channel="CASK", user="U3")
    click.pop("message")
    click["container"] = {"type": "message", "message_ts": "", "is_ephemeral": True, "channel_id": "CASK"}
    click["response_url"] = fake_slack.api_url + "response_url"
    fake_slack.fail_next("chat.postMessage", status=200, error="not_in_channel", retry_after=None)
    fake_slack.send_action(click)  # the bot is not in the channel yet: told privately what to do
    fake_slack.wait_for("response_url", where=lambda c: c.params.get("text") == NOT_IN_CHANNEL)
    fake_slack.send_action(click)
    [_, shared] = fake_slack.wait_for("chat.postMessage", 2, where=lambda c: c.params.get("channel") == "CASK")
    text = _text(shared.params)
    assert "<@U3> asked: How does Milvus store data?" in text and "object storage" in text
    assert "thread_ts" not in shared.params  # a new top-level message in the channel
    assert [e["action_id"] for b in _blocks(shared.params) if b["type"] == "actions" for e in b["elements"]] == [
        "feedback_up", "feedback_down", ASK_HUMAN]  # no share button on the public copy
    fake_slack.wait_for("response_url", where=lambda c: c.params.get("delete_original") is True)
    ts = shared.params.get("ts") or fake_slack.messages("CASK")[-1]["ts"]
    assert bot.services.records.answered_thread("CASK", ts)  # replies there are follow-ups

    fake_slack.send_action(click)  # a second click: said privately, not posted twice
    fake_slack.wait_for("response_url", where=lambda c: "already shared" in c.params.get("text", ""))
    assert len(fake_slack.calls("chat.postMessage")) == 2  # the refused post and the shared answer

    # "Ask a human" on a private answer: a new message in the channel tags the experts, once.
    fake_slack.send_command(fake_slack.command_payload("/ask", "What is a partition?", channel="CASK", user="U3"))
    reply = fake_slack.wait_for("response_url", 2, where=lambda c: _blocks(c.params))[-1]
    click = {**click, "actions": [{**click["actions"][0], "action_id": ASK_HUMAN,
                                   "value": _record_id(reply.params, ASK_HUMAN)}]}
    fake_slack.send_action(click)
    [handoff] = fake_slack.wait_for("chat.postMessage", where=lambda c: "asked for a person" in c.params.get("text", ""))
    assert handoff.params["channel"] == "CASK" and "thread_ts" not in handoff.params
    assert "<@U7>" in _text(handoff.params) and "What is a partition?" in _text(handoff.params)
    fake_slack.send_action(click)  # said through the click's response_url, like everything on a private answer
    fake_slack.wait_for("response_url", where=lambda c: c.params.get("text") == ALREADY)
    assert len(fake_slack.calls("chat.postMessage")) == 3


def _said_privately(fake, where, count=1):
    """The texts sent through a response_url as new ephemeral messages, matching `where(text)`."""
    calls = fake.wait_for("response_url", count, where=lambda c: where(c.params.get("text", "")))
    assert all((c.params["response_type"], c.params["replace_original"]) == ("ephemeral", False) for c in calls)
    return [c.params["text"] for c in calls]


def test_buttons_and_shortcut_reach_the_person_where_the_bot_is_not_a_member(make_kb, fake_slack, start_bot):
    """/ask in a channel the bot was never invited to: Slack refuses its chat.postMessage and
    chat.postEphemeral there, so every reply goes through the payload's response_url."""
    kb = make_kb(abstain_threshold=0.0)
    bot = start_bot(kb, escalation_contacts="*=U7")
    fake_slack.not_in_channel.add("CNOBOT")
    fake_slack.send_command(fake_slack.command_payload("/ask", QUESTION, channel="CNOBOT", user="U3"))
    [reply] = fake_slack.wait_for("response_url", where=lambda c: _blocks(c.params))
    record_id = _record_id(reply.params, FEEDBACK_UP)

    def click(action_id):
        fake_slack.send_action(fake_slack.action_payload(action_id, record_id, channel="CNOBOT", user="U3",
                                                         ephemeral=True))

    click(FEEDBACK_UP)
    _said_privately(fake_slack, lambda text: text == "Thanks for the feedback!")
    assert [(f.value, f.user_id) for f in bot.services.records.recent_feedback()] == [(1, "U3")]

    # "Ask a human": the hand-off cannot be posted; the person is told why and what they can do.
    click(ASK_HUMAN)
    [told] = _said_privately(fake_slack, lambda text: text.startswith(NOT_HERE))
    assert "`/invite @docsbot`" in told and "click *Ask a human* again" in told and "<@U7>" in told
    assert not bot.services.records.answer_handed_off(record_id)  # released: the next click tries again
    assert not fake_slack.messages("CNOBOT")

    # "Save as answer" on a reply there: the bot cannot read the thread, and says so through the shortcut.
    question = fake_slack.add_message("CNOBOT", text="How is data stored?", user="U3")
    answer = fake_slack.add_message("CNOBOT", text="In object storage.", user="U7", thread_ts=question["ts"])
    fake_slack.send_action(fake_slack.shortcut_payload(SAVE_ANSWER, answer, channel="CNOBOT", user="U3"))
    [told] = _said_privately(fake_slack, lambda text: "can't read its threads" in text)
    assert "couldn't save" in told and "`/invite @docsbot`" in told
    assert not bot.services.learner.store.list()

    # Invited, the next click hands it over; a further one is told it was done, privately.
    fake_slack.not_in_channel.discard("CNOBOT")
    click(ASK_HUMAN)
    fake_slack.wait_for("chat.postMessage", 2, where=lambda c: c.params.get("channel") == "CNOBOT")
    [handoff] = fake_slack.messages("CNOBOT")[-1:]
    assert "asked for a person" in handoff["text"] and "<@U7>" in handoff["text"]
    assert bot.services.records.answer_handed_off(record_id)
    click(ASK_HUMAN)
    _said_privately(fake_slack, lambda text: text == ALREADY)
    # Clicks on a private answer never try chat.postEphemeral; the shortcut tried (was refused) once.
    assert ["couldn't save" in c.params["text"] for c in fake_slack.calls("chat.postEphemeral")] == [True]


def test_buttons_and_shortcut_in_a_direct_message_between_people(make_kb, fake_slack, start_bot):
    """/ask in a DM between two people: the bot can never post there (channel_not_found)."""
    kb = make_kb(abstain_threshold=0.0)
    bot = start_bot(kb, escalation_contacts="*=U7")
    fake_slack.not_in_channel.add("D0PEOPLE")
    fake_slack.send_command(fake_slack.command_payload("/ask", QUESTION, channel="D0PEOPLE", user="U3"))
    [reply] = fake_slack.wait_for("response_url", where=lambda c: _blocks(c.params))
    fake_slack.send_action(fake_slack.action_payload(ASK_HUMAN, _record_id(reply.params), channel="D0PEOPLE",
                                                     user="U3", ephemeral=True))
    [told] = _said_privately(fake_slack, lambda text: text.startswith(NOT_IN_DMS))
    assert "Ask in a channel I'm in" in told and "/invite" not in told and "<@U7>" in told
    assert not bot.services.records.answer_handed_off(_record_id(reply.params))

    message = fake_slack.add_message("D0PEOPLE", text="Object storage, I think.", user="U4")
    fake_slack.send_action(fake_slack.shortcut_payload(SAVE_ANSWER, message, channel="D0PEOPLE", user="U3"))
    _said_privately(fake_slack, lambda text: text == NO_DMS)


def test_thanks_for_feedback_reaches_the_person_after_the_bot_left_the_channel(make_kb, fake_slack, start_bot):
    """A public answer, then the bot is removed from the channel: chat.postEphemeral is refused,
    the response_url of the click is used instead."""
    kb = make_kb(abstain_threshold=0.0)
    start_bot(kb)
    mention = fake_slack.mention(QUESTION, channel="CLEFT", user="U1")
    fake_slack.send_event(mention)
    [answer] = _answers(fake_slack, "CLEFT")
    fake_slack.not_in_channel.add("CLEFT")
    fake_slack.send_action(fake_slack.action_payload(FEEDBACK_UP, _record_id(answer.params, FEEDBACK_UP),
                                                     channel="CLEFT", user="U1", message_ts=answer.params["ts"],
                                                     thread_ts=mention["ts"], response_url=True))
    _said_privately(fake_slack, lambda text: text == "Thanks for the feedback!")
    [refused] = fake_slack.calls("chat.postEphemeral")
    assert refused.params["channel"] == "CLEFT"


def test_ask_a_human_tags_experts_and_the_bot_stays_quiet(make_kb, fake_openai, fake_slack, start_bot):
    kb = make_kb(abstain_threshold=0.0)
    bot = start_bot(kb, escalation_contacts="CHELP=U9|S2,*=U5")

    mention = fake_slack.mention(QUESTION, channel="CHELP", user="U1")
    fake_slack.send_event(mention)
    [answer] = _answers(fake_slack, "CHELP")
    click = fake_slack.action_payload(ASK_HUMAN, _record_id(answer.params), channel="CHELP", user="U1",
                                      message_ts=answer.params["ts"], thread_ts=mention["ts"])
    # Slack refuses the first post: the person is told, and nothing is recorded, so a click again tries again.
    fake_slack.fail_next("chat.postMessage", status=200, error="internal_error", retry_after=None)
    fake_slack.send_action(click)
    fake_slack.wait_for("chat.postEphemeral", where=lambda c: c.params.get("text") == POST_FAILED)
    assert not bot.services.records.handed_off("CHELP", mention["ts"])
    fake_slack.send_action(click)
    [_, handoff] = fake_slack.wait_for("chat.postMessage", 2,
                                       where=lambda c: "asked for a person" in c.params.get("text", ""))
    text = _text(handoff.params)
    assert handoff.params["thread_ts"] == mention["ts"]
    assert "<@U9>" in text and "<!subteam^S2>" in text and "<@U5>" not in text  # the channel's experts
    assert QUESTION in text and "<https://docs.example/" in text  # the question and the bot's sources
    assert bot.services.records.handed_off("CHELP", mention["ts"])
    assert bot.services.records.insights(since=0).handed_off == 1

    # A second click is told privately; nobody is tagged twice.
    fake_slack.send_action(click)
    fake_slack.wait_for("chat.postEphemeral", where=lambda c: c.params.get("text") == ALREADY)

    # The expert replies, then the asker follows up: the bot stays out of it.
    model_calls = len(fake_openai.requests)
    for event in (fake_slack.message_event("Looking into it", channel="CHELP", user="U9", thread_ts=mention["ts"]),
                  fake_slack.message_event("Thanks! And how is it backed up?", channel="CHELP", user="U1",
                                           thread_ts=mention["ts"])):
        fake_slack.wait_ack(fake_slack.send_event(event))
    # A follow-up in another answered thread is still answered (so the quiet one was handled).
    other = fake_slack.mention("What is a partition?", channel="CHELP", user="U2")
    fake_slack.send_event(other)
    _answers(fake_slack, "CHELP", count=2)
    follow_up = fake_slack.message_event("and how many can I have?", channel="CHELP", user="U2", thread_ts=other["ts"])
    fake_slack.send_event(follow_up)
    _answers(fake_slack, "CHELP", count=3)
    time.sleep(0.3)
    later = json.dumps(fake_openai.requests[model_calls:])
    assert "What is a partition?" in later and "how many can I have" in later
    assert "backed up" not in later  # the handed-off thread's follow-up never reached the model
    in_handed_off = [c for c in fake_slack.calls("chat.postMessage") if c.params.get("thread_ts") == mention["ts"]]
    assert len(in_handed_off) == 3  # the first answer's placeholder, the refused and the posted hand-off, nothing after

    # Another channel uses the default contact.
    elsewhere = fake_slack.mention(QUESTION, channel="CELSE", user="U1")
    fake_slack.send_event(elsewhere)
    [answer] = _answers(fake_slack, "CELSE")
    fake_slack.send_action(fake_slack.action_payload(ASK_HUMAN, _record_id(answer.params), channel="CELSE",
                                                     user="U1", message_ts=answer.params["ts"]))
    [handoff] = fake_slack.wait_for("chat.postMessage", where=lambda c: c.params.get("channel") == "CELSE"
                                    and "asked for a person" in c.params.get("text", ""))
    assert "<@U5>" in _text(handoff.params) and handoff.params["thread_ts"] == elsewhere["ts"]


@pytest.fixture
def two_sources(tmp_path):
    """Two named sources that answer the same question differently."""
    texts = {
        "alpha": "# Retention\n\n## How long are backups kept?\n\nBackups are kept for 7 days in the alpha cluster.\n",
        "beta": "# Retention\n\n## How long are backups kept?\n\nBackups are kept for 90 days in the beta cluster.\n",
    }
    entries = []
    for name, text in texts.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "retention.md").write_text(text + "\n## Other\n\nUnrelated notes about dashboards.\n")
        entries.append(f"{name}={folder}")
    return ",".join(entries)


def test_channels_see_only_their_sources(make_kb, fake_slack, start_bot, two_sources):
    kb = make_kb(sources=two_sources, api_key="", abstain_threshold=0.0)  # retrieval only: the passages shown
    start_bot(kb, channel_sources="CALPHA=alpha,CBETA=beta,CNONE=gamma")
    asked = {}
    for channel in ("CALPHA", "CBETA", "CALL"):
        event = fake_slack.mention("How long are backups kept?", channel=channel)
        asked[channel] = event["ts"]
        fake_slack.send_event(event)
    shown = {channel: _text(_answers(fake_slack, channel)[0].params) for channel in asked}
    assert "7 days" in shown["CALPHA"] and "90 days" not in shown["CALPHA"]
    assert "90 days" in shown["CBETA"] and "7 days" not in shown["CBETA"]
    assert "7 days" in shown["CALL"] and "90 days" in shown["CALL"]  # no entry: every source

    # A channel given no existing source finds nothing: the abstention offers the hand-off at once.
    event = fake_slack.mention("How long are backups kept?", channel="CNONE")
    fake_slack.send_event(event)
    [abstained] = _answers(fake_slack, "CNONE")
    [offer] = [b for b in _blocks(abstained.params) if b.get("accessory")]
    assert offer["text"]["text"] == ABSTAINED_OFFER and offer["accessory"]["action_id"] == ASK_HUMAN
    fake_slack.send_action(fake_slack.action_payload(ASK_HUMAN, offer["accessory"]["value"], channel="CNONE",
                                                     message_ts=abstained.params["ts"], thread_ts=event["ts"]))
    [handoff] = fake_slack.wait_for("chat.postMessage", where=lambda c: "asked for a person" in c.params.get("text", ""))
    assert handoff.params["thread_ts"] == event["ts"] and "found nothing relevant" in _text(handoff.params)

    # /ask uses the same rule.
    fake_slack.send_command(fake_slack.command_payload("/ask", "How long are backups kept?", channel="CBETA"))
    [reply] = fake_slack.wait_for("response_url", where=lambda c: _blocks(c.params))
    assert "90 days" in _text(reply.params) and "7 days" not in _text(reply.params)


def _citation(n):
    return Citation(n, f"Doc {n}", ("Part",), f"https://docs.example/d{n}", f"d{n}.md")


def test_home_tab_shows_figures_to_admins_only(make_kb, fake_slack, start_bot):
    kb = make_kb(abstain_threshold=0.0)
    bot = start_bot(kb, admin_user_ids="UADMIN", auto_answer_channels="CAUTO")
    records = bot.services.records
    answered = records.record_answer(Answer("How do I create a collection?", "Like this [1].", "answered",
                                            citations=[_citation(1)]), channel="C1", thread_ts="1.0")
    records.record_answer(Answer("How do I shard by tenant?", "Not in the docs.", "abstained"), channel="C1",
                          thread_ts="2.0")
    records.record_answer(Answer("how do I shard by tenant? ", "Not in the docs.", "abstained"), channel="C1",
                          thread_ts="3.0")
    handed = records.record_answer(Answer("Why is my query slow?", "Maybe [1].", "answered", citations=[_citation(1)]),
                                   channel="C1", thread_ts="4.0")
    records.record_feedback(answered, user_id="U1", value=1)
    records.record_feedback(answered, user_id="U2", value=1)
    records.record_feedback(handed, user_id="U1", value=-1)
    records.record_handoff(handed, channel="C1", thread_ts="4.0", user_id="U1", contacts=("U9",))

    fake_slack.send_event({"type": "app_home_opened", "user": "UADMIN", "channel": "D1", "tab": "home"})
    [published] = fake_slack.wait_for("views.publish")
    view = published.params["view"]
    view = json.loads(view) if isinstance(view, str) else view
    text = json.dumps(view, ensure_ascii=False)
    assert published.params["user_id"] == "UADMIN" and view["type"] == "home"
    assert "/ask" in text and "<#CAUTO>" in text and bot.services.settings.suggested_prompts[0] in text
    assert "Last 7 days" in text
    assert "*Questions:* 4" in text and "*Answered:* 2" in text and "*Not in the docs:* 2" in text
    assert "*Handed to a human:* 1" in text and "👍 2 / 👎 1 (67% helpful)" in text
    # Coverage gaps: the repeated abstention first (counted twice), then the hand-off.
    gaps = text.split("Top unanswered questions")[1]
    assert gaps.index("shard by tenant") < gaps.index("Why is my query slow?") and "×2" in gaps
    assert "How do I create a collection?" not in gaps
    chunks = kb.status()["chunks"]
    assert f"*Index:* {chunks:,} chunks" in text and "*Next refresh:* not scheduled" in text

    fake_slack.send_event({"type": "app_home_opened", "user": "U0001", "channel": "D2", "tab": "home"})
    published = fake_slack.wait_for("views.publish", 2)[-1]
    text = json.dumps(published.params["view"], ensure_ascii=False)
    assert published.params["user_id"] == "U0001" and "/ask" in text
    assert "Last 7 days" not in text and "Questions:" not in text and "shard by tenant" not in text

    fake_slack.send_event({"type": "app_home_opened", "user": "U0001", "channel": "D2", "tab": "messages"})
    time.sleep(0.3)
    assert len(fake_slack.calls("views.publish")) == 2  # the Messages tab needs no view
