"""Fixes from review, each through the fake Slack or the real pipeline: retries whose first
delivery never arrived, which thread replies get an answer, /ask text as typed, Slack
unreachable, answers without usable [n] markers, and sources that would empty the index."""

from __future__ import annotations

import time

import pytest

from bot.app import SlackSetupError, build_app
from bot.settings import BotSettings
from knowledge.errors import SourceError
from knowledge.pipeline import normalise_markers
from tests.bot_helpers import final_answers, outcomes, start_bot  # noqa: F401  (fixtures)

QUESTION = "How does Milvus store data?"


def test_a_retry_whose_first_delivery_never_arrived_is_answered(make_kb, fake_slack, start_bot, outcomes):
    start_bot(make_kb(abstain_threshold=0.0))
    mention = fake_slack.mention(QUESTION, channel="CR1")
    fake_slack.send_event(mention, retry_attempt=1)  # Slack's retry #1 of a delivery lost in a restart
    assert [r.outcome for r in outcomes.wait(1)] == ["answered"]
    assert len(final_answers(fake_slack, "CR1", mention["ts"])) == 1


def test_thread_replies_answered_only_when_they_are_questions_for_the_bot(
        make_kb, fake_openai, fake_slack, start_bot, outcomes):
    start_bot(make_kb(abstain_threshold=0.0))
    mention = fake_slack.mention(QUESTION, channel="CR2")
    fake_slack.send_event(mention)
    outcomes.wait(1)
    quiet = [
        "I restarted the pod and now it is fine",
        "<@U777> can you double-check this on staging?",
        "<!subteam^S123> how do we handle this one?",
        "Let me ask the infra team",
    ]
    for text in quiet:
        fake_slack.send_event(fake_slack.message_event(text, channel="CR2", thread_ts=mention["ts"]))
    fake_slack.send_event(fake_slack.message_event("and what about etcd", channel="CR2", thread_ts=mention["ts"]))
    assert [r.outcome for r in outcomes.wait(2)] == ["answered", "answered"]
    time.sleep(0.5)
    assert len(outcomes.records) == 2  # none of the remarks or messages to colleagues was answered
    assert len(final_answers(fake_slack, "CR2", mention["ts"])) == 2


def test_ask_command_reads_slack_escaped_text_as_typed(make_kb, fake_openai, fake_slack, start_bot):
    start_bot(make_kb(abstain_threshold=0.0))
    payload = fake_slack.command_payload("/ask", "what does a &lt; b &amp;&amp; c mean for milvus?", channel="CR3")
    fake_slack.send_command(payload)
    fake_slack.wait_for("response_url", where=lambda c: c.params.get("blocks"))
    asked = fake_openai.requests[-1]["messages"][-1]["content"]
    assert "what does a < b && c mean for milvus?" in asked and "&lt;" not in asked


def test_unreachable_slack_is_a_one_line_setup_error(tmp_path):
    settings = BotSettings(_env_file=None, slack_bot_token="xoxb-test", slack_app_token="xapp-test",
                           slack_api_url="http://127.0.0.1:9/api/", feedback_db=tmp_path / "f.sqlite")
    with pytest.raises(SlackSetupError, match=r"cannot reach Slack at http://127\.0\.0\.1:9/api/"):
        build_app(settings, kb=None)


def test_slack_unreachable_at_intake_keeps_no_one_locked_out(make_kb, fake_slack, start_bot, outcomes):
    bot = start_bot(make_kb(abstain_threshold=0.0), user_max_concurrent=1)
    responder = bot.services.responder
    working = responder._client, responder._event_client, responder._answer_client
    from slack_sdk import WebClient

    # All of the responder's clients: the shared one, the placeholder's and the one answers are posted with.
    responder._client = responder._event_client = responder._answer_client = WebClient(
        token="xoxb-test", base_url="http://127.0.0.1:9/api/", timeout=2)
    first = fake_slack.mention(QUESTION, channel="CR4")
    fake_slack.send_event(first)
    assert [r.outcome for r in outcomes.wait(1)][-1] in {"error", "failed"}
    responder._client, responder._event_client, responder._answer_client = working
    second = fake_slack.mention(QUESTION, channel="CR4")
    fake_slack.send_event(second)
    assert outcomes.wait(2)[-1].outcome == "answered"  # the person's slot was given back


@pytest.mark.parametrize("text, expected", [
    ("Use X【1】。", "Use X[1]。"),
    ("Use X［2］", "Use X[2]"),
    ("See [4].", "See."),
    ("See [7] and [2][3].", "See and [2][3]."),
    ("[9] First", " First"),
    ("A [1, 5] b [2-3] c [1-9]", "A [1] b [2-3] c"),
    ("Metadata in etcd [1][0][-1].", "Metadata in etcd [1]."),
    ("No markers", "No markers"),
])
def test_markers_are_normalised_to_listed_sources(text, expected):
    assert normalise_markers(text, 3) == expected


def test_an_answer_without_markers_still_lists_its_sources(make_kb, fake_openai):
    kb = make_kb(abstain_threshold=0.0)
    fake_openai.reply("Milvus keeps inserted data in object storage.")
    answer = kb.ask(QUESTION)
    assert answer.status == "answered"
    assert [c.number for c in answer.citations] == [1, 2, 3]
    fake_openai.reply("Data goes to object storage【2】.")
    answer = kb.ask("Where is data stored?")
    assert answer.text == "Data goes to object storage[2]." and [c.number for c in answer.citations] == [2]


def test_sources_without_text_leave_the_index_as_it_was(make_kb, small_corpus):
    kb = make_kb()
    before = kb.status()["chunks"]
    for path in small_corpus.rglob("*.md"):
        path.write_text("---\ntitle: emptied\n---\n")
    with pytest.raises(SourceError, match="no text to index"):
        kb.refresh()
    assert kb.status()["chunks"] == before
    assert kb.ask(QUESTION).candidates


def test_a_retry_answered_before_a_restart_is_not_answered_again(
        make_kb, fake_slack, start_bot, outcomes, tmp_path):
    kb = make_kb(abstain_threshold=0.0)
    feedback_db = tmp_path / "kept-across-restarts.sqlite"
    first_bot = start_bot(kb, feedback_db=feedback_db)
    mention = fake_slack.mention(QUESTION, channel="CR5")
    fake_slack.send_event(mention, event_id="EvRESTART1")
    outcomes.wait(1)
    first_bot.services.stop_taking_questions()  # "restarted": only the database remembers
    start_bot(kb, feedback_db=feedback_db)
    fake_slack.send_event(mention, event_id="EvRESTART1", retry_attempt=1)
    time.sleep(1.0)
    assert len(outcomes.records) == 1
    assert len(final_answers(fake_slack, "CR5", mention["ts"])) == 1
