"""The bot's small parts: the bounded worker pool, thread history, settings."""

import threading

import pytest

from bot.history import clean_text
from bot.settings import BotSettings
from bot.workers import WorkerPool


def test_pool_refuses_when_full_and_recovers():
    pool = WorkerPool(workers=1, queue_size=1)
    gate = threading.Event()
    running = pool.submit(gate.wait, 5)
    queued = pool.submit(lambda: "queued")
    assert running is not None and queued is not None
    assert pool.submit(lambda: "third") is None  # 1 running + 1 waiting: full
    gate.set()
    assert queued.result(timeout=5) == "queued"
    assert pool.wait_idle(5)
    late = pool.submit(lambda: "again")
    assert late is not None and late.result(timeout=5) == "again"
    pool.shutdown()


def test_pool_releases_slot_after_a_failing_job():
    pool = WorkerPool(workers=1, queue_size=0)
    failed = pool.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failed.result(timeout=5)
    assert pool.wait_idle(5)
    assert pool.submit(lambda: 1).result(timeout=5) == 1
    pool.shutdown()


def test_pool_wait_idle_means_the_next_submit_is_taken():
    # A job's reply (or its future's result) is out before its slot is free again; after
    # wait_idle() the next question is taken (tests/test_bot_slack.py relies on it).
    pool = WorkerPool(workers=1, queue_size=0)
    gate = threading.Event()
    assert pool.submit(gate.wait, 5) is not None
    assert pool.wait_idle(0.05) is False  # a job is running
    gate.set()
    for n in range(100):
        assert pool.wait_idle(5)
        job = pool.submit(lambda n=n: n)
        assert job is not None, f"refused after wait_idle() at job {n}"
        assert job.result(timeout=5) == n
    pool.shutdown()


def test_clean_text():
    text = "<@UBOT> how do I use <https://milvus.io|Milvus> &amp; <@U2>?"
    assert clean_text(text, bot_user_id="UBOT") == "how do I use Milvus (https://milvus.io) & @U2?"


def test_settings_defaults_and_api_url(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("SLACK_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setenv("BOT_WORKERS", "2")
    settings = BotSettings(_env_file=None)
    assert settings.slack_api_url == "http://127.0.0.1:9/api/"
    assert settings.bot_workers == 2 and settings.port == 3000 and settings.answer_thread_followups
    # Under DATA_DIR, by default the per-user data folder.
    assert settings.database_target() == f"sqlite:///{tmp_path}/supportbot/feedback.sqlite"
    assert "xoxb" not in repr(BotSettings(_env_file=None, slack_bot_token="xoxb-secret"))


def test_thread_history_roles_budget_and_skips(fake_slack):
    from slack_sdk import WebClient

    from bot.history import thread_history
    from tests.fixtures.slack_fake import BOT_ID, BOT_USER_ID

    client = WebClient(token="xoxb-1", base_url=fake_slack.api_url)
    root = fake_slack.add_message("C1", text=f"<@{BOT_USER_ID}> first question")
    fake_slack.add_message("C1", text="first answer [1]\n\n*Sources*\n[1] <https://x|X>", user=BOT_USER_ID,
                           thread_ts=root["ts"], bot_id=BOT_ID)
    fake_slack.add_message("C1", text="another bot says hi", user="UOTHERBOT", thread_ts=root["ts"], bot_id="BX")
    fake_slack.add_message("C1", text="second question", thread_ts=root["ts"])
    current = fake_slack.add_message("C1", text="third question", thread_ts=root["ts"])
    fake_slack.add_message("C1", text="Looking through the docs…", user=BOT_USER_ID, thread_ts=root["ts"],
                           bot_id=BOT_ID)

    def history(**kwargs):
        return [(t.role, t.text) for t in thread_history(
            client, channel="C1", thread_ts=root["ts"], before_ts=current["ts"], bot_user_id=BOT_USER_ID,
            bot_id=BOT_ID, **kwargs)]

    assert history() == [("user", "first question"), ("assistant", "first answer [1]"),
                         ("user", "second question")]
    assert history(include_other_bots=True)[2] == ("user", "another bot says hi")
    assert history(max_messages=2) == [("assistant", "first answer [1]"), ("user", "second question")]
    assert history(max_chars=len("second question") + 5) == [("user", "second question")]
    assert history(max_messages=0) == []
    fake_slack.fail_next("conversations.replies", status=200, error="channel_not_found", retry_after=None)
    assert history() == []  # answering without context beats not answering


def test_thread_history_of_a_long_thread_is_its_latest_messages(fake_slack):
    """conversations.replies pages oldest first: the recent turns come from the last page."""
    from slack_sdk import WebClient

    from bot.history import thread_history
    from tests.fixtures.slack_fake import BOT_USER_ID

    client = WebClient(token="xoxb-1", base_url=fake_slack.api_url)
    root = fake_slack.add_message("C2", text=f"<@{BOT_USER_ID}> opening question")
    for number in range(450):
        fake_slack.add_message("C2", text=f"reply {number}", thread_ts=root["ts"])
    current = fake_slack.add_message("C2", text="the follow-up", thread_ts=root["ts"])
    turns = thread_history(client, channel="C2", thread_ts=root["ts"], before_ts=current["ts"],
                           bot_user_id=BOT_USER_ID, max_messages=3)
    assert [t.text for t in turns] == ["reply 447", "reply 448", "reply 449"]
    assert len(fake_slack.calls("conversations.replies")) == 3  # 200 + 200 + 52 messages
