"""The bot learns from its threads, end to end over the fake Slack with a real KnowledgeBase
(all-MiniLM-L6-v2, reranking off, Milvus Lite, the fake OpenAI): a reply marked ✅ becomes a
saved answer the bot cites next time; undo, review, private channels, edits and deletions."""

from __future__ import annotations

import json
import time

import pytest

from bot.blocks import ASK_HUMAN
from bot.learned_blocks import ANSWER_INPUT, LEARN_APPROVE, LEARN_EDIT, LEARN_REMOVE, LEARN_UNDO, QUESTION_INPUT
from bot.learning import NO_DMS, NOT_ALLOWED
from bot.listeners.shortcuts.save_answer import SAVE_ANSWER
from bot.state.saved_answers import ACTIVE, PENDING, REMOVED
from knowledge.prompts import TEAM_ANSWERS_SOURCE
from tests.bot_helpers import start_bot  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(180)

QUESTION = "Who approves expense reports for the Berlin office?"
REPHRASED = "Which person signs off on Berlin expense claims?"
REPLY = "<@U1> Dana in finance approves them: submit them in *Payflow* before the 5th of the month."
SAVED_TEXT = "Dana in finance approves them: submit them in Payflow before the 5th of the month."


def _blocks(params):
    blocks = params.get("blocks") or []
    return json.loads(blocks) if isinstance(blocks, str) else blocks


def _text(params):
    return params.get("text", "") + json.dumps(_blocks(params), ensure_ascii=False)


def _answer_calls(fake, channel):
    return [c for m in ("chat.update", "chat.postMessage") for c in fake.calls(m)
            if c.params.get("channel") == channel and any(b["type"] == "actions" and b.get("block_id") == "feedback"
                                                          for b in _blocks(c.params))]


def _wait_answers(fake, channel, count, timeout=60):
    deadline = time.monotonic() + timeout
    while len(found := _answer_calls(fake, channel)) < count:
        assert time.monotonic() < deadline, f"expected {count} answer(s) in {channel}, got {len(found)}"
        time.sleep(0.05)
    return sorted(found, key=lambda c: c.at)


def _button(params, action_id):
    for block in _blocks(params):
        for element in ([block.get("accessory")] if block.get("accessory") else []) + block.get("elements", []):
            if element and element.get("action_id") == action_id:
                return element["value"]
    raise AssertionError(f"no {action_id} button in {params}")


def _confirmations(fake, channel, count=1):
    return fake.wait_for("chat.postMessage", count, timeout=60,
                         where=lambda c: c.params.get("channel") == channel and c.params.get("text", "").startswith("📌"))


def _passages_sent(fake_openai) -> str:
    return fake_openai.requests[-1]["messages"][-1]["content"]


def _team_chunks(kb, names=(TEAM_ANSWERS_SOURCE,)):
    return kb.store.content_hashes(source_names=list(names))


@pytest.fixture
def learning_kb(make_kb):
    def make(**overrides):
        # MiniLM without the reranker: the FAQ does not answer expense questions (best cosine ~0.12,
        # under the 0.3 abstention threshold), the saved answer does (~0.6 for the rephrased question).
        return make_kb(embedder="minilm", reranker=False, **overrides)
    return make


def _ask_and_hand_off(fake, *, channel, user, question=QUESTION):
    """A question the docs do not answer, then "Ask a human" on the abstention."""
    mention = fake.mention(question, channel=channel, user=user)
    fake.send_event(mention)
    [abstained] = _wait_answers(fake, channel, 1)
    assert "doesn't seem to cover" in _text(abstained.params)
    fake.send_action(fake.action_payload(ASK_HUMAN, _button(abstained.params, ASK_HUMAN), channel=channel, user=user,
                                         message_ts=abstained.params["ts"], thread_ts=mention["ts"]))
    fake.wait_for("chat.postMessage", where=lambda c: "asked for a person" in c.params.get("text", ""))
    return mention


def _expert_replies(fake, *, channel, thread_ts, user="U9", text=REPLY):
    event = fake.message_event(text, channel=channel, user=user, thread_ts=thread_ts)
    fake.wait_ack(fake.send_event(event))
    return event


def test_a_reply_marked_resolved_is_cited_next_time(learning_kb, fake_openai, fake_slack, start_bot):
    kb = learning_kb()
    fake_slack.set_channel("CHELP", name="help")
    fake_slack.user_names.update({"U1": "alex", "U9": "dana", "U2": "sam"})
    bot = start_bot(kb, escalation_contacts="CHELP=U9", learn_review="false", admin_user_ids="UADMIN")

    mention = _ask_and_hand_off(fake_slack, channel="CHELP", user="U1")
    reply = _expert_replies(fake_slack, channel="CHELP", thread_ts=mention["ts"])
    model_calls = len(fake_openai.requests)
    fake_slack.send_event(fake_slack.reaction_event(reply, channel="CHELP", user="U1"))
    [confirmation] = _confirmations(fake_slack, "CHELP")
    assert confirmation.params["thread_ts"] == mention["ts"]
    assert "Answered in #help by @dana" in _text(confirmation.params) and _button(confirmation.params, LEARN_UNDO)
    [saved] = bot.services.learner.store.list()
    assert (saved.question, saved.answer, saved.answered_by, saved.saved_by) == (QUESTION, "@alex " + SAVED_TEXT,
                                                                                 "U9", "U1")
    assert saved.permalink == fake_slack.permalink("CHELP", reply["ts"]) and saved.status == ACTIVE

    # Someone else asks the same thing in other words: the saved answer is among the passages, and cited.
    fake_openai.reply("Dana in finance approves Berlin expense reports; submit them in Payflow before the 5th [1].")
    other = fake_slack.mention(REPHRASED, channel="CHELP", user="U2")
    fake_slack.send_event(other)
    answer = _wait_answers(fake_slack, "CHELP", 2)[-1]
    assert len(fake_openai.requests) == model_calls + 1  # the abstention made no model call; this one did
    passages = _passages_sent(fake_openai)
    assert 'kind="team answer"' in passages and "submit them in Payflow before the 5th" in passages
    assert f"title=\"Answered in #help by @dana, {time.strftime('%Y-%m-%d', time.gmtime(saved.answered_at))}\"" \
        in passages
    assert "prefer the newer one" in fake_openai.requests[-1]["messages"][0]["content"]
    shown = _text(answer.params)
    assert f"<{saved.permalink}|Answered in #help by @dana, " in shown

    # The admins' Home counts it: the question it answered since, and the 👍 that answer got.
    fake_slack.send_action(fake_slack.action_payload("feedback_up", _button(answer.params, "feedback_up"),
                                                     channel="CHELP", user="U2", message_ts=answer.params["ts"]))
    fake_slack.wait_for("chat.postEphemeral", where=lambda c: "Thanks" in c.params.get("text", ""))
    fake_slack.send_event({"type": "app_home_opened", "user": "UADMIN", "channel": "D1", "tab": "home"})
    [home] = fake_slack.wait_for("views.publish")
    view = home.params["view"]
    home_text = view if isinstance(view, str) else json.dumps(view, ensure_ascii=False)
    assert "*In use:* 1" in home_text and "answered 1 question(s) since · 👍 1 / 👎 0" in home_text
    assert REPHRASED in home_text

    # A second ✅ (by the expert) confirms nothing twice.
    fake_slack.wait_ack(fake_slack.send_event(fake_slack.reaction_event(reply, channel="CHELP", user="U9")))
    time.sleep(0.3)
    assert len(_confirmations(fake_slack, "CHELP")) == 1

    print("\nThe conversation in #help, as the fake Slack recorded it:")
    for message in fake_slack.messages("CHELP"):
        thread = f" (in thread {message['thread_ts']})" if message.get("thread_ts") not in (None, message["ts"]) else ""
        print(f"- {message['ts']} {message['user']}{thread}: {message['text']}")


def test_undo_stops_using_the_answer_and_a_refresh_keeps_saved_ones(learning_kb, fake_slack, start_bot):
    kb = learning_kb()
    bot = start_bot(kb, escalation_contacts="CHELP=U9")
    learner = bot.services.learner
    mention = _ask_and_hand_off(fake_slack, channel="CHELP", user="U1")
    reply = _expert_replies(fake_slack, channel="CHELP", thread_ts=mention["ts"])

    # Someone who is neither the asker nor an expert: nothing happens, silently.
    fake_slack.wait_ack(fake_slack.send_event(fake_slack.reaction_event(reply, channel="CHELP", user="U5")))
    # The expert marks it (LEARN_REVIEW=auto: used at once), then a full refresh and a rebuild keep it.
    fake_slack.send_event(fake_slack.reaction_event(reply, channel="CHELP", user="U9"))
    [confirmation] = _confirmations(fake_slack, "CHELP")
    [saved] = learner.store.list()
    assert saved.status == ACTIVE and saved.saved_by == "U9" and len(_team_chunks(kb)) == 1
    kb.refresh()
    assert len(_team_chunks(kb)) == 1
    kb.refresh(rebuild=True)
    assert len(_team_chunks(kb)) == 1

    # Only the people involved (or admins) may undo.
    undo = fake_slack.action_payload(LEARN_UNDO, _button(confirmation.params, LEARN_UNDO), channel="CHELP",
                                     user="U5", message_ts=confirmation.params.get("ts", ""), thread_ts=mention["ts"])
    fake_slack.send_action(undo)
    fake_slack.wait_for("chat.postEphemeral", where=lambda c: c.params.get("text") == NOT_ALLOWED)
    assert learner.store.get(saved.id).status == ACTIVE
    fake_slack.send_action({**undo, "user": {"id": "U9", "team_id": "T0001"}})
    fake_slack.wait_for("chat.update", where=lambda c: "Undone by <@U9>" in c.params.get("text", ""))
    assert learner.store.get(saved.id).status == REMOVED and _team_chunks(kb) == {}
    kb.refresh()
    assert _team_chunks(kb) == {}  # a refresh does not bring it back

    # A DM is never saved.
    dm = fake_slack.add_message("D42", text="It is Dana.", user="U9", thread_ts="1.0")
    assert learner.capture(channel="D42", message_ts=dm["ts"], marker="U9", via="reaction").message == NO_DMS


def test_review_flow_in_the_admins_home(learning_kb, fake_slack, start_bot):
    kb = learning_kb()
    bot = start_bot(kb, escalation_contacts="CHELP=U9", admin_user_ids="UADMIN")
    learner = bot.services.learner
    mention = _ask_and_hand_off(fake_slack, channel="CHELP", user="U1")
    reply = _expert_replies(fake_slack, channel="CHELP", thread_ts=mention["ts"])

    # The asker marks it: LEARN_REVIEW=auto puts it on the admins' pending list, not in the index.
    fake_slack.send_event(fake_slack.reaction_event(reply, channel="CHELP", user="U1"))
    [confirmation] = _confirmations(fake_slack, "CHELP")
    assert "for review" in confirmation.params["text"]
    [saved] = learner.store.list((PENDING,))
    assert _team_chunks(kb) == {}

    fake_slack.send_event({"type": "app_home_opened", "user": "UADMIN", "channel": "D1", "tab": "home"})
    [home] = fake_slack.wait_for("views.publish")
    view = home.params["view"]
    view = json.loads(view) if isinstance(view, str) else view
    assert "*Waiting for review:* 1" in json.dumps(view, ensure_ascii=False)
    review = next(b for b in view["blocks"] if b.get("block_id") == f"review_{saved.id}")
    assert _button({"blocks": [review]}, LEARN_APPROVE) == saved.id

    # A person who is not an admin cannot approve.
    fake_slack.send_action(fake_slack.action_payload(LEARN_APPROVE, saved.id, channel="", user="U1"))
    # Edit opens a modal; submitting it saves the edit and approves.
    fake_slack.send_action(fake_slack.action_payload(LEARN_EDIT, saved.id, channel="", user="UADMIN"))
    [opened] = fake_slack.wait_for("views.open")
    modal = opened.params["view"]
    modal = json.loads(modal) if isinstance(modal, str) else modal
    assert learner.store.get(saved.id).status == PENDING  # the non-admin's click changed nothing
    edited = "Dana Kim in finance approves them (Payflow, before the 5th)."
    fake_slack.send_action(fake_slack.view_submission(modal, {QUESTION_INPUT: QUESTION, ANSWER_INPUT: edited},
                                                      user="UADMIN"))
    fake_slack.wait_for("views.publish", 2)
    now = learner.store.get(saved.id)
    assert (now.status, now.answer, now.reviewed_by) == (ACTIVE, edited, "UADMIN")
    [chunk] = kb.store.get(list(_team_chunks(kb)))
    assert "Dana Kim" in chunk.text
    confirm_ts = learner.store.get(saved.id).confirm_ts
    fake_slack.wait_for("chat.update", where=lambda c: c.params.get("ts") == confirm_ts
                        and "as an answer" in c.params.get("text", ""))
    published = fake_slack.calls("views.publish")[-1].params["view"]
    text = published if isinstance(published, str) else json.dumps(published, ensure_ascii=False)
    assert "*In use:* 1" in text and "answered 0 question(s) since" in text

    # Remove from the Home tab.
    fake_slack.send_action(fake_slack.action_payload(LEARN_REMOVE, saved.id, channel="", user="UADMIN"))
    fake_slack.wait_for("views.publish", 3)
    assert learner.store.get(saved.id).status == REMOVED and _team_chunks(kb) == {}


def test_a_private_channels_answer_is_read_by_its_members_only(learning_kb, fake_openai, fake_slack, start_bot):
    kb = learning_kb()
    fake_slack.set_channel("GPRIV", name="finance-private", private=True, members=("U1", "U9", "UBOT"))
    bot = start_bot(kb, escalation_contacts="*=U9")
    mention = _ask_and_hand_off(fake_slack, channel="GPRIV", user="U1")
    reply = _expert_replies(fake_slack, channel="GPRIV", thread_ts=mention["ts"])
    # The shortcut, by the expert, saves it too.
    fake_slack.send_action(fake_slack.shortcut_payload(SAVE_ANSWER, reply, channel="GPRIV", user="U9"))
    _confirmations(fake_slack, "GPRIV")
    [saved] = bot.services.learner.store.list()
    assert saved.private and saved.source_name == "team-answers-gpriv"
    assert len(_team_chunks(kb, ["team-answers-gpriv"])) == 1 and _team_chunks(kb) == {}

    # Not a member, in a public channel: the docs do not answer it, the private answer is not seen.
    outsider = fake_slack.mention(REPHRASED, channel="CPUB", user="U5")
    fake_slack.send_event(outsider)
    [answer] = _wait_answers(fake_slack, "CPUB", 1)
    assert "doesn't seem to cover" in _text(answer.params) and saved.permalink not in _text(answer.params)
    # A member asking in a DM, and anyone asking in the private channel itself, get it.
    dm = fake_slack.message_event(REPHRASED, channel="D100", user="U1", channel_type="im")
    inside = fake_slack.mention(REPHRASED, channel="GPRIV", user="U7")
    for channel, event, count in (("D100", dm, 1), ("GPRIV", inside, 2)):
        fake_slack.send_event(event)
        found = _wait_answers(fake_slack, channel, count)[-1]
        assert saved.permalink in _text(found.params), channel
        assert "team answer" in _passages_sent(fake_openai)


def _saved_by_the_expert(fake, kb, start_bot):
    """A bot with #help's expert U9 whose reply to U1's handed-off question U9 marked ✅:
    (the bot's learner, the reply, the saved answer)."""
    bot = start_bot(kb, escalation_contacts="CHELP=U9")
    mention = _ask_and_hand_off(fake, channel="CHELP", user="U1")
    reply = _expert_replies(fake, channel="CHELP", thread_ts=mention["ts"])
    fake.send_event(fake.reaction_event(reply, channel="CHELP", user="U9"))
    _confirmations(fake, "CHELP")
    [saved] = bot.services.learner.store.list()
    return bot.services.learner, reply, saved


def test_editing_or_deleting_the_reply_updates_the_saved_answer(learning_kb, fake_slack, start_bot, tmp_path):
    kb = learning_kb()
    learner, reply, saved = _saved_by_the_expert(fake_slack, kb, start_bot)

    fake_slack.wait_ack(fake_slack.send_event(fake_slack.edit_message(
        "CHELP", reply["ts"], "Since June, Priya in finance approves them in Payflow.")))
    deadline = time.monotonic() + 20
    while "Priya" not in (chunk := kb.store.get(list(_team_chunks(kb)))[0]).text:
        assert time.monotonic() < deadline, "the edit did not reach the index"
        time.sleep(0.05)
    assert "Dana in finance" not in chunk.text and "Priya" in learner.store.get(saved.id).answer

    fake_slack.send_event(fake_slack.delete_message("CHELP", reply["ts"]))
    confirm_ts = learner.store.get(saved.id).confirm_ts
    fake_slack.wait_for("chat.update", where=lambda c: c.params.get("ts") == confirm_ts
                        and "was deleted" in c.params.get("text", ""))
    assert learner.store.get(saved.id).status == REMOVED and _team_chunks(kb) == {}


def test_edits_and_deletions_no_replica_heard_are_read_again_from_slack(learning_kb, fake_slack, start_bot):
    """Socket Mode does not redeliver events missed while no replica was connected: the hourly
    re-read follows the edit and the deletion anyway, and leaves what it cannot read alone."""
    kb = learning_kb()
    learner, reply, saved = _saved_by_the_expert(fake_slack, kb, start_bot)
    assert learner.reread_saved() == 0  # nothing changed: nothing moves

    fake_slack.edit_message("CHELP", reply["ts"], "Since June, Priya in finance approves them in Payflow.")
    fake_slack.fail_next("conversations.replies", status=200, error="not_in_channel", retry_after=None)
    assert learner.reread_saved() == 0  # unreadable this time: kept as it is, read next time
    assert learner.store.get(saved.id).answer == saved.answer
    assert learner.reread_saved() == 1
    [chunk] = kb.store.get(list(_team_chunks(kb)))
    assert "Priya" in chunk.text and "Dana in finance" not in chunk.text
    assert learner.reread_saved() == 0  # followed once

    fake_slack.delete_message("CHELP", reply["ts"])
    assert learner.reread_saved() == 1
    assert learner.store.get(saved.id).status == REMOVED and _team_chunks(kb) == {}
    confirm_ts = learner.store.get(saved.id).confirm_ts
    fake_slack.wait_for("chat.update", where=lambda c: c.params.get("ts") == confirm_ts
                        and "was deleted" in c.params.get("text", ""))


def test_a_saved_reply_is_never_taken_for_deleted_when_its_thread_was_not_read_to_the_end(fake_slack):
    """A thread longer than the re-read's pages: the replies past them are unread, not deleted."""
    from slack_sdk import WebClient

    from bot.history import read_thread

    parent = fake_slack.add_message("CLONG", text="a question")
    for n in range(5):
        fake_slack.add_message("CLONG", text=f"reply {n}", thread_ts=parent["ts"])
    client = WebClient(token="xoxb-fake-bot-token", base_url=fake_slack.api_url)
    messages, whole = read_thread(client, channel="CLONG", thread_ts=parent["ts"], max_pages=2, page_size=2)
    assert len(messages) == 4 and not whole
    messages, whole = read_thread(client, channel="CLONG", thread_ts=parent["ts"], max_pages=3, page_size=2)
    assert len(messages) == 6 and whole


def test_answers_command_lists_removes_and_exports(make_kb, tmp_path, monkeypatch, capsys):
    """`supportbot answers list|remove ID|export` over the same database and index the bot uses."""
    import logging

    from bot.cli import main
    from bot.learning import attach, documents_of
    from bot.state import Database
    from bot.state.saved_answers import SavedAnswer, SavedAnswers

    kb = make_kb()
    settings = kb.settings
    db = tmp_path / "feedback.sqlite"
    database = Database(url=f"sqlite:///{db}")
    store = SavedAnswers(database=database)
    attach(kb, store)
    for number, status in ((1, ACTIVE), (2, PENDING), (3, REMOVED)):
        store.add(SavedAnswer(id=f"id{number}", status=status, channel="C1", channel_name="help", private=False,
                              thread_ts="1.0", message_ts=f"{number}.5", question=f"Question {number}?",
                              answer=f"Answer {number}.", answered_by="U9", answered_by_name="dana",
                              answered_at=1_700_000_000.0, saved_by="U1", saved_at=time.time() + number, via="reaction",
                              permalink=f"https://fake.slack.com/archives/C1/p{number}", source_name=TEAM_ANSWERS_SOURCE))
    store.record_use(["id1"], "answer-1", question="Question 1, asked again?")
    store.record_feedback("answer-1", 1)
    kb.sync_documents(documents_of(store), source_names=[TEAM_ANSWERS_SOURCE])
    assert len(_team_chunks(kb)) == 1
    kb.close()  # Milvus Lite: one process (here: one client) at a time
    database.close()

    for name, value in {"KNOWLEDGE_SOURCES": settings.knowledge_sources, "EMBEDDING_MODEL": settings.embedding_model,
                        "RERANKER_MODEL": "none", "MILVUS_URI": settings.milvus_uri, "DATA_DIR": str(settings.data_dir),
                        "DEVICE": "cpu", "DTYPE": "float32", "FEEDBACK_DB": str(db)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert main(["answers", "list"]) == 0
        out = capsys.readouterr().out
        assert "id1  [active]  Answered in #help by @dana, 2023-11-14  (cited 1x, +1/-0)" in out
        assert "id2  [pending]" in out and "id3" not in out
        assert main(["answers", "export"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert {row["id"] for row in rows} == {"id1", "id2", "id3"} and rows[0]["cited_as"].startswith("Answered in")
        assert main(["answers", "remove", "nope"]) == 1
        assert "no saved answer with id 'nope'" in capsys.readouterr().err
        assert main(["answers", "remove", "id1"]) == 0
        assert "The index no longer holds it." in capsys.readouterr().out
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    reopened = Database(url=f"sqlite:///{db}")
    assert SavedAnswers(database=reopened).get("id1").status == REMOVED
    reopened.close()


def test_slack_text_becomes_plain_text_with_names():
    from bot.slack_text import plain_text

    text = ("<@U1> use *bold* _it_ ~old~ snake_case_name, `my_var *x*` in <#C1|support>, "
            "see <https://x.io/a|the docs> &amp; ask <!subteam^S1|@experts>\n```\nrun *this* &lt;now&gt;\n```")
    assert plain_text(text, user_name={"U1": "Dana"}.get) == (
        "@Dana use bold it old snake_case_name, `my_var *x*` in #support, see the docs (https://x.io/a) & "
        "ask @experts\n```\nrun *this* <now>\n```")


def test_a_team_answer_and_a_document_are_both_dated_and_the_newer_is_preferred():
    from knowledge.prompts import build_answer_messages, system_prompt
    from knowledge.types import Chunk

    doc = Chunk(id="a", source="faq.md", title="Expenses", heading_path=("Approvals",), anchor="", url="",
                text="Reports are approved by Mo.", source_name="docs")
    team = Chunk(id="b", source="slack/x.md", title="Answered in #help by @dana, 2026-11-30", heading_path=(),
                 anchor="", url="", text="Dana approves them now.", source_name="team-answers-gpriv")
    [system, user] = build_answer_messages("Who approves expenses?", [doc, team])
    assert '<passage id="2" title="Answered in #help by @dana, 2026-11-30" section="" kind="team answer" ' \
           'date="2026-11-30">' in user["content"]
    assert '<passage id="1" title="Expenses" section="Approvals">' in user["content"]
    assert "prefer the newer one" in system["content"] and "cite both" in system["content"]
    [system, _] = build_answer_messages("Who approves expenses?", [doc])
    assert system["content"] == system_prompt("en") and "team answer" not in system["content"]


@pytest.fixture(params=["sqlite", "postgresql"])
def state_database(request, tmp_path):
    from bot.state import Database

    url = f"sqlite:///{tmp_path / 'state.sqlite'}" if request.param == "sqlite" else \
        request.getfixturevalue("postgres_url")
    database = Database(url=url)
    yield database
    database.close()


def test_saved_answers_store_on_sqlite_and_postgresql(state_database):
    """The migration creates the tables; a message is saved once; removed ones come back under their id."""
    from bot.state.saved_answers import SavedAnswer, SavedAnswers

    store = SavedAnswers(database=state_database)
    saved = SavedAnswer(id="a1", status=ACTIVE, channel="GPRIV", channel_name="fin", private=True, thread_ts="1.0",
                        message_ts="2.0", question="Who approves?", answer="Dana.", answered_by="U9",
                        answered_by_name="dana", answered_at=2.0, saved_by="U1", saved_at=3.0, via="reaction",
                        permalink="https://x/p2", source_name="team-answers-gpriv")
    assert store.add(saved).id == "a1"
    assert store.add(SavedAnswer(**{**saved.__dict__, "id": "a2"})) is None  # the same message: saved once
    store.record_use(["a1", "a1"], "answer-1", question="Who signs off?")
    store.record_feedback("answer-1", -1)
    assert store.usage(["a1"])["a1"].__dict__ == {"answers": 1, "helpful": 0, "not_helpful": 1,
                                                  "questions": ("Who signs off?",)}
    assert store.set_status("a1", REMOVED, by="U9").status == REMOVED
    assert store.source_names() == ["team-answers-gpriv"]  # removed ones too: their chunks must go
    again = store.add(SavedAnswer(**{**saved.__dict__, "id": "a3", "answer": "Priya."}))
    assert again.id == "a1" and store.get("a1").answer == "Priya." and store.count(ACTIVE) == 1
    assert store.update("nope", answer="x") is None and store.by_message("GPRIV", "2.0").id == "a1"
