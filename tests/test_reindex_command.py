"""`/reindex` through the real Bolt app over Socket Mode against the local fake Slack."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from slack_bolt import Respond
from slack_sdk import WebClient

from bot.admins import AdminCache, is_admin, parse_user_ids
from bot.app import build_app
from bot.listeners.commands.reindex import NOT_AVAILABLE, REFUSAL, USAGE, PrivateReply
from bot.refresher import Refresher
from bot.server import EVENTS_PATH, http_server, serve_in_thread, socket_mode_handler
from bot.settings import BotSettings
from tests.fixtures.slack_fake import FakeSlack

ADMIN = "UADMIN"
PERSON = "U0002"
BOSS = "UBOSS"  # a workspace admin according to users.info
NEW_SECTION = (
    "\n\n## What is the quokkabyte retention window?\n\n"
    "The quokkabyte retention window keeps deleted segments for 17 days before compaction "
    "removes them for good.\n"
)


class WorkspaceSlack(FakeSlack):
    """The fake Slack, with users.info reporting workspace admins and owners."""

    def __init__(self, *, admins: set[str] = frozenset(), owners: set[str] = frozenset()) -> None:
        super().__init__()
        self.admins, self.owners = set(admins), set(owners)

    def _api_users_info(self, params: dict) -> dict:
        answer = super()._api_users_info(params)
        user = params.get("user", "")
        answer["user"].update(is_admin=user in self.admins, is_owner=user in self.owners)
        return answer


@pytest.fixture
def slack():
    fake = WorkspaceSlack(admins={BOSS})
    yield fake
    fake.close()


@pytest.fixture
def start_bot(slack, make_kb, tmp_path):
    """start_bot(kb, refresher=True, **settings) -> (bot, refresher): connected over Socket Mode."""
    running = []

    def start(kb, *, refresher: bool = True, **overrides):
        settings = BotSettings(
            _env_file=None,
            slack_bot_token=slack.bot_token,
            slack_app_token=slack.app_token,
            slack_api_url=slack.api_url,
            feedback_db=tmp_path / f"feedback{len(running)}.sqlite",
            **overrides,
        )
        bot = build_app(settings, kb)
        made = Refresher(kb=kb, schedule="never", progress_after=()) if refresher else None
        if made is not None:
            bot.services.refresher = made  # as bot.server.serve does
        handler = socket_mode_handler(bot, settings)
        handler.connect()
        slack.wait_connected()
        running.append((bot, handler, made))
        return bot, made

    yield start
    for bot, handler, made in running:
        if made is not None:
            made.shutdown(timeout=20)
        handler.close()
        bot.close()


def command(slack: FakeSlack, text: str = "", *, user: str = ADMIN) -> None:
    envelope = slack.send_command(slack.command_payload("/reindex", text, user=user))
    slack.wait_ack(envelope, timeout=5)  # acknowledged at once, before any work


def replies(slack: FakeSlack, count: int, timeout: float = 30.0) -> list[dict]:
    calls = slack.wait_for("response_url", count, timeout=timeout)
    return [call.params for call in calls]


def texts_of(answer) -> list[str]:
    return [c.chunk.text for c in answer.candidates]


def test_admin_reindex_picks_up_an_edited_document(slack, start_bot, make_kb, small_corpus: Path) -> None:
    kb = make_kb(sources=small_corpus)
    question = "What is the quokkabyte retention window?"
    assert not any("quokkabyte" in text for text in texts_of(kb.ask(question)))
    start_bot(kb, admin_user_ids=f"{ADMIN}, UOTHER")
    faq = small_corpus / "faq" / "product_faq.md"
    faq.write_text(faq.read_text() + NEW_SECTION)

    command(slack, "")
    started, done = replies(slack, 2)
    assert started["text"].startswith("Refresh started (incremental refresh)")
    assert started["response_type"] == done["response_type"] == "ephemeral"
    assert done["text"].startswith("Index refreshed in") and "1 added" in done["text"]
    assert "17 days" in " ".join(texts_of(kb.ask(question)))
    assert not slack.calls("chat.postMessage")  # nothing public
    assert not slack.calls("users.info")  # ADMIN_USER_IDS decides on its own


def test_full_rebuild_and_status(slack, start_bot, make_kb) -> None:
    kb = make_kb()
    chunks = kb.status()["chunks"]
    _, refresher = start_bot(kb, admin_user_ids=ADMIN)
    command(slack, "FULL")
    started, done = replies(slack, 2)
    assert started["text"].startswith("Refresh started (full rebuild)")
    assert done["text"].startswith("Index rebuilt in") and f"{chunks} updated" in done["text"]

    command(slack, "status")
    status = replies(slack, 3)[2]["text"]
    assert status == refresher.format_status()
    assert status.startswith("*Index status*") and f"Chunks: {chunks:,}" in status
    assert f"by <@{ADMIN}>. Index rebuilt in" in status


def test_a_second_reindex_while_one_runs_is_told_since_when_and_runs_after_it(slack, start_bot, make_kb) -> None:
    kb = make_kb()
    start_bot(kb, admin_user_ids=f"{ADMIN},UOTHER")
    command(slack, "full")
    command(slack, "", user="UOTHER")
    texts = [r["text"] for r in replies(slack, 4)]
    assert sum(t.startswith("Refresh started") for t in texts) == 1
    busy = [t for t in texts if t.startswith("A refresh is already running since")]
    assert len(busy) == 1 and re.search(r"\(started by <@(UADMIN|UOTHER)>\)\. Your (full rebuild|incremental "
                                        r"refresh) starts as soon as it ends; I'll post the summary here\.$", busy[0])
    # Both ran, one after the other: each admin hears the summary of their own.
    assert sum(t.startswith("Index rebuilt in") for t in texts) == 1
    assert sum(t.startswith("Index refreshed in") for t in texts) == 1


def test_non_admin_is_refused_politely_and_nothing_runs(slack, start_bot, make_kb) -> None:
    kb = make_kb(refresh=False)
    _, refresher = start_bot(kb, admin_user_ids=ADMIN)
    for text in ("", "full", "status"):
        command(slack, text, user=PERSON)
    answers = replies(slack, 3)
    assert all(a["text"] == REFUSAL and a["response_type"] == "ephemeral" for a in answers)
    time.sleep(0.3)
    assert refresher.status()["last_run"] is None and not refresher.status()["running"]
    assert not slack.calls("users.info")


def test_workspace_admins_via_users_info_are_cached(slack, start_bot, make_kb) -> None:
    kb = make_kb()
    start_bot(kb)  # ADMIN_USER_IDS empty, ADMINS_FROM_SLACK default true
    command(slack, "status", user=BOSS)
    assert replies(slack, 1)[0]["text"].startswith("*Index status*")
    command(slack, "help", user=BOSS)
    assert replies(slack, 2)[1]["text"] == USAGE
    command(slack, "status", user=PERSON)
    assert replies(slack, 3)[2]["text"] == REFUSAL
    asked = [call.params["user"] for call in slack.calls("users.info")]
    assert asked == [BOSS, PERSON]  # BOSS's second command used the cached answer


def test_slack_admins_are_ignored_when_turned_off(slack, start_bot, make_kb) -> None:
    start_bot(make_kb(refresh=False), admins_from_slack=False)
    command(slack, "status", user=BOSS)
    assert replies(slack, 1)[0]["text"] == REFUSAL
    assert not slack.calls("users.info")


def test_without_a_refresher_the_command_says_so(slack, start_bot, make_kb) -> None:
    start_bot(make_kb(refresh=False), refresher=False, admin_user_ids=ADMIN)
    command(slack, "")
    assert replies(slack, 1)[0]["text"] == NOT_AVAILABLE


def test_reindex_status_over_the_http_events_api(slack, make_kb, tmp_path) -> None:
    kb = make_kb()
    settings = BotSettings(
        _env_file=None, slack_bot_token=slack.bot_token, slack_signing_secret=slack.signing_secret,
        slack_api_url=slack.api_url, feedback_db=tmp_path / "feedback.sqlite", admin_user_ids=ADMIN,
    )
    bot = build_app(settings, kb)
    bot.services.refresher = refresher = Refresher(kb=kb, schedule="every 6h")
    refresher.start()
    server = http_server(bot, settings, host="127.0.0.1", port=0)
    serve_in_thread(server)
    try:
        url = f"http://127.0.0.1:{server.effective_port}{EVENTS_PATH}"
        assert slack.send_command(slack.command_payload("/reindex", "status", user=ADMIN), via="http", url=url) == 200
        status = replies(slack, 1)[0]["text"]
        assert status.startswith("*Index status*") and "Next scheduled refresh:" in status and "`every 6h`" in status
        # A forged request (wrong signature) is rejected before any listener runs.
        body = "command=%2Freindex&text=full&user_id=UADMIN"
        assert slack.post_signed(url, body.encode(), "application/x-www-form-urlencoded", secret="wrong")[0] == 401
        time.sleep(0.3)
        assert len(slack.calls("response_url")) == 1 and refresher.status()["last_run"] is None
    finally:
        server.close()
        refresher.shutdown()
        bot.close()


# ---- pieces -------------------------------------------------------------------------------

def test_admin_ids_parse_and_lookup_failures_mean_no(slack) -> None:
    assert parse_user_ids(" U1,u2  <@U3> ;W4 ") == {"U1", "U2", "U3", "W4"}
    assert parse_user_ids("") == frozenset()
    client = WebClient(token=slack.bot_token, base_url=slack.api_url)
    listed = BotSettings(_env_file=None, admin_user_ids="U1")
    assert is_admin("U1", settings=listed, client=client) and not is_admin(BOSS, settings=listed, client=client)
    assert not is_admin("", settings=listed, client=client)
    open_settings = BotSettings(_env_file=None)
    slack.fail_next("users.info", status=200, error="missing_scope", retry_after=None)
    cache = AdminCache(ttl=60)
    assert not is_admin(BOSS, settings=open_settings, client=client, cache=cache)  # failure: no, not cached
    assert is_admin(BOSS, settings=open_settings, client=client, cache=cache)
    slack.owners.add(PERSON)
    assert is_admin(PERSON, settings=open_settings, client=client, cache=cache)
    # BotSettings' own defaults: no list, so Slack's admins count.
    assert is_admin(BOSS, settings=BotSettings(_env_file=None), client=client)


def test_private_reply_falls_back_to_a_direct_message(slack) -> None:
    client = WebClient(token=slack.bot_token, base_url=slack.api_url)
    respond = Respond(response_url=slack.api_url + "response_url")
    reply = PrivateReply(respond=respond, client=client, user_id=ADMIN)
    reply("first")
    slack.fail_next("response_url", status=404, error="expired_url", retry_after=None)
    reply("second")
    assert [c.params["text"] for c in slack.calls("response_url")] == ["first", "second"]
    posted = slack.calls("chat.postMessage")
    assert [(c.params["channel"], c.params["text"]) for c in posted] == [(ADMIN, "second")]

    # Slack takes five messages per response_url: the sixth goes by direct message.
    fresh = PrivateReply(respond=respond, client=client, user_id=ADMIN)
    for number in range(6):
        fresh(f"note {number}")
    assert [c.params["text"] for c in slack.calls("chat.postMessage")][-1] == "note 5"
    assert len(slack.calls("response_url")) == 2 + 5

    # After 25 minutes the response_url is not tried at all.
    now = [0.0]
    late = PrivateReply(respond=respond, client=client, user_id=ADMIN, clock=lambda: now[0])
    now[0] = 26 * 60
    late("late")
    assert len(slack.calls("response_url")) == 7
    assert slack.calls("chat.postMessage")[-1].params["text"] == "late"
