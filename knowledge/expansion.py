"""Questions phrased as symptoms or goals, in the docs' own words.

People write "our pod keeps getting killed for memory"; the section that answers is
headed "Allocate Resources". Without a model, the docs' vocabulary bridges the two
(``knowledge.vocabulary``): the heading words of the sections that use the
question's words are added to the keyword side's query. With a chat model
configured, ``rewrite_into_doc_words`` can also ask it to restate the question in
documentation vocabulary (off by default: see docs/answer-quality.md).
"""

from __future__ import annotations

import logging
import threading
import time

from knowledge.errors import AnswerError, KnowledgeError
from knowledge.vocabulary import Vocabulary

logger = logging.getLogger(__name__)

# The vocabulary is re-learned at most this often (another process may have refreshed
# the index); a refresh in this process drops it at once (``forget``).
RELEARN_SECONDS = 600.0
_FIELDS = ("search_text", "title", "heading_path")


class Expander:
    """Learns the index's vocabulary on first use and expands keyword queries with it."""

    def __init__(self, *, store) -> None:
        self.store = store
        self._vocabulary: Vocabulary | None = None
        self._learned_at = 0.0
        self._lock = threading.Lock()

    def vocabulary(self) -> Vocabulary | None:
        """The index's vocabulary (None when it cannot be read: expansion is skipped)."""
        scan = getattr(self.store, "scan", None)
        if scan is None:
            return None  # a store that cannot list its rows: no vocabulary
        with self._lock:
            stale = time.monotonic() - self._learned_at > RELEARN_SECONDS
            if self._vocabulary is None or stale:
                started = time.perf_counter()
                try:
                    self._vocabulary = Vocabulary.build(scan(_FIELDS))
                except KnowledgeError as error:
                    logger.warning("Cannot learn the index vocabulary (%s); no expansion", error)
                    return self._vocabulary
                self._learned_at = time.monotonic()
                logger.info("learned the vocabulary of %d sections in %.1f s",
                            self._vocabulary.sections, time.perf_counter() - started)
            return self._vocabulary

    def forget(self) -> None:
        """Drop the learned vocabulary (the index changed)."""
        with self._lock:
            self._vocabulary = None

    def expand(self, question: str, keywords: str, *, terms: int = 2) -> str:
        """`keywords` followed by (at most `terms`) heading words the docs use for the
        question's topic; `keywords` unchanged when the vocabulary cannot be read."""
        if not keywords.strip() or terms <= 0:
            return keywords
        vocabulary = self.vocabulary()
        if vocabulary is None:
            return keywords
        extra = [word for word, _ in vocabulary.related_heading_terms(question, limit=terms)]
        return " ".join([keywords, *extra]) if extra else keywords


def rewrite_into_doc_words(question: str, *, answerer) -> str:
    """The chat model's restatement of `question` in documentation words, or "" when
    no model is configured or it fails (the question is then searched as asked)."""
    if answerer is None:
        return ""
    try:
        return answerer.rewrite_in_doc_words(question)
    except AnswerError:
        return ""


def doc_words_query(query: str, *, answerer, enabled: bool) -> str:
    """`query` followed by its restatement in doc words, when enabled and a model answers."""
    if not enabled or answerer is None:
        return query
    rewritten = rewrite_into_doc_words(query, answerer=answerer)
    return f"{query}\n{rewritten}" if rewritten and rewritten != query else query
