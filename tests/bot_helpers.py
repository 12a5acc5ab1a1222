"""Shared pieces for the fault, burst and bad-input tests: a running bot over the fake
Slack, the per-question outcome log lines, and what ended up in each thread; and
`supportbot serve` in its own process (its environment, start, readiness).

    from tests.bot_helpers import outcomes, serve_env, start_bot  # noqa: F401  (fixtures)
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.app import build_app
from bot.server import socket_mode_handler
from bot.settings import BotSettings
from tests.fixtures.milvus import free_port
from tests.fixtures.slack_fake import BOT_USER_ID

ROOT = Path(__file__).resolve().parents[1]


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


# -- `supportbot serve` in its own process -------------------------------------------------


@pytest.fixture
def serve_env(tmp_path, fake_slack, fake_openai, small_corpus, tiny_embedder_path, tiny_reranker_path):
    """serve_env(socket_mode=False, **settings) -> the environment of a `supportbot serve` process.

    The tiny models on the small corpus, the fake OpenAI and the fake Slack (HTTP Events API on a
    free PORT, or Socket Mode), DATA_DIR and FEEDBACK_DB under tmp_path, no schedule and no
    per-user limits, METRICS_PORT free. `settings` are added by name; None removes one.
    """

    def make(*, socket_mode: bool = False, **settings: str | None) -> dict[str, str]:
        env: dict[str, str | None] = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1",
            "KNOWLEDGE_SOURCES": str(small_corpus),
            "EMBEDDING_MODEL": str(tiny_embedder_path),
            "RERANKER_MODEL": str(tiny_reranker_path),
            "DATA_DIR": str(tmp_path / "data"),
            "FEEDBACK_DB": str(tmp_path / "feedback.sqlite"),
            "DEVICE": "cpu",
            "DTYPE": "float32",
            "DOCS_BASE_URL": "https://docs.example/{stem}#{anchor}",
            "ABSTAIN_THRESHOLD": "0",
            "OPENAI_BASE_URL": fake_openai.base_url,
            "OPENAI_MAX_RETRIES": "0",
            "SLACK_BOT_TOKEN": fake_slack.bot_token,
            "SLACK_API_URL": fake_slack.api_url,
            "HOST": "127.0.0.1",
            "METRICS_PORT": str(free_port()),
            "REINDEX_SCHEDULE": "never",
            "USER_RATE_PER_MINUTE": "0",
            "USER_MAX_CONCURRENT": "0",
        }
        if socket_mode:
            env["SLACK_APP_TOKEN"] = fake_slack.app_token
        else:
            env.update(SLACK_SIGNING_SECRET=fake_slack.signing_secret, PORT=str(free_port()))
        env.update(settings)
        return {name: value for name, value in env.items() if value is not None}

    return make


def spawn_serve(env: dict[str, str], *, cwd: Path, log: Path) -> subprocess.Popen:
    """`supportbot serve` in a process of its own with `env` only (no .env read); stderr goes to `log`."""
    with open(log, "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "--env-file", os.devnull, "serve"],
            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )


def readyz(metrics_port: int) -> tuple[int, dict]:
    """(HTTP status, JSON body) of the process's /readyz; raises OSError while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_ready(process: subprocess.Popen, *, metrics_port: int, log: Path, timeout: float = 120,
               until: Callable[[int, dict], bool] = lambda status, body: status == 200) -> tuple[int, dict]:
    """Poll /readyz until `until(status, body)` (by default: ready) and return that answer.

    Raises AssertionError, with the log's tail, when the process exits or `timeout` passes first.
    """
    deadline = time.monotonic() + timeout
    while True:  # models load, the index is built, then /readyz answers
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            status, body = readyz(metrics_port)
            if until(status, body):
                return status, body
        except OSError:
            pass
        assert time.monotonic() < deadline, f"serve did not become ready in {timeout:.0f} s"
        time.sleep(0.2)
