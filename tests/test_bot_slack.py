"""End to end: the real Bolt app over a fake Slack (Socket Mode and signed HTTP) and a real
KnowledgeBase (tiny models, Milvus Lite, fake OpenAI)."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request

import pytest

from bot.app import build_app
from bot.blocks import BLOCK_LIMIT, FEEDBACK_DOWN, FEEDBACK_UP, SECTION_LIMIT
from bot.responder import ASSISTANT_STATUS, BUSY_TEXT
from bot.server import EVENTS_PATH, http_server, serve_in_thread, socket_mode_handler
from bot.settings import BotSettings
from tests.fixtures.slack_fake import BOT_USER_ID

pytestmark = pytest.mark.timeout(120)

QUESTION = "How does Milvus store data?"


class RunningBot:
    def __init__(self, bot, settings, *, url: str = ""):
        self.bot = bot
        self.settings = settings
        self.url = url

    @property
    def records(self):
        return self.bot.services.records


@pytest.fixture
def start_bot(fake_slack, tmp_path):
    """start_bot(kb, mode="socket"|"http", **BotSettings overrides) -> RunningBot (stopped at teardown)."""
    cleanups = []

    def start(kb, *, mode: str = "socket", **overrides) -> RunningBot:
        values = dict(
            slack_bot_token=fake_slack.bot_token,
            slack_api_url=fake_slack.api_url,
            feedback_db=tmp_path / f"feedback{len(cleanups)}.sqlite",
            stream_update_interval=0.2,
            user_rate_per_minute=0,  # per-person limits off unless a test turns them on
            user_max_concurrent=0,
        )
        if mode == "socket":
            values["slack_app_token"] = fake_slack.app_token
        else:
            values["slack_signing_secret"] = fake_slack.signing_secret
        values.update(overrides)
        settings = BotSettings(_env_file=None, **values)
        bot = build_app(settings, kb)
        cleanups.append(bot.close)
        if mode == "socket":
            handler = socket_mode_handler(bot, settings)
            handler.connect()
            cleanups.append(handler.close)
            fake_slack.wait_connected()
            return RunningBot(bot, settings)
        server = http_server(bot, settings, host="127.0.0.1", port=0)
        serve_in_thread(server)
        cleanups.append(server.close)
        return RunningBot(bot, settings, url=f"http://127.0.0.1:{server.effective_port}{EVENTS_PATH}")

    yield start
    for cleanup in reversed(cleanups):
        cleanup()


def _in_thread(channel, thread_ts):
    return lambda call: call.params.get("channel") == channel and call.params.get("thread_ts") == thread_ts


def _final(fake, channel, *, count=1, timeout=30):
    """The final answers: chat.update / chat.postMessage calls that carry blocks."""
    def has_blocks(call):
        return call.params.get("channel") == channel and call.params.get("blocks")
    deadline = time.monotonic() + timeout
    while True:
        found = [c for m in ("chat.update", "chat.postMessage") for c in fake.calls(m) if has_blocks(c)]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"no final answer in {channel}"
            return sorted(found, key=lambda c: c.at)
        time.sleep(0.02)


def _wait_idle(running):
    """The worker is free again. Its reply is on screen before its job ends (records, claim, slot):
    with one worker and no queue, a question sent on seeing the reply could otherwise be "busy"."""
    assert running.bot.services.pool.wait_idle(30), "the previous answer's job is still running"


def _blocks(call):
    blocks = call.params["blocks"]
    return json.loads(blocks) if isinstance(blocks, str) else blocks


def _section_texts(call):
    return [b["text"]["text"] for b in _blocks(call) if b["type"] == "section"]


def _record_id(call):
    [actions] = [b for b in _blocks(call) if b["type"] == "actions"]
    return actions["elements"][0]["value"]


def test_channel_mention_follow_up_retry_feedback_dm_and_assistant(make_kb, fake_openai, fake_slack, start_bot,
                                                                   record_property):
    kb = make_kb(abstain_threshold=0.0)
    fake_openai.default_text = "Milvus keeps **data** in object storage [1] and metadata in etcd [2]."
    running = start_bot(kb)

    # A mention in a channel: placeholder at once, then the answer in the thread under the question.
    sent = time.monotonic()
    mention = fake_slack.mention(QUESTION, channel="C1")
    event_id = "EvMENTION1"
    envelope = fake_slack.send_event(mention, event_id=event_id)
    assert fake_slack.wait_ack(envelope)
    placeholders = fake_slack.wait_for("chat.postMessage", where=_in_thread("C1", mention["ts"]))
    assert placeholders[-1].params["text"] == running.settings.placeholder_text
    final = _final(fake_slack, "C1")[0]
    first_visible, answered = placeholders[-1].at - sent, final.at - sent
    record_property("mention_first_visible_s", round(first_visible, 3))
    record_property("mention_answer_s", round(answered, 3))
    print(f"\nmention: placeholder after {first_visible:.3f}s, answer after {answered:.3f}s")
    assert first_visible < 2.0
    body, sources = _section_texts(final)
    assert body == "Milvus keeps *data* in object storage [1] and metadata in etcd [2]."
    source_numbers = [line.split("]")[0] + "]" for line in sources.splitlines()[1:]]
    assert source_numbers == ["[1]", "[2]"]  # the markers' numbers, in order
    assert all(line.split("] ", 1)[1].startswith("<https://docs.example/") for line in sources.splitlines()[1:])

    # Slack retries the same event: acknowledged, never answered again.
    retry = fake_slack.send_event(mention, event_id=event_id, retry_attempt=1)
    assert fake_slack.wait_ack(retry)
    same_id = fake_slack.send_event(mention, event_id=event_id)
    assert fake_slack.wait_ack(same_id)

    # A follow-up in the thread, no mention: history from conversations.replies reaches the model.
    requests_before = len(fake_openai.requests)
    follow_up = fake_slack.message_event("And how is it backed up?", channel="C1", thread_ts=mention["ts"])
    sent = time.monotonic()
    fake_slack.send_event(follow_up)
    fake_slack.wait_for("conversations.replies", where=lambda c: c.params.get("ts") == mention["ts"])
    follow_up_answer = _final(fake_slack, "C1", count=2)[-1]
    record_property("follow_up_answer_s", round(follow_up_answer.at - sent, 3))
    print(f"follow-up: answer after {follow_up_answer.at - sent:.3f}s")
    later = json.dumps(fake_openai.requests[requests_before:])
    assert QUESTION in later and "object storage" in later  # the earlier user and assistant turns
    assert len(fake_slack.wait_for("chat.postMessage", where=_in_thread("C1", mention["ts"]))) == 2

    # The same follow-up as an app_mention too (Slack sends both): answered once.
    fake_slack.send_event({**follow_up, "type": "app_mention"})
    time.sleep(0.5)
    assert len(_final(fake_slack, "C1")) == 2

    # Edits, deletions and other bots are ignored.
    fake_slack.send_event(fake_slack.message_event("edited", channel="C1", thread_ts=mention["ts"],
                                                   subtype="message_changed"))
    fake_slack.send_event(fake_slack.message_event("beep", channel="D9", channel_type="im", bot_id="BOTHER"))
    time.sleep(0.5)
    assert not fake_slack.calls("chat.postMessage") or all(
        c.params.get("channel") != "D9" for c in fake_slack.calls("chat.postMessage"))
    assert len(fake_slack.calls("chat.postMessage")) == 2

    # 👍 on the first answer is recorded in SQLite and thanked privately.
    record_id = _record_id(final)
    fake_slack.send_action(fake_slack.action_payload(FEEDBACK_UP, record_id, channel="C1", message_ts=final.params["ts"]))
    fake_slack.wait_for("chat.postEphemeral")
    [feedback] = running.records.recent_feedback(5)
    assert (feedback.value, feedback.question, feedback.thread_ts) == (1, QUESTION, mention["ts"])

    # A direct message: every message is a question (Slack rate-limits the first post: retried).
    fake_slack.fail_next("chat.postMessage", status=429, retry_after=1)
    dm = fake_slack.message_event("What is Milvus?", channel="D1", channel_type="im")
    fake_slack.send_event(dm)
    assert len(fake_slack.wait_for("chat.postMessage", 2, where=_in_thread("D1", dm["ts"]))) == 2
    assert _final(fake_slack, "D1")

    # The assistant pane: suggested prompts when a thread starts, status while working.
    thread_ts = fake_slack.next_ts()
    fake_slack.send_event({"type": "assistant_thread_started", "event_ts": thread_ts, "assistant_thread": {
        "user_id": "U1", "channel_id": "D2", "thread_ts": thread_ts, "context": {}}})
    [prompts] = fake_slack.wait_for("assistant.threads.setSuggestedPrompts")
    assert [p["message"] for p in prompts.params["prompts"]] == list(running.settings.suggested_prompts)
    question = fake_slack.message_event(QUESTION, channel="D2", channel_type="im", thread_ts=thread_ts)
    fake_slack.send_event(question)
    [status] = fake_slack.wait_for("assistant.threads.setStatus")
    assert (status.params["channel_id"], status.params["thread_ts"], status.params["status"]) == (
        "D2", thread_ts, ASSISTANT_STATUS)
    answer = _final(fake_slack, "D2")[0]
    assert answer.params.get("thread_ts", thread_ts) == thread_ts
    assert running.records.totals()["answers"] == 4


def test_busy_failures_and_long_answers(make_kb, fake_openai, fake_slack, start_bot):
    kb = make_kb(abstain_threshold=0.0)
    running = start_bot(kb, bot_workers=1, bot_queue_size=0)

    # One worker, no queue: while the model is slow, the next question gets a "busy" reply, not silence.
    fake_openai.hang(4.0)  # wide enough for a loaded CI machine
    asked = len(fake_openai.requests)
    first = fake_slack.mention(QUESTION, channel="C2")
    fake_slack.send_event(first)
    fake_slack.wait_for("chat.postMessage", where=_in_thread("C2", first["ts"]))
    fake_openai.wait_for_requests(asked + 1)  # the one worker is inside the slow model call
    second = fake_slack.mention("What is a partition?", channel="C2")
    fake_slack.send_event(second)
    [busy] = fake_slack.wait_for("chat.update", where=lambda c: c.params.get("text") == BUSY_TEXT)
    [busy_thread] = [m for m in fake_slack.messages("C2") if m["ts"] == busy.params["ts"]]
    assert busy_thread["thread_ts"] == second["ts"]  # the placeholder under the 2nd question says "busy"
    [answer] = _final(fake_slack, "C2")  # the first still gets its answer
    assert [m for m in fake_slack.messages("C2") if m["ts"] == answer.params["ts"]][0]["thread_ts"] == first["ts"]

    _wait_idle(running)
    # The model fails: the retrieved passages are shown with the knowledge layer's note.
    fake_openai.fail(500, times=2)  # the first try and the one retry (openai_max_retries=1)
    failing = fake_slack.mention(QUESTION, channel="C3")
    fake_slack.send_event(failing)
    final = _final(fake_slack, "C3")[0]
    context = [b for b in _blocks(final) if b["type"] == "context"]
    assert context and context[0]["elements"][0]["text"]
    assert running.records.recent_answers(1)[0].status == "retrieval_only"

    _wait_idle(running)
    # A bare mention: one line on how to ask, no placeholder, no lookup.
    empty = fake_slack.mention("", channel="C4")
    fake_slack.send_event(empty)
    [reply] = fake_slack.wait_for("chat.postMessage", where=lambda c: c.params.get("channel") == "C4")
    assert reply.params["text"].startswith("👋 I answer questions from the docs")
    assert not [c for c in fake_slack.calls("chat.update") if c.params.get("channel") == "C4"]

    _wait_idle(running)
    # A very long answer: split within Slack's limits, sources and buttons at the end.
    fake_openai.reply("\n\n".join(f"Paragraph {i} [1]: " + "lorem ipsum " * 250 for i in range(60)))
    long_q = fake_slack.mention(QUESTION, channel="C5")
    fake_slack.send_event(long_q)
    # ~190,000 characters streamed, converted and posted: 5-8 s on an idle 2-core machine, so a wide deadline.
    fake_slack.wait_for("chat.postMessage", timeout=60, where=lambda c: c.params.get("channel") == "C5" and any(
        b["type"] == "actions" for b in (_blocks(c) if c.params.get("blocks") else [])))  # the last part
    parts = _final(fake_slack, "C5", count=2)
    assert len(parts) == 20  # ~190,000 characters, at most MESSAGE_TEXT_LIMIT (10,000) of block text a message
    for part in parts:
        assert len(_blocks(part)) <= BLOCK_LIMIT
        assert all(len(t) <= SECTION_LIMIT for t in _section_texts(part))
    assert _blocks(parts[-1])[-1]["type"] == "actions"
    assert _section_texts(parts[-1])[-1].startswith("*Sources*\n[1] <https://docs.example/")


class _Broken:
    """A KnowledgeBase whose retrieval blows up unexpectedly (a bug, a dead disk)."""

    def ask(self, question, **kwargs):
        raise RuntimeError("index file vanished: /secret/path")


def test_unexpected_failure_apologises_with_error_id(fake_slack, start_bot, caplog):
    start_bot(_Broken())
    event = fake_slack.mention(QUESTION, channel="C6")
    fake_slack.send_event(event)
    [reply] = fake_slack.wait_for("chat.update", where=lambda c: c.params.get("channel") == "C6")
    text = reply.params["text"]
    assert text.startswith("Sorry, something went wrong") and "error id: `" in text
    assert "secret" not in text and "vanished" not in text
    error_id = text.split("`")[1]
    assert len(error_id) == 8
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)


def test_an_apology_replaces_an_answer_that_could_not_be_posted_whole(make_kb, fake_openai, fake_slack, start_bot):
    """The first part of a long answer went into the placeholder, the next post failed: the apology
    takes the placeholder's place whole (Slack keeps a message's blocks unless told otherwise)."""
    running = start_bot(make_kb())
    fake_openai.reply("\n\n".join(f"Paragraph {i} [1]: " + "lorem ipsum " * 250 for i in range(60)))
    question = fake_slack.mention(QUESTION, channel="C7")
    fake_slack.send_event(question)
    fake_slack.wait_for("chat.postMessage", where=lambda c: c.params.get("channel") == "C7")  # the placeholder
    fake_slack.fail_next("chat.postMessage", status=200, error="internal_error", retry_after=None)
    _final(fake_slack, "C7", timeout=60)  # the first part, in the placeholder
    fake_slack.wait_for("chat.update", timeout=60, where=lambda c: c.params.get("channel") == "C7"
                        and c.params.get("text", "").startswith("Sorry, something went wrong"))
    assert running.bot.services.pool.wait_idle(30)
    shown = next(m for m in fake_slack.messages("C7") if m.get("user") == BOT_USER_ID)  # the placeholder
    assert shown["text"].startswith("Sorry, something went wrong") and not shown.get("blocks")


def test_slack_oauth_settings_in_the_environment_do_not_take_the_bot_over(make_kb, fake_slack, start_bot,
                                                                           monkeypatch, caplog):
    """Bolt switches to its OAuth installation store when both are set (compose passes .env through)
    and then answers nothing; the bot serves its one workspace anyway, and says it ignores them."""
    monkeypatch.setenv("SLACK_CLIENT_ID", "1234.5678")
    monkeypatch.setenv("SLACK_CLIENT_SECRET", "not-used")
    monkeypatch.setenv("SLACK_BOT_TOKEN", fake_slack.bot_token)
    caplog.set_level(logging.INFO)
    start_bot(make_kb())
    fake_slack.send_event(fake_slack.mention(QUESTION, channel="C11"))
    _final(fake_slack, "C11")
    assert os.environ["SLACK_CLIENT_ID"] == "1234.5678"  # given back once the app is made
    assert any("SLACK_CLIENT_ID and SLACK_CLIENT_SECRET are not used" in r.getMessage() for r in caplog.records)
    assert not any("token will be unused" in r.getMessage() for r in caplog.records)


def test_http_mode_signatures(make_kb, fake_slack, start_bot):
    kb = make_kb(abstain_threshold=0.0)
    running = start_bot(kb, mode="http")
    event = fake_slack.mention(QUESTION, channel="C7")
    body = json.dumps(fake_slack.event_body(event)).encode()

    bad = fake_slack.post_signed(running.url, body, "application/json", secret="wrong-secret")
    stale = fake_slack.post_signed(running.url, body, "application/json", timestamp=int(time.time()) - 600)
    assert (bad[0], stale[0]) == (401, 401)
    time.sleep(0.3)
    assert not fake_slack.calls("chat.postMessage")

    sent = time.monotonic()
    assert fake_slack.send_event(event, via="http", url=running.url) == 200
    ack_time = time.monotonic() - sent
    final = _final(fake_slack, "C7")[0]
    assert ack_time < 1.0  # acknowledged before the answer is worked out
    assert fake_slack.send_event(event, via="http", url=running.url, retry_attempt=1) == 200
    status = fake_slack.send_action(fake_slack.action_payload(FEEDBACK_DOWN, _record_id(final), channel="C7"),
                                    via="http", url=running.url)
    assert status == 200
    fake_slack.wait_for("chat.postEphemeral")
    assert running.records.totals()["not_helpful"] == 1
    assert len(_final(fake_slack, "C7")) == 1
    assert fake_slack.calls("auth.test")[0].headers["authorization"] == f"Bearer {fake_slack.bot_token}"



def test_http_mode_acknowledges_slacks_rate_limit_notice(make_kb, fake_slack, start_bot, caplog):
    """Slack posts app_rate_limited to the Request URL when it holds events back: a 200 and a warning."""
    running = start_bot(make_kb(), mode="http")
    body = json.dumps({"token": "legacy", "type": "app_rate_limited", "team_id": "T0001",
                       "minute_rate_limited": 1518467820, "api_app_id": "A0001"}).encode()
    assert fake_slack.post_signed(running.url, body, "application/json")[0] == 200
    assert any("holding back this app's events" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


def test_http_mode_refuses_junk_in_a_line_and_never_answers_500(make_kb, fake_slack, start_bot, caplog):
    """Anyone who can reach the URL may send anything: unsigned junk gets a 401 unread, an oversized
    body a 413 unread, a signed body Bolt cannot read a 400; none logs a traceback or the body."""
    running = start_bot(make_kb(), mode="http")
    caplog.set_level(logging.INFO)

    def unsigned(body: bytes, content_type: str = "application/json", **headers) -> int:
        request = urllib.request.Request(running.url, data=body, method="POST",
                                         headers={"Content-Type": content_type, **headers})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    marker = b"JUNK-MARKER-" * 10
    for body, content_type, headers in [
        (b'{"type": ' + marker, "application/json", {}),
        (b"payload=%7Bnot" + marker, "application/x-www-form-urlencoded", {}),
        (b"\xff\xfe" + marker, "application/json", {}),
        (b"[1, 2, 3]", "application/json", {"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=00"}),
    ]:
        assert unsigned(body, content_type, **headers) == 401, body
    assert unsigned(b"ssl_check=1&token=legacy", "application/x-www-form-urlencoded") == 200  # Slack's TLS check
    huge = b'{"type": "event_callback", "event": {"text": "' + b"x" * (2 << 20) + b'"}}'
    try:
        refused = fake_slack.post_signed(running.url, huge, "application/json")[0]
    except urllib.error.URLError:  # waitress answers 413 and closes while the client is still sending
        refused = 413
    assert refused == 413
    for body, content_type in [
        (b'{"type": ' + marker, "application/json"),
        (b"payload=%7Bnot" + marker, "application/x-www-form-urlencoded"),
        (b"[1, 2, 3]", "application/json"),
    ]:
        assert fake_slack.post_signed(running.url, body, content_type)[0] == 400, body
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "JUNK-MARKER" not in logged and "xxxxxxxxxx" not in logged
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    # Still serving.
    assert fake_slack.send_event(fake_slack.mention(QUESTION, channel="C8"), via="http", url=running.url) == 200
    _final(fake_slack, "C8")


def test_a_changed_assistant_context_leaves_the_bots_reply_alone(fake_slack, start_bot):
    """Bolt's default handler would chat.update the bot's first reply (and read it with
    conversations.replies) to keep the channel the person is viewing: the bot does not use it."""
    start_bot(_Slow())
    thread_ts = fake_slack.next_ts()
    fake_slack.add_message("D3", text="Ask me about the docs", user=BOT_USER_ID, thread_ts=thread_ts)
    before = {m: len(fake_slack.calls(m)) for m in ("chat.update", "conversations.replies")}
    fake_slack.wait_ack(fake_slack.send_event({
        "type": "assistant_thread_context_changed", "event_ts": fake_slack.next_ts(), "assistant_thread": {
            "user_id": "U1", "channel_id": "D3", "thread_ts": thread_ts,
            "context": {"channel_id": "C9", "team_id": "T0001", "enterprise_id": ""}}}))
    time.sleep(1.0)  # Bolt runs listeners after the ack
    assert {m: len(fake_slack.calls(m)) for m in before} == before


class _Slow:
    """Streams ten deltas over ~1.5 s (10 x `pause`), like a model writing."""

    def __init__(self, pause: float = 0.15) -> None:
        self.pause = pause

    def ask(self, question, *, history=(), source_names=None, on_delta=None):
        from knowledge.types import Answer

        for i in range(10):
            time.sleep(self.pause)
            on_delta(f"part {i} ")
        return Answer(question=question, text="done", status="answered")


def test_streaming_updates_are_throttled(fake_slack, start_bot):
    start_bot(_Slow(), stream_update_interval=0.5)
    event = fake_slack.mention(QUESTION, channel="C8")
    envelope = fake_slack.send_event(event)
    final = _final(fake_slack, "C8")[0]
    # Acknowledged at once, long before the ~1.5 s answer is done.
    assert fake_slack.ack_times[envelope] - fake_slack.sent_times[envelope] < 0.5
    assert fake_slack.ack_times[envelope] < final.at - 1.0
    progress = [c for c in fake_slack.calls("chat.update") if c.params.get("channel") == "C8" and not c.params.get("blocks")]
    assert 2 <= len(progress) <= 4  # ~1.5 s of deltas at most one update per 0.5 s
    assert all(b.at - a.at >= 0.45 for a, b in zip(progress, progress[1:]))
    assert progress[-1].params["text"].endswith(" …") and _section_texts(final) == ["done"]


def test_serve_without_slack_settings_says_what_to_set(tmp_path):
    from bot.app import SlackSetupError
    from bot.server import serve

    with pytest.raises(SlackSetupError, match="SLACK_BOT_TOKEN.*SLACK_APP_TOKEN.*SLACK_SIGNING_SECRET"):
        serve(BotSettings(_env_file=None, slack_bot_token="", slack_app_token="", slack_signing_secret="",
                          feedback_db=tmp_path / "f.sqlite"), kb=None)
    with pytest.raises(SlackSetupError, match="SLACK_APP_TOKEN"):
        serve(BotSettings(_env_file=None, slack_bot_token="xoxb-1", slack_app_token="", slack_signing_secret="",
                          feedback_db=tmp_path / "f.sqlite"), kb=None)


def test_rejected_token_is_a_clear_error(fake_slack, tmp_path):
    from bot.app import SlackSetupError

    fake_slack.fail_next("auth.test", status=200, error="invalid_auth", retry_after=None)
    settings = BotSettings(_env_file=None, slack_bot_token="xoxb-bad", slack_app_token="xapp-1",
                           slack_api_url=fake_slack.api_url, feedback_db=tmp_path / "f.sqlite")
    with pytest.raises(SlackSetupError, match="invalid_auth"):
        build_app(settings, kb=None)


def test_a_persons_next_question_waits_for_their_answer_and_the_one_after_is_refused(fake_slack, start_bot):
    from bot.limits import BUSY_MESSAGE
    from bot.services import WAITING_TEXT

    running = start_bot(_Slow(0.5), user_max_concurrent=1, user_queue_size=1)  # 5 s: the third comes meanwhile
    first = fake_slack.mention(QUESTION, channel="C9", user="U7")
    fake_slack.send_event(first)
    fake_slack.wait_for("chat.postMessage", where=_in_thread("C9", first["ts"]))
    second = fake_slack.mention("Another one?", channel="C9", user="U7")
    fake_slack.send_event(second)
    [waiting] = fake_slack.wait_for("chat.postMessage", where=_in_thread("C9", second["ts"]))
    assert waiting.params["text"] == WAITING_TEXT  # seen, and told why it is not started yet
    third = fake_slack.mention("And a third?", channel="C9", user="U7")
    fake_slack.send_event(third)
    [refusal] = fake_slack.wait_for("chat.postMessage", where=_in_thread("C9", third["ts"]))
    assert refusal.params["text"] == BUSY_MESSAGE.replace("&", "&amp;")  # USER_QUEUE_SIZE=1 is full
    other = fake_slack.mention("Someone else asks", channel="C9", user="U8")
    fake_slack.send_event(other)

    finals = {c.params.get("ts"): c for c in _final(fake_slack, "C9", count=3)}  # U7's two, U8's one

    def placeholder(question):
        [message] = [m for m in fake_slack.messages("C9") if m.get("thread_ts") == question["ts"]]
        return message["ts"]

    # The waiting placeholder became the answer, which started only once U7's first was posted (~5 s).
    assert finals[placeholder(second)].at - finals[placeholder(first)].at >= 4.0

    metrics = running.bot.services.metrics
    expected = ("supportbot_questions_total 4.0", 'supportbot_answers_total{status="answered"} 3.0',
                'supportbot_errors_total{kind="user_busy"} 1.0')
    deadline = time.monotonic() + 5  # counted just after the answer is posted
    while not all(line in metrics.render()[0].decode() for line in expected) and time.monotonic() < deadline:
        time.sleep(0.02)
    text = metrics.render()[0].decode()
    assert all(line in text for line in expected), text


def test_with_no_waiting_a_persons_second_question_is_refused(fake_slack, start_bot):
    from bot.limits import BUSY_MESSAGE

    start_bot(_Slow(), user_max_concurrent=1, user_queue_size=0)
    first = fake_slack.mention(QUESTION, channel="C10", user="U7")
    fake_slack.send_event(first)
    fake_slack.wait_for("chat.postMessage", where=_in_thread("C10", first["ts"]))
    second = fake_slack.mention("Another one?", channel="C10", user="U7")
    fake_slack.send_event(second)
    [refusal] = fake_slack.wait_for("chat.postMessage", where=_in_thread("C10", second["ts"]))
    assert refusal.params["text"] == BUSY_MESSAGE.replace("&", "&amp;")


@pytest.mark.parametrize("mode", ["socket", "http"])
def test_serve_runs_until_stopped(mode, fake_slack, tmp_path, unused_port):
    import threading
    import urllib.request

    from bot.server import serve

    class _KB(_Slow):
        def status(self):
            return {"chunks": 3}

    values = dict(slack_bot_token=fake_slack.bot_token, slack_api_url=fake_slack.api_url, host="127.0.0.1",
                  feedback_db=tmp_path / "f.sqlite", reindex_schedule="never", metrics_port=unused_port())
    if mode == "socket":
        values["slack_app_token"] = fake_slack.app_token
    else:
        values.update(slack_signing_secret=fake_slack.signing_secret, port=unused_port())
    settings = BotSettings(_env_file=None, **values)
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(settings, _KB()), kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics_port}/readyz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "serve() did not come up"
                time.sleep(0.1)
        event = fake_slack.mention(QUESTION, channel="C10")
        if mode == "socket":
            fake_slack.send_event(event)
        else:
            assert fake_slack.send_event(event, via="http", url=f"http://127.0.0.1:{settings.port}{EVENTS_PATH}") == 200
        assert _section_texts(_final(fake_slack, "C10")[0]) == ["done"]
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()


@pytest.fixture
def unused_port():
    import socket

    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    return pick
