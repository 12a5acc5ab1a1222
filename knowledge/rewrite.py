"""Follow-up question -> standalone search query."""

from __future__ import annotations

from collections.abc import Sequence

from knowledge.errors import AnswerError
from knowledge.types import Turn

# Without a model: how many earlier user turns and characters of them to prepend.
RECENT_USER_TURNS = 2
MAX_CONTEXT_CHARS = 400


def standalone_query(question: str, history: Sequence[Turn], *, answerer=None) -> str:
    """The query to search with: the question itself when there is no history;
    else the model's rewrite (when an answerer is configured and answers), else
    the recent user turns followed by the question, bounded in length."""
    question = question.strip()
    if not history:
        return question
    if answerer is not None:
        try:
            rewritten = answerer.rewrite_query(question, history)
        except AnswerError:
            rewritten = ""  # a failed rewrite must not fail the answer: fall back below
        if rewritten.strip():
            return rewritten.strip()
    return concatenated_query(question, history)


def concatenated_query(question: str, history: Sequence[Turn]) -> str:
    """Recent user turns (most recent kept, at most MAX_CONTEXT_CHARS) + the question."""
    recent = [t.text.strip() for t in history if t.role == "user" and t.text.strip()]
    recent = recent[-RECENT_USER_TURNS:]
    context: list[str] = []
    budget = MAX_CONTEXT_CHARS
    for text in reversed(recent):
        if budget <= 0:
            break
        piece = text
        if len(text) > budget:
            # Keep the end (closest to now), starting at a word boundary.
            piece = text[-budget:]
            piece = piece.split(None, 1)[1] if len(piece.split(None, 1)) == 2 else piece
        context.insert(0, piece)
        budget -= len(piece)
    return "\n".join([*context, question])
