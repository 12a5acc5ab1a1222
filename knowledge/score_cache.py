"""Reranker scores kept per (question, passage): a repeated pair is never scored again.

Torch-free, shared by the in-process reranker and the model-server client.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence

from cachetools import LRUCache


class ScoreCache:
    """A thread-safe LRU of scores keyed by the question and a hash of the passage."""

    def __init__(self, *, size: int) -> None:
        self._scores: LRUCache[tuple[str, str], float] = LRUCache(maxsize=max(1, size))
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._scores)

    def scores(
        self, query: str, documents: Sequence[str], compute: Callable[[str, list[str]], Sequence[float]]
    ) -> list[float]:
        """A score per document, in input order; `compute(query, missing)` runs once for the pairs
        not cached (none when all are) and what it raises passes through."""
        keys = [(query, _text_hash(doc)) for doc in documents]
        with self._lock:
            scores = [self._scores.get(key) for key in keys]
        missing = [i for i, value in enumerate(scores) if value is None]
        if missing:
            fresh = compute(query, [documents[i] for i in missing])
            with self._lock:
                for i, value in zip(missing, fresh):
                    scores[i] = value
                    self._scores[keys[i]] = value
        return [float(value) for value in scores]


def _text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()
