"""The docs' own vocabulary, learned from the index: which words its sections use,
how rare each is, and which heading words and identifiers go with them.

Built from the indexed rows (the stemmed ``search_text`` Milvus keeps for BM25, and
each chunk's title and heading path), so every process serving an index sees the
same table without a side file. Used by ``knowledge.expansion`` (symptom words ->
the headings and identifiers of the sections that use them) and by
``knowledge.abstention`` (a question whose words the docs never use).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from knowledge.keywords import STOP_WORDS, analyze, keyword_query

_TOKEN = re.compile(r"[a-z0-9]+")
_WORD = re.compile(r"[A-Za-z0-9]+")
# Stop words as the analyzer leaves them ("was" -> "wa"), to drop from stemmed text.
_STEMMED_STOP = frozenset(analyze(word) for word in STOP_WORDS)
# Heading words present in more sections than this share (and this count) say nothing
# about a topic ("guide", "milvus").
_COMMON_HEADING_SHARE = 0.05
_COMMON_HEADING_MIN = 3
# How many of the sections using the question's words most lend their heading words.
RELATED_SECTIONS = 10


def terms(analyzed: str) -> list[str]:
    """Content terms of text already passed through ``keywords.analyze``."""
    return [t for t in _TOKEN.findall(analyzed) if t not in _STEMMED_STOP and not t.isdigit()]


def query_terms(question: str) -> list[str]:
    """The question's keyword terms, analysed like the index (unique, in order)."""
    return list(dict.fromkeys(terms(analyze(keyword_query(question)))))


@dataclass
class Vocabulary:
    """Document frequencies of body terms, and the heading terms of every section."""

    sections: int = 0
    df: dict[str, int] = field(default_factory=dict)  # term -> sections whose text uses it
    postings: dict[str, np.ndarray] = field(default_factory=dict)  # term -> section indexes
    heading_terms: list[tuple[str, ...]] = field(default_factory=list)  # per section
    heading_df: dict[str, int] = field(default_factory=dict)
    surface: dict[str, str] = field(default_factory=dict)  # heading term -> a word it came from
    lengths: np.ndarray | None = None  # distinct terms per section

    @classmethod
    def build(cls, rows: Iterable[dict]) -> Vocabulary:
        """From store rows holding ``search_text`` (analysed), ``title`` and ``heading_path``."""
        postings: dict[str, list[int]] = defaultdict(list)
        heading_terms: list[tuple[str, ...]] = []
        heading_df: Counter[str] = Counter()
        surface: dict[str, str] = {}
        lengths: list[int] = []
        for index, row in enumerate(rows):
            distinct = set(terms(row.get("search_text") or ""))
            lengths.append(len(distinct))
            for term in distinct:
                postings[term].append(index)
            heading = f"{row.get('title') or ''} {row.get('heading_path') or ''}"
            words = []
            for word in _WORD.findall(heading):
                word = word.lower()
                if word in STOP_WORDS or word.isdigit():
                    continue
                stem = analyze(word)
                surface.setdefault(stem, word)
                words.append(stem)
            heading_terms.append(tuple(dict.fromkeys(words)))
            heading_df.update(heading_terms[-1])
        return cls(
            sections=len(heading_terms),
            df={term: len(ids) for term, ids in postings.items()},
            postings={term: np.asarray(ids, dtype=np.int32) for term, ids in postings.items()},
            heading_terms=heading_terms,
            heading_df=dict(heading_df),
            surface=surface,
            lengths=np.asarray(lengths, dtype=np.float32),
        )

    def idf(self, term: str) -> float:
        return math.log((self.sections + 1) / (self.df.get(term, 0) + 0.5))

    def unknown_share(self, question: str) -> float:
        """Share of the question's keyword terms that no indexed section uses (0 when none)."""
        wanted = query_terms(question)
        if not wanted or not self.sections:
            return 0.0
        return sum(1 for t in wanted if t not in self.df) / len(wanted)

    def related_heading_terms(self, question: str, *, limit: int) -> list[tuple[str, float]]:
        """Heading words of the sections that use most of the question's words (as written
        in a heading, with their weight), best first.

        The sections are ranked by the summed rarity (idf) of the question's terms they
        use over the square root of their vocabulary size; the heading words shared by at least two of the best RELATED_SECTIONS are
        kept, weighted by those sections' scores. Heading words already in the
        question, and words heading a large share of the docs ("guide", "milvus"), are
        left out.
        """
        wanted = [t for t in query_terms(question) if t in self.postings]
        if not wanted or not self.sections:
            return []
        scores = np.zeros(self.sections, dtype=np.float32)
        for term in wanted:
            scores[self.postings[term]] += self.idf(term)
        # Long pages (tutorials) use some of any question's words: favour focused sections.
        scores /= np.sqrt(np.maximum(self.lengths, 1.0))
        best = [int(i) for i in np.argsort(-scores)[:RELATED_SECTIONS] if scores[i] > 0]
        votes: Counter[str] = Counter()
        seen: Counter[str] = Counter()
        for index in best:
            for word in self.heading_terms[index]:
                votes[word] += float(scores[index])
                seen[word] += 1
        common = max(_COMMON_HEADING_MIN, self.sections * _COMMON_HEADING_SHARE)
        asked = set(wanted)
        ranked = [
            (self.surface.get(word, word), score) for word, score in votes.most_common()
            if seen[word] >= 2 and word not in asked and self.heading_df.get(word, 0) <= common
        ]
        return ranked[:limit]
