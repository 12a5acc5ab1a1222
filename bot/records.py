"""Moved to `bot.state.records` (the state package holds all SQL); kept for old imports."""

from bot.state.records import (  # noqa: F401
    AnswerRow,
    FeedbackRow,
    Insights,
    Records,
    RecordsError,
    format_feedback_report,
)
