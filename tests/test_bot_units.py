"""The bot's small parts: retry dedupe, the bounded worker pool, thread history, settings."""

import threading
import time

import pytest

from bot.dedupe import SeenKeys
from bot.history import clean_text
from bot.settings import BotSettings
from bot.workers import WorkerPool


def test_seen_keys_once_then_expire():
    seen = SeenKeys(ttl=0.2, max_entries=100)
    assert seen.first_time("event:1", "msg:C:1")
    assert not seen.first_time("event:1")
    assert not seen.first_time("event:2", "msg:C:1")  # one known key is enough
    assert seen.first_time("")  # nothing to key on: never a duplicate
    time.sleep(0.25)
    assert seen.first_time("event:1")


def test_seen_keys_bounded():
    seen = SeenKeys(ttl=60, max_entries=3)
    for i in range(10):
        seen.first_time(f"k{i}")
    assert len(seen) == 3
    assert seen.first_time("k0")  # the oldest were forgotten


def test_pool_refuses_when_full_and_recovers():
    pool = WorkerPool(workers=1, queue_size=1)
    gate = threading.Event()
    running = pool.submit(gate.wait, 5)
    queued = pool.submit(lambda: "queued")
    assert running is not None and queued is not None
    assert pool.submit(lambda: "third") is None  # 1 running + 1 waiting: full
    gate.set()
    assert queued.result(timeout=5) == "queued"
    deadline = time.monotonic() + 5
    while (late := pool.submit(lambda: "again")) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert late is not None and late.result(timeout=5) == "again"
    pool.shutdown()


def test_pool_releases_slot_after_a_failing_job():
    pool = WorkerPool(workers=1, queue_size=0)
    failed = pool.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failed.result(timeout=5)
    time.sleep(0.05)
    assert pool.submit(lambda: 1).result(timeout=5) == 1
    pool.shutdown()


def test_clean_text():
    text = "<@UBOT> how do I use <https://milvus.io|Milvus> &amp; <@U2>?"
    assert clean_text(text, bot_user_id="UBOT") == "how do I use Milvus (https://milvus.io) & @U2?"


def test_settings_defaults_and_api_url(monkeypatch):
    monkeypatch.setenv("SLACK_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setenv("BOT_WORKERS", "2")
    settings = BotSettings(_env_file=None)
    assert settings.slack_api_url == "http://127.0.0.1:9/api/"
    assert settings.bot_workers == 2 and settings.port == 3000 and settings.answer_thread_followups
    assert str(settings.feedback_db) == "data/feedback.sqlite"
    assert "xoxb" not in repr(BotSettings(_env_file=None, slack_bot_token="xoxb-secret"))
