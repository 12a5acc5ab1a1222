"""How many questions are between embedding and reranking right now, process-wide.

Torch-free, so the retriever can count questions when the models run on servers too;
knowledge.runtime reads the count to share the cores among model calls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_count = 0
_lock = threading.Lock()


@contextmanager
def question_in_flight() -> Iterator[None]:
    """Count a question as in flight while the block runs."""
    global _count
    with _lock:
        _count += 1
    try:
        yield
    finally:
        with _lock:
            _count -= 1


def questions_in_flight() -> int:
    """Questions inside a `question_in_flight` block now."""
    with _lock:
        return _count
