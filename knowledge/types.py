"""Plain data passed between the knowledge layer's parts and to `bot`."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Literal

BREADCRUMB_SEPARATOR = " › "

# `[text](url)` / `![alt](url)`: URLs carry no meaning for search and their
# path fragments drown short sections in the embedding (a FAQ answer with six
# links fell from first to third), so only the link text is searched.
_MARKDOWN_LINK = re.compile(r"!?\[([^\]\n]*)\]\((?:[^()\s]|\([^()\s]*\))*(?:\s+\"[^\"]*\")?\)")


def strip_link_targets(markdown: str) -> str:
    """Replace Markdown links and images by their text."""
    return _MARKDOWN_LINK.sub(r"\1", markdown)


@dataclass(frozen=True)
class Document:
    """One file read from a source, before chunking."""

    source: str  # path relative to the source root, e.g. "faq/product_faq.md"
    text: str  # file text with includes resolved (front matter and comments still in place)
    source_name: str = "docs"  # the name of the KNOWLEDGE_SOURCES entry it came from
    # Where the document itself lives, as a link template ("file:///srv/docs/a.md#{anchor}",
    # "https://site/page#{anchor}"): cited when DOCS_BASE_URL is not set, and always for web pages.
    link: str = ""
    url: str = ""  # where its chunks link to, whatever the template (a team answer's Slack thread)


@dataclass(frozen=True)
class Chunk:
    """A section (or part of one) of a document, the unit that is indexed and cited."""

    id: str  # stable: source name + path + heading path + ordinal
    source: str
    title: str  # the document title (its first H1, or the file name)
    heading_path: tuple[str, ...]  # headings below the title, outermost first
    anchor: str  # the URL fragment of the innermost heading ("" for the top)
    url: str
    text: str  # the passage as shown to the model and the user
    ordinal: int = 0  # part number when a long section was split (0, 1, ...)
    content_hash: str = ""
    source_name: str = "docs"

    @property
    def breadcrumb(self) -> str:
        """"Title › Heading › Subheading", what a citation shows."""
        return BREADCRUMB_SEPARATOR.join((self.title, *self.heading_path))

    @property
    def search_text(self) -> str:
        """The text that is embedded and keyword-indexed: breadcrumb, then passage (no link URLs)."""
        return f"{self.breadcrumb}\n\n{strip_link_targets(self.text)}"


@dataclass
class Candidate:
    """A retrieved chunk with the scores each stage gave it."""

    chunk: Chunk
    dense_score: float | None = None  # cosine similarity of the query and chunk vectors
    bm25_score: float | None = None
    title_score: float | None = None  # cosine of the query and the section title's vector
    fused_score: float | None = None  # the score that ordered retrieval (RRF/weighted/dense)
    rerank_score: float | None = None  # probability of "yes" from the reranker
    sentence_score: float | None = None  # cosine of the query and the best sentence (knowledge.evidence)
    sentences: str | None = None  # its sentences' packed vectors, when the search returned them
    rank: int = 0  # 1-based position after the final ordering

    def to_dict(self) -> dict:
        chunk = self.chunk
        return {
            "rank": self.rank,
            "id": chunk.id,
            "source": chunk.source,
            "source_name": chunk.source_name,
            "title": chunk.title,
            "heading_path": list(chunk.heading_path),
            "url": chunk.url,
            "text": chunk.text,
            "dense_score": self.dense_score,
            "bm25_score": self.bm25_score,
            "title_score": self.title_score,
            "fused_score": self.fused_score,
            "rerank_score": self.rerank_score,
            "sentence_score": self.sentence_score,
        }


@dataclass(frozen=True)
class Citation:
    """A numbered source as the answer's `[n]` markers refer to it."""

    number: int
    title: str
    heading_path: tuple[str, ...]
    url: str
    source: str
    source_name: str = ""  # the KNOWLEDGE_SOURCES entry (who may read it); "" in older records

    @property
    def breadcrumb(self) -> str:
        return BREADCRUMB_SEPARATOR.join((self.title, *self.heading_path))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["heading_path"] = list(self.heading_path)
        return data


@dataclass(frozen=True)
class SourceFilter:
    """Which sources a search may draw on: the store turns it into a filter on the typed field.

    `only` None means every source; `exclude` wins over `only` (a restricted source the
    asker may not read stays out even when a channel's CHANNEL_SOURCES lists it).
    `exclude_prefix` keeps out every source whose name starts with it except those in
    `allow`, names known or not (bot.access: private channels' saved answers, fail closed).
    """

    only: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    exclude_prefix: str = ""
    allow: tuple[str, ...] = ()

    @property
    def restricts(self) -> bool:
        return self.only is not None or bool(self.exclude) or bool(self.exclude_prefix)


def as_source_filter(value) -> SourceFilter | None:
    """None, a list of source names (empty: all) or a SourceFilter -> a SourceFilter or None (no filter)."""
    if value is None:
        return None
    if isinstance(value, SourceFilter):
        return value if value.restricts else None
    names = tuple(value)
    return SourceFilter(only=names) if names else None


@dataclass(frozen=True)
class Turn:
    """One earlier message of a conversation (a Slack thread, the terminal chat)."""

    role: Literal["user", "assistant"]
    text: str


AnswerStatus = Literal["answered", "abstained", "retrieval_only"]


@dataclass
class Answer:
    """Everything one question produced: the text, its sources and how it was made."""

    question: str
    text: str
    status: AnswerStatus
    citations: list[Citation] = field(default_factory=list)
    passages: list[Candidate] = field(default_factory=list)  # what the answer was built from
    candidates: list[Candidate] = field(default_factory=list)  # everything retrieved, final order
    timings_ms: dict[str, float] = field(default_factory=dict)
    search_query: str = ""  # the standalone query retrieval used (after follow-up rewriting)
    language: str = "en"  # the language of the question ("en", "zh", ...)
    note: str = ""  # why the answer is not a model answer (no API key, model failed, ...)
    model_failed: bool = False  # a model was configured but gave no answer (down, refused, timed out)
    # What reranking did within the answer budget: strategy (whole, windows, skipped, off),
    # reason (budget, sure), how many candidates were reranked, window size, timings.
    rerank: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "question": self.question,
            "answer": self.text,
            "status": self.status,
            "citations": [c.to_dict() for c in self.citations],
            "passages": [c.rank for c in self.passages],
            "candidates": [c.to_dict() for c in self.candidates],
            "timings_ms": self.timings_ms,
            "search_query": self.search_query,
            "language": self.language,
            "note": self.note,
            "model_failed": self.model_failed,
            "rerank": self.rerank,
        }


@dataclass
class RefreshReport:
    """What one refresh or rebuild of the index did."""

    documents: int = 0
    chunks: int = 0
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    seconds: float = 0.0
    rebuilt: bool = False
    collection: str = ""
    failed: dict[str, str] = field(default_factory=dict)  # source name -> why it could not be read (kept as it was)
    problems: dict[str, list[str]] = field(default_factory=dict)  # source name -> pages or files that failed

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def chunks_per_second(self) -> float:
        embedded = self.added + self.updated
        return embedded / self.seconds if self.seconds > 0 else 0.0
