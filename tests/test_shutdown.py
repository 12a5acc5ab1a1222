"""`supportbot serve` in its own process gets SIGTERM while an answer is in flight: the answer
is still delivered, later events are not answered, /readyz turns 503, the process exits 0.
Its JSON log lines carry one outcome per question and no secrets or question text."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bot.server import EVENTS_PATH
from tests.bot_helpers import bot_replies, final_answers, section_text
from tests.fixtures.milvus import free_port
from tests.fixtures.openai_fake import DEFAULT_TEXT

pytestmark = [pytest.mark.timeout(170), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
OPENAI_KEY = "sk-test-Zx9Yw8Vu7Ts6Rq5Po4Nm"
QUESTION = "How does Milvus store data? my-private-phrase"


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_sigterm_finishes_the_answer_in_flight_then_exits(
    tmp_path, fake_slack, fake_openai, small_corpus, tiny_embedder_path, tiny_reranker_path
):
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "KNOWLEDGE_SOURCES": str(small_corpus),
        "EMBEDDING_MODEL": str(tiny_embedder_path),
        "RERANKER_MODEL": str(tiny_reranker_path),
        "DATA_DIR": str(tmp_path / "data"),
        "DEVICE": "cpu",
        "DTYPE": "float32",
        "DOCS_BASE_URL": "https://docs.example/{stem}#{anchor}",
        "ABSTAIN_THRESHOLD": "0",
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_MAX_RETRIES": "0",
        "OPENAI_TIMEOUT": "20",
        "SLACK_BOT_TOKEN": fake_slack.bot_token,
        "SLACK_SIGNING_SECRET": fake_slack.signing_secret,
        "SLACK_API_URL": fake_slack.api_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "METRICS_PORT": str(metrics_port),
        "FEEDBACK_DB": str(tmp_path / "feedback.sqlite"),
        "REINDEX_SCHEDULE": "never",
        "USER_RATE_PER_MINUTE": "0",
        "USER_MAX_CONCURRENT": "0",
        "SHUTDOWN_GRACE_SECONDS": "20",
        "LOG_FORMAT": "json",
        "LOG_QUESTIONS": "false",
    }
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "--env-file", str(tmp_path / "none.env"), "serve"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 120
        while True:  # models load, the index is built, then /readyz answers 200
            assert process.poll() is None, stderr_path.read_text()[-3000:]
            try:
                if _get(f"http://127.0.0.1:{metrics_port}/readyz") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}{EVENTS_PATH}"

        # An answer in flight: the model takes 4 s.
        fake_openai.hang(4.0)
        first = fake_slack.mention(QUESTION, channel="CT1")
        assert fake_slack.send_event(first, via="http", url=url) == 200
        deadline = time.monotonic() + 30
        while not fake_openai.requests:
            assert time.monotonic() < deadline, "the model was never asked"
            time.sleep(0.05)

        process.send_signal(signal.SIGTERM)
        terminated_at = time.monotonic()
        time.sleep(0.3)
        readiness = None
        try:
            readiness = _get(f"http://127.0.0.1:{metrics_port}/readyz")
        except OSError:
            pass  # already stopped serving: just as good
        second = fake_slack.mention("A question after SIGTERM", channel="CT2")
        try:
            fake_slack.send_event(second, via="http", url=url)
        except OSError:
            pass  # the listener is closed: refused, as wanted
        assert process.wait(timeout=40) == 0
        exited_at = time.monotonic()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    assert readiness in (None, 503)
    answers = final_answers(fake_slack, "CT1", first["ts"])
    assert len(answers) == 1 and section_text(answers[0]).startswith(DEFAULT_TEXT[:30])
    [final] = [c for c in fake_slack.calls("chat.update") if c.params.get("blocks") and c.params["channel"] == "CT1"]
    assert terminated_at < final.at < exited_at  # delivered during the drain, before the exit
    assert final_answers(fake_slack, "CT2", second["ts"]) == []
    assert all("restarting" in m["text"] for m in bot_replies(fake_slack, "CT2", second["ts"]))
    assert len(fake_openai.requests) == 1  # nothing after SIGTERM reached the model

    log_text = stderr_path.read_text()
    lines = log_text.splitlines()
    serving = next(i for i, line in enumerate(lines) if "listening for Slack events" in line)
    # Once serving, every line is one JSON object (start-up progress bars come before).
    records = [json.loads(line) for line in lines[serving:] if line.strip()]
    outcomes = [r for r in records if r["logger"] == "bot.questions"]
    assert [(r["outcome"], r["thread_ts"]) for r in outcomes if r["outcome"] == "answered"] == [("answered", first["ts"])]
    assert all({"question_id", "total_ms", "question_chars", "question_sha256"} <= set(r) for r in outcomes)
    assert any("shutting down" in r["message"] for r in records)
    for secret in (OPENAI_KEY, fake_slack.bot_token, fake_slack.signing_secret, "my-private-phrase"):
        assert secret not in log_text
