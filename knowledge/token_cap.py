"""Cap a long text to a token count by keeping its head and its tail.

A pasted stack trace or config puts the question at the start ("why does this
fail?") and the decisive line at the end (the exception): cutting either end
alone loses one of them. Used for questions before they reach a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

ELLIPSIS = " … "


def keep_head_and_tail(
    text: str,
    *,
    limit: int,
    encode: Callable[[str], Sequence[int]],
    decode: Callable[[Sequence[int]], str],
) -> str:
    """`text` itself when it has at most `limit` tokens, else its first and last tokens joined by " … ".

    The head gets the larger half; the marker's tokens are part of `limit`. Re-tokenizing the joined text can differ from the
    sum by a token or two at the seams: callers leave that much slack.
    """
    if limit <= 0 or not text:
        return "" if limit <= 0 else text
    ids = list(encode(text))
    if len(ids) <= limit:
        return text
    kept = max(1, limit - len(encode(ELLIPSIS)))  # the marker's own tokens count too
    head = (kept + 1) // 2
    tail = kept - head
    return decode(ids[:head]).rstrip() + ELLIPSIS + (decode(ids[-tail:]).lstrip() if tail else "")
