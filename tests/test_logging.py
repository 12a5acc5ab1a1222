"""Log configuration: secrets never reach the output, JSON lines parse, questions stay private."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.logging_setup import (
    REDACTED,
    configure_logging,
    question_log_fields,
    redact,
    register_secret,
)

BOT_TOKEN = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx"
APP_TOKEN = "xapp-1-A0123456789-1234567890123-0123456789abcdef0123456789abcdef"
OPENAI_KEY = "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def _remove_our_handlers() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_supportbot", False):
            root.removeHandler(handler)


@pytest.fixture
def output():
    """A buffer to log into; our handler is removed before and after each test."""
    _remove_our_handlers()
    yield io.StringIO()
    _remove_our_handlers()
    logging.getLogger().setLevel(logging.WARNING)


def _configure(output: io.StringIO, **kwargs) -> None:
    configure_logging(level=kwargs.pop("level", "INFO"), json_format=kwargs.pop("json_format", False),
                      stream=output, **kwargs)


@pytest.mark.parametrize("json_format", [False, True])
def test_tokens_in_message_args_extra_and_exception_are_redacted(output, json_format):
    _configure(output, json_format=json_format)
    log = logging.getLogger("supportbot.test")
    log.info("bot token %s", BOT_TOKEN)
    log.info(f"app token {APP_TOKEN} and key {OPENAI_KEY}")
    log.warning("headers %r", {"Authorization": "Bearer abcdefghijklmnop.qrstuv"})
    log.info("context", extra={"detail": f"token={BOT_TOKEN}"})
    try:
        raise RuntimeError(f"Slack said no to {BOT_TOKEN}")
    except RuntimeError:
        log.exception("call failed")

    text = output.getvalue()
    for secret in (BOT_TOKEN, APP_TOKEN, OPENAI_KEY, "abcdefghijklmnop", "0987654321"):
        assert secret not in text
    # The token kind stays visible, which helps when debugging which one leaked.
    assert f"xoxb-{REDACTED}" in text and f"xapp-{REDACTED}" in text
    assert f"sk-{REDACTED}" in text and f"Bearer {REDACTED}" in text
    assert "RuntimeError: Slack said no to" in text  # the traceback itself is kept


def test_registered_secrets_are_redacted_also_when_added_later(output):
    _configure(output, secrets=[SIGNING_SECRET])
    log = logging.getLogger("supportbot.test")
    log.info("signing secret is %s", SIGNING_SECRET)
    register_secret("my-custom-db-password-value")
    log.error("connecting with my-custom-db-password-value failed")
    # Reconfiguring keeps what was registered.
    _configure(output, json_format=True)
    log.info("again my-custom-db-password-value and %s", SIGNING_SECRET)

    text = output.getvalue()
    assert SIGNING_SECRET not in text
    assert "my-custom-db-password-value" not in text
    assert text.count(REDACTED) == 4


def test_ordinary_text_is_left_alone():
    text = "task-queue-processing with max_tokens=800 and 3 tokens; ask-me sk-learn"
    assert redact(text) == text
    assert redact("password: hunter2") == f"password: {REDACTED}"
    # Any URL's password, whichever setting or library put the URL in the line.
    line = "server at http://user:probe-SECRET@127.0.0.1:9/v1 and postgresql://bot:pw12@db:5432/x down"
    assert redact(line) == (f"server at http://user:{REDACTED}@127.0.0.1:9/v1 and "
                            f"postgresql://bot:{REDACTED}@db:5432/x down")
    assert redact("https://docs.example/a:b@c") == "https://docs.example/a:b@c"  # a path, no password
    placeholder = "DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DBNAME or postgresql://bot:<password>@db/x"
    assert redact(placeholder) == placeholder  # examples in docs and manifests are no secret


def test_short_values_are_not_registered(output):
    _configure(output, secrets=["", "abc"])
    logging.getLogger("t").info("abc is a common word")
    assert "abc is a common word" in output.getvalue()


def test_register_secret_needs_configured_logging(output):
    with pytest.raises(RuntimeError, match="configure_logging"):
        register_secret("some-long-secret-value")


def test_json_lines_parse_one_record_per_line(output):
    _configure(output, json_format=True)
    log = logging.getLogger("supportbot.json")
    log.info("first\nwith a newline", extra={"channel": "C123", "ms": 12.5})
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("second")
    log.debug("dropped at INFO")

    lines = output.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "first\nwith a newline"
    assert (first["level"], first["logger"], first["channel"], first["ms"]) == ("INFO", "supportbot.json", "C123", 12.5)
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ZeroDivisionError" in second["exception"]


def test_plain_format_shows_extras_and_level(output):
    _configure(output, level="warning")
    log = logging.getLogger("supportbot.plain")
    log.info("hidden")
    log.warning("slow answer", extra={"stage": "model"})
    assert output.getvalue().count("\n") == 1
    assert "WARNING supportbot.plain: slow answer stage='model'" in output.getvalue()


def test_reconfiguring_does_not_duplicate_lines(output):
    _configure(output)
    _configure(output)
    logging.getLogger("t").warning("once")
    assert output.getvalue().count("once") == 1


def test_unknown_level_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        configure_logging(level="LOUD", json_format=False)


def test_question_text_only_when_allowed(output):
    question = "How do I rotate the Milvus root password?"
    assert question_log_fields(question, log_questions=True) == {"question": question}
    unkeyed = question_log_fields(question, log_questions=False)  # this process's random key
    _configure(output, question_key=SIGNING_SECRET)
    private = question_log_fields(question, log_questions=False)
    assert set(private) == {"question_chars", "question_hash"} and private["question_chars"] == len(question)
    assert question not in json.dumps(private) and private != unkeyed
    # Keyed: hashing a guess does not confirm it; the same key (another replica) gives the same hash.
    assert private["question_hash"] != hashlib.sha256(question.encode()).hexdigest()[:12]
    assert question_log_fields(question, log_questions=False) == private
    assert question_log_fields(question + "?", log_questions=False) != private
    _remove_our_handlers()
    _configure(output, question_key=SIGNING_SECRET, secrets=[OPENAI_KEY])  # other secrets play no part
    assert question_log_fields(question, log_questions=False) == private
    _remove_our_handlers()
    _configure(output, question_key=APP_TOKEN)
    assert question_log_fields(question, log_questions=False) != private


def test_question_fields_log_without_the_text(output):
    _configure(output, json_format=True)
    question = "What is our VPN password reset flow?"
    logging.getLogger("q").info("question", extra=question_log_fields(question, log_questions=False))
    record = json.loads(output.getvalue())
    assert record["question_chars"] == len(question) and "VPN" not in output.getvalue()


def test_library_chatter_is_kept_for_debug(output):
    _configure(output)
    for name in ("alembic.runtime.migration", "milvus_lite.server_manager", "sentence_transformers.base.model"):
        logging.getLogger(name).info("library chatter %s", name)
    logging.getLogger("supportbot.test").info("the bot's own line")
    assert "library chatter" not in output.getvalue() and "the bot's own line" in output.getvalue()
    _configure(output, level="DEBUG")
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    assert "Context impl SQLiteImpl." in output.getvalue()


@pytest.mark.parametrize("log_bodies", [False, True])
def test_client_bodies_at_debug_only_when_questions_may_be_logged(output, fake_slack, log_bodies):
    """The real Slack client at DEBUG logs each request's body (the question, the answer): those
    lines are held back unless LOG_QUESTIONS allows question text in logs; the bot's own DEBUG
    lines are not."""
    from slack_sdk import WebClient

    _configure(output, level="DEBUG", log_bodies=log_bodies)
    client = WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
    client.chat_postMessage(channel="C1", text="How do I reset the VPN of payroll-eu?")
    logging.getLogger("supportbot.test").debug("the bot's own debug line")
    text = output.getvalue()
    assert "the bot's own debug line" in text and BOT_TOKEN not in text
    assert ("payroll-eu" in text) is log_bodies
    for name in ("slack_sdk", "slack_bolt", "openai"):  # the levels outlive the handler: put them back
        logging.getLogger(name).setLevel(logging.NOTSET)


# What the CLI does: configure logging from the settings, then (building the answerer) import openai.
_OPENAI_CALL = """
import sys
from bot.cli import _configure_logging
from bot.settings import BotSettings
_configure_logging(BotSettings(_env_file=None), verbose=False)
from openai import OpenAI
client = OpenAI(api_key="test-key", base_url=sys.argv[1], max_retries=0)
client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": sys.argv[2]}])
"""


@pytest.mark.parametrize(("log_level", "log_questions"), [("INFO", "false"), ("DEBUG", "false"), ("INFO", "true")])
def test_openai_log_debug_keeps_request_bodies_out_unless_questions_may_be_logged(fake_openai, log_level,
                                                                                   log_questions):
    """OPENAI_LOG=debug makes `import openai` set its logger to DEBUG, past LOG_LEVEL and LOG_QUESTIONS:
    its DEBUG lines (which carried whole requests, "Request options: …", in openai 1.x) are held back
    unless questions may be logged. A new process: openai reads OPENAI_LOG when imported."""
    question = "How do I reset the VPN of payroll-eu?"
    env = {**os.environ, "OPENAI_LOG": "debug", "LOG_LEVEL": log_level, "LOG_QUESTIONS": log_questions,
           "LOG_FORMAT": "plain", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", _OPENAI_CALL, fake_openai.base_url, question],
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert fake_openai.requests[-1]["messages"][-1]["content"] == question  # the call was made
    openai_debug = [line for line in result.stderr.splitlines() if " DEBUG openai" in line]
    warned = "OPENAI_LOG=debug is ignored unless LOG_QUESTIONS=true" in result.stderr
    if log_questions == "true":
        assert openai_debug and not warned  # OPENAI_LOG does what it says
    else:
        assert question not in result.stderr and "payroll-eu" not in result.stderr
        assert openai_debug == [] and warned, result.stderr
