"""The one log line each question ends with: its id, where, how long, and what became of it.

    log_outcome(question, "answered", log_questions=False, timings_ms=answer.timings_ms)

Outcomes: answered, abstained, retrieval_only (the Answer's status), refused_rate,
refused_busy (per-person limits), busy (the worker pool was full), shutting_down,
small_talk (a greeting or thanks: bot.triage.is_small_talk; not looked up),
invalid (a KnowledgeError about the question, or files without words), undeliverable (Slack refused the
placeholder: not in the channel, or it is gone or archived), unavailable (the docs index could
not be reached), failed (another KnowledgeError), error (a bug; see error_id).
The question text is logged only when LOG_QUESTIONS is on, else its length and hash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from bot.logging_setup import question_log_fields

log = logging.getLogger("bot.questions")


def log_outcome(
    question,
    outcome: str,
    *,
    log_questions: bool,
    timings_ms: Mapping[str, float] | None = None,
    error_id: str = "",
) -> None:
    """Log the question's single outcome line (INFO; WARNING for unavailable/error)."""
    total_ms = round((time.monotonic() - question.received_at) * 1000, 1)
    fields: dict[str, object] = {
        "question_id": question.id,
        "outcome": outcome,
        "channel": question.channel,
        "thread_ts": question.thread_ts,
        "total_ms": total_ms,
    }
    for stage, milliseconds in (timings_ms or {}).items():
        # The pipeline's own "total" is kb.ask alone; total_ms runs from the question's arrival.
        fields["pipeline_ms" if stage == "total" else f"{stage}_ms"] = round(float(milliseconds), 1)
    if error_id:
        fields["error_id"] = error_id
    fields.update(question_log_fields(question.text, log_questions=log_questions))
    level = logging.WARNING if outcome in ("unavailable", "error") else logging.INFO
    log.log(level, "question %s %s in %.0f ms", question.id, outcome, total_ms, extra=fields)
