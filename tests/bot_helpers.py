"""Shared pieces for the fault, burst and bad-input tests: a running bot over the fake
Slack, the per-question outcome log lines, and what ended up in each thread.

    from tests.bot_helpers import outcomes, start_bot  # noqa: F401  (fixtures)
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from bot.app import build_app
from bot.server import socket_mode_handler
from bot.settings import BotSettings
from tests.fixtures.slack_fake import BOT_USER_ID


class OutcomeLog(logging.Handler):
    """Collects the `bot.questions` outcome records (one per question)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def wait(self, count: int, timeout: float = 30.0) -> list[logging.LogRecord]:
        """Wait until `count` outcomes were logged; raise AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.records) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{len(self.records)} of {count} questions got an outcome: "
                                         f"{[r.outcome for r in self.records]}")
                self._changed.wait(remaining)
            return list(self.records)

    def by_thread(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for record in list(self.records):
            result.setdefault(record.thread_ts, []).append(record.outcome)
        return result


@pytest.fixture
def outcomes():
    logger = logging.getLogger("bot.questions")
    handler = OutcomeLog()
    previous = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


@pytest.fixture
def start_bot(fake_slack, tmp_path):
    """start_bot(kb, **BotSettings overrides) -> the SupportBot, connected in Socket Mode (closed at teardown)."""
    cleanups = []

    def start(kb, **overrides):
        values = dict(
            slack_bot_token=fake_slack.bot_token,
            slack_app_token=fake_slack.app_token,
            slack_api_url=fake_slack.api_url,
            feedback_db=tmp_path / f"feedback{len(cleanups)}.sqlite",
            stream_update_interval=0.2,
            user_rate_per_minute=0,
            user_max_concurrent=0,
        )
        values.update(overrides)
        bot = build_app(BotSettings(_env_file=None, **values), kb)
        cleanups.append(bot.close)
        handler = socket_mode_handler(bot, bot.services.settings)
        handler.connect()
        cleanups.append(handler.close)
        fake_slack.wait_connected()
        return bot

    yield start
    for cleanup in reversed(cleanups):
        cleanup()


def bot_replies(fake, channel: str, thread_ts: str) -> list[dict]:
    """The bot's messages in a thread, as they stand now (placeholders already replaced)."""
    return [m for m in fake.thread(channel, thread_ts) if m.get("user") == BOT_USER_ID]


def final_answers(fake, channel: str, thread_ts: str) -> list[dict]:
    """The bot's answer messages (with blocks) in a thread."""
    return [m for m in bot_replies(fake, channel, thread_ts) if m.get("blocks")]


def section_text(message: dict) -> str:
    return "\n".join(b["text"]["text"] for b in message.get("blocks") or [] if b.get("type") == "section")


def context_text(message: dict) -> str:
    return "\n".join(e["text"] for b in message.get("blocks") or [] if b.get("type") == "context"
                     for e in b["elements"])
