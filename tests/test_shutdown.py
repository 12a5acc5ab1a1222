"""`supportbot serve` in its own process gets SIGTERM while an answer is in flight: the answer
is still delivered, later events are not answered, /readyz turns 503, the process exits 0.
Its JSON log lines carry one outcome per question and no secrets or question text."""

from __future__ import annotations

import json
import signal
import time

import pytest

from bot.server import EVENTS_PATH
from tests.bot_helpers import bot_replies, final_answers, readyz, section_text, serve_env, spawn_serve, wait_ready  # noqa: F401  (serve_env: fixture)
from tests.fixtures.openai_fake import DEFAULT_TEXT

pytestmark = [pytest.mark.timeout(170), pytest.mark.slow]

OPENAI_KEY = "sk-test-Zx9Yw8Vu7Ts6Rq5Po4Nm"
QUESTION = "How does Milvus store data? my-private-phrase"


def test_sigterm_finishes_the_answer_in_flight_then_exits(tmp_path, fake_slack, fake_openai, serve_env):
    env = serve_env(
        OPENAI_API_KEY=OPENAI_KEY,
        OPENAI_TIMEOUT="20",
        SHUTDOWN_GRACE_SECONDS="20",
        LOG_FORMAT="json",
        LOG_QUESTIONS="false",
    )
    port, metrics_port = int(env["PORT"]), int(env["METRICS_PORT"])
    stderr_path = tmp_path / "stderr.log"
    process = spawn_serve(env, cwd=tmp_path, log=stderr_path)
    try:
        wait_ready(process, metrics_port=metrics_port, log=stderr_path)
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
            readiness, _ = readyz(metrics_port)
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
    assert all({"question_id", "total_ms", "question_chars", "question_hash"} <= set(r) for r in outcomes)
    assert any("shutting down" in r["message"] for r in records)
    for secret in (OPENAI_KEY, fake_slack.bot_token, fake_slack.signing_secret, "my-private-phrase"):
        assert secret not in log_text
