"""Logging for the bot: plain or JSON lines, with secrets redacted from every record.

    configure_logging(level="INFO", json_format=False, secrets=[bot_token, ...])
    register_secret(value)            # a secret learned later (after configure_logging)
    log.info("question", extra=question_log_fields(text, log_questions=False))

The redactor runs as a filter on the root handler, so it sees every record that
reaches it (from any logger): the message, its arguments, `extra` fields, the
exception traceback and stack info are all rewritten before formatting.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import IO

REDACTED = "[REDACTED]"
# Registered values shorter than this are ignored: masking "abc" everywhere would
# wreck the logs and such a value is no secret anyway.
MIN_SECRET_CHARS = 8

# The key of question hashes (question_log_fields): a plain hash of a short question can be
# confirmed by hashing guesses, a keyed one cannot without the key. configure_logging derives it
# from the Slack app's own secrets, which every replica shares and no default value has (a model
# server's dummy key might), so one question hashes alike on all replicas.
_question_key = os.urandom(32)

# Well-known token shapes; the prefix is kept so a reader still sees what leaked.
_TOKEN_PATTERNS = re.compile(
    r"(?P<keep>\bxox[a-z](?:\.xox[a-z])?-|\bxapp-|\bsk-|\b[Bb]earer\s+)"
    r"(?P<secret>[A-Za-z0-9._~+/=-]{8,})"
    r"|(?P<key>\b(?:api[_-]?key|password|passwd|secret|token|client_secret)\b[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<value>[^\s\"',;&]{4,})",
    re.IGNORECASE,
)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName",
}
# Per-request or per-start INFO lines of libraries (HTTP clients, Alembic's ten lines per database
# open, Milvus Lite's server start/stop, model loading): kept for DEBUG only.
_NOISY_LOGGERS = ("httpx", "httpx2", "httpcore", "urllib3", "filelock", "huggingface_hub", "faiss.loader",
                  "alembic", "milvus_lite", "sentence_transformers")
# Libraries whose DEBUG lines carry whole request and response bodies: Slack events and the
# messages posted (questions, answers), the prompts sent to the language model. Kept at INFO
# unless questions may be logged (LOG_QUESTIONS), so DEBUG does not undo that promise.
_BODY_LOGGERS = ("slack_sdk", "slack_bolt", "openai")


class _BodyHolder(logging.Filter):
    """Drops the body loggers' DEBUG records. Their levels alone do not hold: `import openai`
    with OPENAI_LOG=debug sets its logger to DEBUG, and the CLI imports it after configuring."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.INFO or record.name.split(".", 1)[0] not in _BODY_LOGGERS


# The password of any URL in a line ("postgresql://bot:pw@db", "http://user:pw@llm:8000/v1"),
# unless it is a placeholder (docs and examples: "USER:PASSWORD@HOST", "<password>", "${PW}").
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)([^@\s/]+)@", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"PASSWORD|PASSWD|PASS|SECRET|REPLACE_ME|<[^>]*>|\$\{[^}]*\}|\*+|\[REDACTED\]")


def _mask_url_password(match: re.Match) -> str:
    if _PLACEHOLDER.fullmatch(match.group(2)):
        return match.group(0)
    return f"{match.group(1)}{REDACTED}@"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with known token shapes, URL passwords and the given secret values masked."""
    if not text:
        return text
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _URL_PASSWORD.sub(_mask_url_password, text)
    return _TOKEN_PATTERNS.sub(_mask, text)


def _mask(match: re.Match) -> str:
    prefix = match.group("keep") if match.group("keep") is not None else match.group("key")
    return f"{prefix}{REDACTED}"


class SecretRedactor(logging.Filter):
    """A handler filter that masks secrets in every part of a record; never drops one."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: frozenset[str] = frozenset()
        for value in secrets:
            self.add(value)

    def add(self, value: str) -> None:
        """Mask `value` from now on (ignored when empty or shorter than MIN_SECRET_CHARS)."""
        if value and len(value) >= MIN_SECRET_CHARS:
            # Rebinding a new frozenset is atomic, so logging threads need no lock.
            self._secrets = self._secrets | {value}

    @property
    def secrets(self) -> frozenset[str]:
        return self._secrets

    def filter(self, record: logging.LogRecord) -> bool:
        # Longest first, so a secret containing another is masked whole.
        secrets = sorted(self._secrets, key=len, reverse=True)
        try:
            message = record.getMessage()
        except Exception:  # bad %-args: keep the template, never the raw args
            message = f"{record.msg} [unformattable log arguments]"
        record.msg, record.args = redact(message, secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            # Formatters reuse a cached exc_text instead of re-formatting exc_info.
            record.exc_text = redact(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, secrets)
        for name, value in list(record.__dict__.items()):
            if name not in _RECORD_ATTRS and isinstance(value, str):
                setattr(record, name, redact(value, secrets))
        return True


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class PlainFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...` (extras appended so they are not lost)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in _extras(record).items())
        if not extras:
            return text
        head, newline, rest = text.partition("\n")  # keep a traceback below the first line
        return f"{head} {extras}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(_extras(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = record.stack_info
        # json.dumps escapes newlines, so a traceback stays on the record's one line.
        return json.dumps(payload, ensure_ascii=False, default=str)


def configure_logging(
    *,
    level: str | int = "INFO",
    json_format: bool = False,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
    log_bodies: bool = False,
    question_key: str = "",
) -> SecretRedactor:
    """Send all logs to `stream` (stderr) as plain or JSON lines, secrets masked.

    The Slack and OpenAI clients' own debug lines (request and response bodies, which hold
    questions), at DEBUG or with OPENAI_LOG=debug, are shown only with `log_bodies`. `question_key`
    (the Slack signing secret and bot token) keys question hashes; without it they are keyed per process.

    Calling it again replaces the handler it installed before (secrets already
    registered are kept); handlers installed by others (pytest) are left alone.
    Raises ValueError for an unknown level name.
    """
    numeric = _level_number(level)
    root = logging.getLogger()
    previous: set[str] = set()
    for handler in list(root.handlers):
        if getattr(handler, "_supportbot", False):
            for existing in handler.filters:
                if isinstance(existing, SecretRedactor):
                    previous |= existing.secrets
            root.removeHandler(handler)
            handler.close()
    redactor = SecretRedactor([*previous, *secrets])
    global _question_key
    if question_key:  # else the random key of this process: its own lines still correlate
        _question_key = hashlib.sha256(b"supportbot question hash\0"
                                       + question_key.encode("utf-8", "surrogatepass")).digest()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._supportbot = True  # type: ignore[attr-defined]  # marks the handler as ours
    if not log_bodies:
        handler.addFilter(_BodyHolder())
    handler.addFilter(redactor)
    handler.setFormatter(JsonFormatter() if json_format else PlainFormatter())
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _NOISY_LOGGERS:  # they drown the bot's own lines
        logging.getLogger(name).setLevel(logging.WARNING if numeric > logging.DEBUG else logging.NOTSET)
    for name in _BODY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if numeric <= logging.DEBUG and not log_bodies
                                         else logging.NOTSET)
    if not log_bodies and os.environ.get("OPENAI_LOG", "").strip().lower() == "debug":
        logging.getLogger(__name__).warning(
            "OPENAI_LOG=debug is ignored unless LOG_QUESTIONS=true: the openai library's debug lines "
            "can hold request bodies (questions and passages)")
    return redactor


# Libraries that log through a stderr handler of their own (propagate=False): bypassing
# ours, their lines would skip redaction and break one-JSON-object-a-line.
_SELF_HANDLED_LOGGERS = ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer")


def adopt_library_loggers(names: Iterable[str] = _SELF_HANDLED_LOGGERS) -> None:
    """Send these loggers' records to the root handler (call after the library is imported)."""
    for name in names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


def register_secret(value: str) -> None:
    """Mask `value` in all later log records.

    Raises RuntimeError when configure_logging() has not run yet (the secret
    would otherwise be silently unprotected).
    """
    redactors = [
        f for handler in logging.getLogger().handlers if getattr(handler, "_supportbot", False)
        for f in handler.filters if isinstance(f, SecretRedactor)
    ]
    if not redactors:
        raise RuntimeError("configure_logging() must run before register_secret()")
    for redactor in redactors:
        redactor.add(value)


def question_log_fields(question: str, *, log_questions: bool) -> dict[str, object]:
    """Fields for `extra=`: the text when LOG_QUESTIONS is on, else its length and hash.

    The hash (12 hex digits of an HMAC-SHA256 keyed by the Slack app's secrets) lets one
    follow a question across log lines and replicas without recording what was asked, and
    without letting a reader of the logs confirm a guess of it.
    """
    if log_questions:
        return {"question": question}
    # surrogatepass: a lone surrogate from Slack's JSON must not make logging raise.
    digest = hmac.new(_question_key, question.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:12]
    return {"question_chars": len(question), "question_hash": digest}


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.strip().upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return number
