"""Sentence evidence: how well a passage's best sentence matches the question.

One vector per chunk averages everything the section says, so a support question
whose answer is one sentence of a long section ("you cannot manipulate the
partitions ... once a partition key is set") loses to a short section on the same
topic. At index time every sentence of a chunk is embedded too (`sentences`,
stored packed beside the chunk: `pack` / `unpack`); at search time the candidates
are ordered by their best sentence's cosine plus a fading head start for the search
order's first few (`scored_order`). Measured in docs/answer-quality.md ("Sentence
evidence").
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence

import numpy as np

from knowledge.types import strip_link_targets
from knowledge.vectors import unit_rows

# Markdown docs: a sentence ends at . ! ? before white space or right after 。！？；
# (no spaces in Chinese or Japanese), and every line (list items, table rows, code) stands alone.
_BOUNDARY = re.compile(r"(?<=[.!?])\s+|(?<=[。！？；])\s*|\n+")
# Shorter pieces ("```", "| --- |", "e.g.") match anything and prove nothing alone: they
# join the next piece.
MIN_SENTENCE_CHARS = 20
# The packed vectors of one chunk go into one VARCHAR field (at most 65,535 bytes).
PACKED_BYTES = 65535
# HTML tags (the docs' tables, tabs and notes are HTML) and a letter or digit in any script:
# a sentence with none outside its tags ("</tr> </thead> <tbody>", "|---|---|", "//   ],")
# is markup or punctuation, and its vector would only match other markup.
_HTML_TAG = re.compile(r"<[^<>]*>")
_WORD_CHAR = re.compile(r"[^\W_]")


def split_sentences(text: str) -> list[str]:
    """The text's sentences and lines as they stand, link targets dropped, blank ones skipped
    (the reranker's windows are runs of these too)."""
    return [piece.strip() for piece in _BOUNDARY.split(strip_link_targets(text or "")) if piece.strip()]


def sentences(text: str, *, limit: int) -> list[str]:
    """The sentences of `text` worth a vector, at most `limit` (neighbours merged to fit).

    Link targets are dropped (their words are not the docs'); a piece too short to stand
    alone ("e.g.", a short heading) joins the next one, or the last; a piece without a word
    (`has_words`: pure HTML markup or punctuation) is no evidence and is left out. [] for
    empty text.
    """
    if limit < 1:
        return []
    parts: list[str] = []
    pending = ""
    for piece in split_sentences(text):
        piece = f"{pending} {piece}" if pending else piece
        if len(piece) < MIN_SENTENCE_CHARS:
            pending = piece
            continue
        parts.append(piece)
        pending = ""
    if pending:
        if parts:
            parts[-1] = f"{parts[-1]} {pending}"
        else:
            parts = [pending]
    parts = [part for part in parts if has_words(part)]
    if len(parts) > limit:
        # Neighbours merged into `limit` groups: every word keeps a vector somewhere.
        groups = np.array_split(np.arange(len(parts)), limit)
        parts = [" ".join(parts[i] for i in group) for group in groups if len(group)]
    return parts


def has_words(text: str) -> bool:
    """Whether `text` holds a letter or digit outside its HTML tags."""
    return bool(_WORD_CHAR.search(_HTML_TAG.sub(" ", text)))


def max_sentences(dimension: int) -> int:
    """How many packed vectors of `dimension` fit in one VARCHAR field (base64 of int8)."""
    return max(1, (PACKED_BYTES // 4 * 3) // max(1, dimension))


def pack(vectors: np.ndarray) -> str:
    """Unit vectors (rows) as base64 of int8, each row scaled by its largest component.

    Cosines from the unpacked rows differ from float32's by about 0.003: plenty to
    rank a few candidates' sentences. "" for no rows.
    """
    return pack_quantised(quantise(vectors))


def quantise(vectors: np.ndarray) -> np.ndarray:
    """The int8 rows `pack` stores: each row on its own, so rows quantised apart and
    stacked pack exactly as the same rows quantised together."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.size == 0:
        return np.zeros(vectors.shape, dtype=np.int8)
    scale = np.abs(vectors).max(axis=1, keepdims=True)
    scale[scale == 0] = 1.0
    return np.round(vectors / scale * 127).astype(np.int8)


def pack_quantised(rows: np.ndarray) -> str:
    """`quantise`'s int8 rows as `pack` stores them; "" for no rows."""
    rows = np.asarray(rows, dtype=np.int8)
    if rows.size == 0:
        return ""
    return base64.b64encode(rows.tobytes()).decode("ascii")


def unpack(packed: str, dimension: int) -> np.ndarray:
    """The rows `pack` stored, normalised to unit length; shape (0, dimension) for ""."""
    if not packed:
        return np.zeros((0, dimension), dtype=np.float32)
    raw = np.frombuffer(base64.b64decode(packed), dtype=np.int8).astype(np.float32)
    return unit_rows(raw.reshape(-1, dimension))


def best_cosines(query: np.ndarray, packed: Sequence[str], dimension: int) -> list[float | None]:
    """For each packed chunk, its best sentence's cosine with the (unit) query vector; None without any."""
    query = unit_rows(np.asarray(query, dtype=np.float32).reshape(1, -1))[0]
    out: list[float | None] = []
    for value in packed:
        try:
            rows = unpack(value, dimension)
        except ValueError:  # binascii.Error too: a row not written by `pack` counts as none
            rows = ()
        out.append(float((rows @ query).max()) if len(rows) else None)
    return out


def scored_order(best: Sequence[float | None], *, fallback: Sequence[float], weight: float,
                 prior: float, prior_k: float, lift: Sequence[float] = ()) -> list[int]:
    """Positions of the candidates (given in search order), best score first.

    score = weight x best sentence cosine + prior / (prior_k + position) + lift, positions
    from 0: the search order's first few keep a head start that fades quickly, after which
    the best sentence decides. A candidate without sentence vectors (an index filled in
    part) scores with its `fallback` (its body cosine: its whole text as one sentence).
    `lift` adds a per-candidate amount (a FAQ entry's heading matching the question).
    Ties keep the search order.
    """
    if not best:
        return []
    scores = [
        weight * (b if b is not None else fallback[i]) + prior / (prior_k + i)
        + (lift[i] if i < len(lift) else 0.0)
        for i, b in enumerate(best)
    ]
    return sorted(range(len(best)), key=lambda i: (-scores[i], i))
