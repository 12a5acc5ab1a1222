"""The per-question outcome line, the LOG_FORMAT setting and the pool's drain."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest
from pydantic import ValidationError

from bot.logging_setup import configure_logging
from bot.outcomes import log_outcome
from bot.responder import Question
from bot.settings import BotSettings
from bot.workers import WorkerPool


@pytest.fixture
def json_log():
    stream = io.StringIO()
    configure_logging(level="INFO", json_format=True, stream=stream)
    yield stream
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_supportbot", False):
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def _question(text: str = "How do I reset the admin password?") -> Question:
    return Question(text=text, channel="C1", user="U1", thread_ts="1.0", message_ts="1.0",
                    received_at=time.monotonic() - 0.25)


def test_outcome_line_has_id_timings_and_no_question_text(json_log):
    question = _question()
    log_outcome(question, "answered", log_questions=False, timings_ms={"embed": 3.21, "model": 120.0, "total": 130.5})
    log_outcome(question, "unavailable", log_questions=False, error_id="abcd1234")
    first, second = (json.loads(line) for line in json_log.getvalue().splitlines())
    assert first["question_id"] == question.id and len(question.id) == 12
    assert (first["outcome"], first["channel"], first["thread_ts"], first["level"]) == ("answered", "C1", "1.0", "INFO")
    assert (first["embed_ms"], first["model_ms"]) == (3.2, 120.0)
    assert first["total_ms"] >= 250 and first["pipeline_ms"] == 130.5
    assert first["question_chars"] == len(question.text) and "password" not in json_log.getvalue()
    assert (second["level"], second["error_id"]) == ("WARNING", "abcd1234")


def test_question_text_only_with_log_questions(json_log):
    log_outcome(_question("Where is the VPN guide?"), "abstained", log_questions=True)
    assert json.loads(json_log.getvalue())["question"] == "Where is the VPN guide?"


def test_log_format_setting(monkeypatch):
    assert BotSettings(_env_file=None).log_format == "plain"
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    assert BotSettings(_env_file=None).log_format == "json"
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ValidationError, match="log_format"):
        BotSettings(_env_file=None)


def test_drain_waits_for_running_and_queued_jobs_and_refuses_new_ones():
    pool = WorkerPool(workers=1, queue_size=2)
    release = threading.Event()
    done: list[int] = []

    def job(n: int) -> None:
        release.wait(5)
        done.append(n)

    assert pool.submit(job, 1) is not None and pool.submit(job, 2) is not None
    threading.Timer(0.3, release.set).start()
    assert pool.drain(5) is True
    assert done == [1, 2]
    assert pool.submit(job, 3) is None  # no new work after a drain
    pool.shutdown()


def test_drain_gives_up_after_the_grace():
    pool = WorkerPool(workers=1, queue_size=0)
    stop = threading.Event()
    pool.submit(stop.wait, 5)
    started = time.monotonic()
    assert pool.drain(0.2) is False
    assert time.monotonic() - started < 1
    stop.set()
    pool.shutdown()


def test_pymilvus_lines_go_through_our_handler(json_log):
    import pymilvus  # noqa: F401  (sets up its own stderr handler on import)

    from bot.logging_setup import adopt_library_loggers

    adopt_library_loggers()
    logging.getLogger("pymilvus").warning("RPC failed with token=abcdefgh12345678")
    [line] = json_log.getvalue().splitlines()
    record = json.loads(line)
    assert record["logger"] == "pymilvus" and "abcdefgh12345678" not in line
