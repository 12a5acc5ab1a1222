"""Retrieval: embed the query, search (dense / BM25 / hybrid), de-duplicate,
rerank, expand split sections with their neighbours, and decide abstention."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from knowledge import evidence
from knowledge.abstention import AbstentionModel, missing_signals
from knowledge.abstention import signals as abstention_signals
from knowledge.abstention import warm_up as abstention_warm_up
from knowledge.errors import KnowledgeError
from knowledge.expansion import Expander
from knowledge.in_flight import question_in_flight
from knowledge.keywords import identifiers, keyword_query
from knowledge.rerank_budget import BudgetedReranker, RerankReport
from knowledge.settings import KnowledgeSettings
from knowledge.types import Candidate, Chunk, SourceFilter, as_source_filter

logger = logging.getLogger(__name__)

Mode = Literal["dense", "bm25", "hybrid"]
MODES: tuple[str, ...] = ("dense", "bm25", "hybrid")

# Extra candidates fetched so that dropping duplicates still leaves top_k.
_DEDUPE_MARGIN = 5
# Each side of a hybrid search contributes this many times the candidates asked for.
# Deeper lists won one dev item in bfloat16, lost it in float32 and lowered MRR on
# both eval sets (docs/answer-quality.md).
HYBRID_DEPTH_FACTOR = 1
# How many of the title vector's best hits take part in fusion (docs/answer-quality.md).
TITLE_DEPTH = 1
# A section headed by a question (a FAQ entry) gains this times its title cosine in
# weighted fusion: it answers a question, and when its heading matches the one asked it
# should not lose to a page that only mentions the same words. Chosen on the dev set
# (0.04-0.06 alike; docs/answer-quality.md).
QUESTION_HEADING_BONUS = 0.05
# How many keyword hits quoting an identifier verbatim are kept among the candidates.
EXACT_MATCHES = 2
# Without identifiers, the best of the keyword side's first hits that fusion left out
# takes the last candidate slot (measured on two eval sets in docs/answer-quality.md).
KEYWORD_SLOT_DEPTH = 3

# Sentence evidence (knowledge.evidence): the hybrid candidates plus the dense side's
# first SENTENCE_POOL_FACTOR x top_k are ordered by SENTENCE_WEIGHT x their best sentence's
# cosine + SEARCH_PRIOR / (SEARCH_PRIOR_K + position in the search order) + for a section
# headed by a question, QUESTION_TITLE_WEIGHT x its heading's cosine. Chosen on the dev set
# and the two tuning files together, none held out (docs/answer-quality.md).
SENTENCE_POOL_FACTOR = 2
SEARCH_PRIOR = 0.45
SEARCH_PRIOR_K = 3
QUESTION_TITLE_WEIGHT = 0.2
# The search order's first few stay among the candidates whatever their sentences score: a
# passage ranked high for a rare word the embedder cannot read (a product's own name) may
# have no sentence the embedder finds close. Changes no eval figure (docs/answer-quality.md).
SEARCH_KEPT = 3

# Overlap between consecutive parts is at most this many characters worth searching.
_MAX_OVERLAP_CHARS = 4000
# A shorter shared seam is more likely coincidence than overlap.
_MIN_OVERLAP_CHARS = 16


@dataclass
class RetrievalResult:
    """Candidates before reranking (retrieval order) and the final passages."""

    candidates_top_k: list[Candidate] = field(default_factory=list)
    reranked_top_n: list[Candidate] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    mode: str = "dense"
    reranked: bool = False
    query: str = ""  # what was searched (abstention reads its words)
    rerank: RerankReport = field(default_factory=RerankReport)  # what reranking did, and why


class Retriever:
    """Turns a query into the few passages the answer is built from."""

    def __init__(self, *, embedder, store, reranker=None, settings: KnowledgeSettings) -> None:
        self.embedder = embedder
        self.store = store
        self.reranker = reranker
        self.settings = settings
        # Learns the index vocabulary on first use (expansion, abstention signals).
        self.expander = Expander(store=store)
        self.abstention = load_abstention_model(settings)
        # What of the candidates to rerank within ANSWER_BUDGET_MS (knowledge/rerank_budget.py).
        self.rerank_budget = None if reranker is None else BudgetedReranker(
            reranker=reranker,
            budget_ms=settings.answer_budget_ms,
            skip_when_sure=settings.rerank_skip_when_sure,
        )

    def retrieve(
        self,
        query: str,
        *,
        mode: str | None = None,
        rerank: bool | None = None,
        source_names: Sequence[str] | SourceFilter | None = None,
    ) -> RetrievalResult:
        """Search, de-duplicate, rerank (when on and a reranker exists), expand.

        Raises ValueError for an unknown mode; store and model errors pass through
        as their knowledge.errors types.
        """
        with question_in_flight():  # model calls share the cores by the questions at this stage
            return self._retrieve(query, mode=mode, rerank=rerank, source_names=source_names)

    def _retrieve(
        self,
        query: str,
        *,
        mode: str | None,
        rerank: bool | None,
        source_names: Sequence[str] | SourceFilter | None,
    ) -> RetrievalResult:
        mode = mode or self.settings.retrieval_mode
        if mode not in MODES:
            raise ValueError(f"Unknown retrieval mode {mode!r}; use dense, bm25 or hybrid.")
        use_reranker = self.reranker is not None and (rerank is None or rerank)
        timings = {"embed": 0.0, "search": 0.0, "rerank": 0.0}
        result = RetrievalResult(timings_ms=timings, mode=mode, reranked=use_reranker, query=query)
        if not query.strip():
            return result

        started = time.perf_counter()
        # BM25 needs no vector, unless the backend lacks BM25 and falls back to dense.
        needs_vector = mode != "bm25" or not getattr(self.store, "supports_hybrid", True)
        vector = self.embedder.embed_query(query) if needs_vector else None
        timings["embed"] = _ms(started)

        started = time.perf_counter()
        candidates = self._search(query, vector, mode, source_names)
        timings["search"] = _ms(started)
        for rank, candidate in enumerate(candidates, start=1):
            candidate.rank = rank
        result.candidates_top_k = candidates

        started = time.perf_counter()
        top_n = self.settings.rerank_top_n
        final = [dataclasses.replace(c) for c in candidates]
        if use_reranker and final:
            keywords = keyword_query(query) if mode == "hybrid" else ""
            scores, result.rerank = self.rerank_budget.scores(
                query,
                final,
                spent_ms=timings["embed"] + timings["search"],
                keyword_hits=(lambda: self.store.search_bm25(
                    keywords, limit=2, source_names=as_source_filter(source_names)))
                if keywords and getattr(self.store, "supports_hybrid", False) else None,
            )
            result.reranked = result.rerank.reranked > 0
            # The retrieved list keeps the scores too: `ask --json` shows every candidate's.
            for candidate, retrieved, score in zip(final, candidates, scores):
                candidate.rerank_score = retrieved.rerank_score = score
            # Stable sort: ties keep retrieval order; candidates the budget left unscored follow.
            final.sort(key=lambda c: -(c.rerank_score if c.rerank_score is not None else -1.0))
        timings["rerank"] = _ms(started)
        final = final[:top_n]
        for rank, candidate in enumerate(final, start=1):
            candidate.rank = rank

        started = time.perf_counter()
        result.reranked_top_n = self._expand(final)
        timings["search"] += _ms(started)
        return result

    def should_abstain(self, result: RetrievalResult) -> bool:
        """True when the best passage is too weak to answer from.

        With a fitted abstention model for this embedder and reranking setting
        (knowledge.abstention): its calibrated decision over several signals.
        Otherwise with reranking: best rerank score < abstain_threshold; without:
        best dense score < abstain_dense_threshold. BM25-only results carry no
        calibrated score, so they never abstain unless empty.
        """
        passages = result.reranked_top_n
        if not passages:
            return True
        model = self.abstention_for(result)
        if model is not None:
            return model.declines(self.signals(result, features=model.features))
        rerank_scores = [c.rerank_score for c in passages if c.rerank_score is not None]
        if rerank_scores:
            return max(rerank_scores) < self.settings.abstain_threshold
        dense_scores = [c.dense_score for c in result.candidates_top_k if c.dense_score is not None]
        if dense_scores:
            return max(dense_scores) < self.settings.abstain_dense_threshold
        return False

    def signals(self, result: RetrievalResult, *, features=None) -> dict[str, float]:
        """The abstention signals of a result (knowledge.abstention.signals); `features`:
        only those a model needs must be exact."""
        return abstention_signals(result, result.query, self.expander.vocabulary(), features=features)

    def abstention_for(self, result: RetrievalResult) -> AbstentionModel | None:
        """The fitted abstention model that applies to this result, None when none does."""
        model = self.abstention
        if model is None or result.mode == "bm25":
            return None
        score = "rerank" if any(c.rerank_score is not None for c in result.reranked_top_n) else "dense"
        if model.score != score:
            return None
        model_id = getattr(self.embedder, "model_id", "")
        if model.model_id and model_id and model.model_id != model_id:
            return None
        if missing_signals(result) & set(model.features):
            return None  # fitted on a signal this result lacks (weighing off, an older index)
        return model

    # Steps ---------------------------------------------------------------------
    def _search(self, query: str, vector, mode: str, source_names) -> list[Candidate]:
        top_k = self.settings.retrieve_top_k
        limit = top_k + _DEDUPE_MARGIN
        names = as_source_filter(source_names)  # a list of names or a SourceFilter (bot.access)
        if mode == "dense":
            found = self.store.search_dense(vector, limit=limit, source_names=names)
        elif mode == "bm25":
            # Not expanded: the heading words help beside the dense side, but alone they
            # outweigh the question's own words (docs/answer-quality.md).
            found = self.store.search_bm25(
                keyword_query(query) or query, limit=limit, source_names=names, vector=vector,
            )
        else:
            # A Chinese question without identifiers searches no keywords ("" here): over
            # the standard analyzer they would only drown the dense sides. The store
            # itself falls back to dense where hybrid is unsupported.
            keywords = self._expanded(query, keyword_query(query))
            found = self.store.search_hybrid(
                vector,
                keywords,
                limit=limit,
                fusion=self.settings.fusion,
                rrf_k=self.settings.rrf_k,
                weights=(self.settings.dense_weight, self.settings.bm25_weight),
                title_weight=self.settings.title_weight,
                title_depth=TITLE_DEPTH,
                source_names=names,
                depth=limit * HYBRID_DEPTH_FACTOR,
                evidence=self._weighs_sentences(),  # read with the hits: no second round trip
            )
            if self.settings.fusion == "weighted":  # RRF scores are on another scale
                found = favour_question_headings(found)
            if self._weighs_sentences():
                found = self._weigh_sentences(dedupe(found)[:top_k], vector, names)
            if keywords:
                # After the sentence-evidence order: a passage only the keywords found (an exact
                # identifier) has no reason to match by sentence, and must stay in.
                found = self._keep_keyword_hits(found, query, keywords, limit, names)
        return dedupe(found)[:top_k]

    def _weighs_sentences(self) -> bool:
        settings = self.settings
        return (settings.sentence_vectors and settings.sentence_weight > 0
                and getattr(self.store, "has_sentence_vectors", False))

    def _weigh_sentences(self, found: list[Candidate], vector, names) -> list[Candidate]:
        """Re-order the candidates, and the dense side's next best, by their best sentence too.

        A section whose answer is one sentence among many scores low as a whole; its
        best sentence does not. Each is scored by its best sentence's cosine, a head start
        fading with its place in the search order and, for a FAQ entry, its heading's
        cosine (evidence.scored_order); the search order's first SEARCH_KEPT stay in.
        """
        top_k = self.settings.retrieve_top_k
        present = {c.chunk.id for c in found}
        deeper = self.store.search_dense(vector, limit=top_k * SENTENCE_POOL_FACTOR, source_names=names,
                                         evidence=True)
        pool = dedupe([*found, *(c for c in deeper if c.chunk.id not in present)])
        # Read with the searches' hits; only those that came without (a keyword-only fallback) are fetched.
        packed = {c.chunk.id: c.sentences for c in pool if c.sentences is not None}
        missing = [c.chunk.id for c in pool if c.sentences is None]
        if missing:
            packed.update(self.store.sentence_vectors(missing))
        if not any(packed.values()):
            return found  # indexed with SENTENCE_VECTORS=false
        best = evidence.best_cosines(vector, [packed.get(c.chunk.id, "") for c in pool], len(vector))
        for candidate, score in zip(pool, best):
            candidate.sentence_score = score
        order = evidence.scored_order(
            best, fallback=[c.dense_score or 0.0 for c in pool], weight=self.settings.sentence_weight,
            prior=SEARCH_PRIOR, prior_k=SEARCH_PRIOR_K, lift=self._question_lift(pool, vector))
        head = [pool[i] for i in order][:top_k]
        shown = {c.chunk.id for c in head}
        kept = [c for c in pool[:SEARCH_KEPT] if c.chunk.id not in shown]
        if not kept:
            return head
        # Ahead of the last EXACT_MATCHES places, which the keyword side's hits may take next.
        at = max(0, min(len(head), top_k - len(kept)) - EXACT_MATCHES)
        return [*head[:at], *kept, *head[at:]][:top_k]

    def _question_lift(self, pool: list[Candidate], vector) -> list[float]:
        """QUESTION_TITLE_WEIGHT x the heading's cosine for sections headed by a question (FAQ
        entries: a user's question is most often a paraphrase of one), 0 for the others.
        The dense side's extra hits carry no title cosine yet: it is read from the store."""
        asked = [headed_by_a_question(c.chunk) for c in pool]
        missing = [c.chunk.id for c, question in zip(pool, asked) if question and c.title_score is None]
        if missing:
            scores = self.store.title_scores(missing, vector)
            for candidate in pool:
                if candidate.chunk.id in scores and candidate.title_score is None:
                    candidate.title_score = scores[candidate.chunk.id]
        return [QUESTION_TITLE_WEIGHT * max(0.0, c.title_score or 0.0) if question else 0.0
                for c, question in zip(pool, asked)]

    def _expanded(self, query: str, keywords: str) -> str:
        """The keyword query plus the docs' words for its topic, when expansion is on."""
        if not keywords or not self.settings.query_expansion:
            return keywords
        return self.expander.expand(query, keywords, terms=self.settings.expansion_terms)

    def _keep_keyword_hits(
        self, found: list[Candidate], query: str, keywords: str, limit: int, names
    ) -> list[Candidate]:
        """Let the keyword side's strongest hits in where fusion left them out.

        Identifiers first: when some (a parameter name, an error string, a version)
        are quoted by no top-k candidate yet, the best EXACT_MATCHES keyword hits for
        them that quote one verbatim go in ahead of the tail; an identifier already
        quoted (a file name like milvus.yaml that half the docs mention) displaces
        nothing. Otherwise the best of the keyword side's first KEYWORD_SLOT_DEPTH
        hits that fusion left out takes the last slot: weighted fusion favours the
        dense side and would never admit a passage only BM25 finds.
        """
        if not getattr(self.store, "supports_hybrid", False):
            return found
        top_k = self.settings.retrieve_top_k
        head = found[:top_k]
        present = {c.chunk.id for c in head}
        wanted = [term.lower() for term in identifiers(query) if len(term) >= 3]
        quoted = [c.chunk.search_text.lower() for c in head]  # search_text is built on each access
        missing = [t for t in wanted if not any(t in text for text in quoted)]
        if missing:
            hits = self.store.search_bm25(" ".join(missing), limit=EXACT_MATCHES, source_names=names)
            extra = [
                c for c in hits
                if c.chunk.id not in present and any(t in c.chunk.search_text.lower() for t in missing)
            ]
        elif wanted:
            extra = []  # every identifier is quoted already
        else:
            hits = self.store.search_bm25(keywords, limit=KEYWORD_SLOT_DEPTH, source_names=names)
            extra = [c for c in hits if c.chunk.id not in present][:1]
        if not extra:
            return found
        keep = max(0, top_k - len(extra))
        ids = {c.chunk.id for c in extra}
        return [*found[:keep], *extra, *(c for c in found[keep:] if c.chunk.id not in ids)][:limit]

    def _expand(self, passages: list[Candidate]) -> list[Candidate]:
        """Join each passage with the parts before/after it when its section was split."""
        if not passages:
            return passages
        from knowledge.chunking import chunk_id  # the id scheme lives with the chunker

        present = {c.chunk.id for c in passages}
        wanted: dict[str, tuple[str, int]] = {}  # neighbour id -> (passage id, offset)
        for candidate in passages:
            chunk = candidate.chunk
            occurrence = _occurrence(chunk, chunk_id)
            if occurrence is None:
                continue  # an id from another scheme: no safe way to name its neighbours
            for offset in (-1, 1):
                ordinal = chunk.ordinal + offset
                if ordinal < 0:
                    continue
                neighbour = chunk_id(
                    chunk.source_name, chunk.source, chunk.heading_path, ordinal, occurrence
                )
                if neighbour not in present:
                    wanted[neighbour] = (chunk.id, offset)
        if not wanted:
            return passages
        fetched = {chunk.id: chunk for chunk in self.store.get(list(wanted))}
        expanded = []
        for candidate in passages:
            chunk = candidate.chunk
            before = after = None
            for neighbour_id, (owner, offset) in wanted.items():
                if owner != chunk.id or neighbour_id not in fetched:
                    continue
                if offset < 0:
                    before = fetched[neighbour_id]
                else:
                    after = fetched[neighbour_id]
            text = chunk.text
            if before is not None:
                text = join_overlapping(before.text, text)
            if after is not None:
                text = join_overlapping(text, after.text)
            if text != chunk.text:
                candidate = dataclasses.replace(candidate, chunk=dataclasses.replace(chunk, text=text))
            expanded.append(candidate)
        return expanded


def favour_question_headings(found: list[Candidate]) -> list[Candidate]:
    """Add QUESTION_HEADING_BONUS x title cosine to the fused score of sections headed by
    a question, and re-sort (stable: other ties keep Milvus's order)."""
    for candidate in found:
        if headed_by_a_question(candidate.chunk) and candidate.title_score is not None:
            candidate.fused_score = (candidate.fused_score or 0.0) + QUESTION_HEADING_BONUS * max(
                0.0, candidate.title_score)
    return sorted(found, key=lambda c: -(c.fused_score or 0.0))


def headed_by_a_question(chunk: Chunk) -> bool:
    """A section whose own heading is a question (a FAQ entry)."""
    heading = chunk.heading_path[-1].rstrip() if chunk.heading_path else ""
    return heading.endswith(("?", "？"))


def load_abstention_model(settings: KnowledgeSettings) -> AbstentionModel | None:
    """The saved abstention model (ABSTENTION_MODEL), None when absent or unreadable."""
    try:
        model = AbstentionModel.load(settings.abstention_model_path)
    except KnowledgeError as error:
        logger.warning("%s Using the plain thresholds.", error)
        return None
    abstention_warm_up(model)
    return model


def _occurrence(chunk: Chunk, chunk_id, limit: int = 16) -> int | None:
    """Which repeat of its heading path in the file a chunk is (ids encode it)."""
    for occurrence in range(limit):
        if chunk_id(chunk.source_name, chunk.source, chunk.heading_path, chunk.ordinal,
                    occurrence) == chunk.id:
            return occurrence
    return None


def dedupe(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Drop later candidates with the same content (hash, else normalised text)."""
    seen: set[str] = set()
    kept: list[Candidate] = []
    for candidate in candidates:
        key = _content_key(candidate.chunk)
        if key in seen:
            continue
        seen.add(key)
        kept.append(candidate)
    return kept


def _content_key(chunk: Chunk) -> str:
    # The text alone: the same paragraph reached through two sources or an include
    # is one passage even if the chunker hashed its breadcrumb in.
    return " ".join(chunk.text.split()).lower() or chunk.content_hash or chunk.id


def join_overlapping(first: str, second: str) -> str:
    """Concatenate two consecutive parts, dropping the text they share at the seam."""
    if not first:
        return second
    if not second:
        return first
    tail_start = max(0, len(first) - _MAX_OVERLAP_CHARS)
    probe = second[:_MIN_OVERLAP_CHARS]
    if len(probe) == _MIN_OVERLAP_CHARS:
        for match in re.finditer(re.escape(probe), first[tail_start:]):
            start = tail_start + match.start()
            shared = first[start:]
            if second.startswith(shared):
                return first + second[len(shared):]
    return f"{first.rstrip()}\n\n{second.lstrip()}"


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
