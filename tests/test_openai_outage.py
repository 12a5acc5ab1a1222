"""When OpenAI is down or misconfigured: a wrong key, model or base URL is found by one cheap
check at start (and /readyz says so); during an outage the circuit breaker answers with
passages at once, and closes again by itself after its cool-down."""

from __future__ import annotations

import signal
import time

import pytest

from knowledge.answerer import Answerer
from tests.bot_helpers import serve_env, spawn_serve, wait_ready  # noqa: F401  (serve_env: fixture)
from tests.fixtures.milvus import free_port

QUESTION = "How does Milvus store data?"


def _answerer(base_url: str, *, key: str = "sk-right", model: str = "gpt-4o") -> Answerer:
    return Answerer(api_key=key, base_url=base_url, model=model, timeout=5, max_retries=0)


def test_start_check_names_a_wrong_key_model_or_url_in_one_line(fake_openai):
    fake_openai.api_key = "sk-right"
    fake_openai.models = {"gpt-4o"}
    assert _answerer(fake_openai.base_url).check() == ""

    problem = _answerer(fake_openai.base_url, key="sk-wrong").check()
    assert "rejected OPENAI_API_KEY (HTTP 401)" in problem and "sk-wrong" not in problem

    problem = _answerer(fake_openai.base_url, model="gpt-9").check()
    assert "'gpt-9' does not exist" in problem and "OPENAI_MODEL" in problem

    wrong_path = fake_openai.base_url.removesuffix("/v1") + "/api"
    problem = _answerer(wrong_path).check()
    assert "No OpenAI-compatible API" in problem and "OPENAI_BASE_URL" in problem

    problem = _answerer(f"http://user:probe-SECRET@127.0.0.1:{free_port()}/v1").check()
    assert "cannot be reached" in problem and "OPENAI_BASE_URL" in problem
    assert "SECRET" not in problem and "http://127.0.0.1:" in problem  # shown (logs, /readyz) without the password
    for line in (problem,):
        assert "\n" not in line
    # Only GETs of the model were made: no completion was spent on checking.
    assert fake_openai.requests == [] and fake_openai.model_checks


def test_outage_opens_the_breaker_then_it_closes_by_itself(make_kb, fake_openai):
    kb = make_kb(abstain_threshold=0.0, openai_max_retries=0,
                 answer_breaker_failures=2, answer_breaker_cooldown=1.5)
    fake_openai.fail(500, times=3)
    for _ in range(2):  # two failures in a row, each asking the server once
        answer = kb.ask(QUESTION)
        assert answer.status == "retrieval_only" and "HTTP 500" in answer.note
    assert len(fake_openai.requests) == 2

    started = time.perf_counter()
    answer = kb.ask(QUESTION)  # open: passages at once, the server is not asked
    assert time.perf_counter() - started < 5
    assert answer.status == "retrieval_only" and "paused after repeated failures" in answer.note
    assert answer.timings_ms["model"] < 50
    assert answer.citations and len(fake_openai.requests) == 2
    assert kb.status()["answer_paused"]

    time.sleep(1.6)  # the cool-down: the next question probes, and gets the scripted 500
    answer = kb.ask(QUESTION)
    assert answer.status == "retrieval_only" and "HTTP 500" in answer.note
    assert len(fake_openai.requests) == 3
    assert kb.ask(QUESTION).status == "retrieval_only"  # opened again
    assert len(fake_openai.requests) == 3

    time.sleep(1.6)  # the server is back: the probe answers and the breaker closes
    answer = kb.ask(QUESTION)
    assert answer.status == "answered" and len(fake_openai.requests) == 4
    assert not kb.status()["answer_paused"]
    assert kb.ask(QUESTION).status == "answered"


def test_a_rejected_request_does_not_open_the_breaker(make_kb, fake_openai):
    kb = make_kb(abstain_threshold=0.0, openai_max_retries=0, answer_breaker_failures=1)
    fake_openai.fail(400, times=2)  # the request's fault (e.g. too long), not an outage
    for _ in range(2):
        assert "HTTP 400" in kb.ask(QUESTION).note
    assert kb.ask(QUESTION).status == "answered"
    assert len(fake_openai.requests) == 3


@pytest.mark.timeout(170)
def test_serve_with_a_wrong_key_says_so_at_start_and_is_not_ready(tmp_path, fake_openai, serve_env):
    fake_openai.api_key = "sk-right"
    env = serve_env(OPENAI_API_KEY="sk-wrong-Zx9Yw8Vu7Ts6")
    stderr_path = tmp_path / "stderr.log"
    process = spawn_serve(env, cwd=tmp_path, log=stderr_path)
    try:
        # Ready, or not ready for a reason other than the index still being built.
        status, body = wait_ready(process, metrics_port=int(env["METRICS_PORT"]), log=stderr_path,
                                  until=lambda status, body: status == 200 or "index" not in body.get("reason", ""))
        assert status == 503 and "rejected OPENAI_API_KEY (HTTP 401)" in body["reason"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    log = stderr_path.read_text()
    lines = [line for line in log.splitlines() if "OPENAI_API_KEY" in line]
    assert len(lines) == 1, log
    assert "Traceback" not in log and "sk-wrong" not in log
