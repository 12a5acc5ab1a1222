"""Reranking within a latency budget, for any reranker with `.score(query, documents)`.

On a CPU without fast bfloat16 matmuls, reranking ten whole passages takes several
seconds. `BudgetedReranker` knows what one token of reranker input costs on this
machine (timed once, then an average of live calls) and, per question, reranks as
much as fits in what the budget leaves after embedding and search:

1. every candidate's whole text;
2. else every candidate's best window: the breadcrumb plus the run of sentences that
   shares most of the question's (stemmed, rarer-weighted) keywords, as long as fits;
3. else fewer candidates, the lowest fused ranks dropping first, at the smallest window;
4. else nothing (the answer then rests on retrieval's order and the dense threshold).

Independently, when dense and keyword search agree on the first passage by a clear
margin (`retrieval_is_sure`), only that passage is reranked, for the abstain decision.
Nothing here calls a model other than the reranker's `score`.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from knowledge.errors import ModelServerError
from knowledge.evidence import split_sentences
from knowledge.keywords import analyze, keyword_query
from knowledge.types import Candidate, Chunk

log = logging.getLogger(__name__)

# The smallest window worth scoring: about two sentences.
MIN_WINDOW_TOKENS = 64
# Reranker input per question that the texts do not show, for a reranker that does not say
# (Qwen3-Reranker's system prompt, instruction and labels: ~60 tokens). The in-process reranker
# says: `question_overhead_tokens` (0: that part is cached across questions) and
# `document_overhead_tokens` (the labels after each document).
PROMPT_TOKENS = 64
# Weight of a new timing in the running cost per token.
COST_SMOOTHING = 0.3
# A timing this far below the estimate is a cache hit, not the machine getting faster.
CACHE_HIT_RATIO = 0.25
# Plan for this share of what is left: the estimate is an average, a call can be slower.
PLAN_SHARE = 0.9
# The sure-rule, measured with the MiniLM stand-in over the whole en/ tree on both eval sets
# (docs/performance.md): dense and keyword search put the same passage first, it leads the
# next dense score by at least this much, and the keyword side's second hit scores at most
# this share of its first. Fired on 7 of 56 English questions, never where another candidate
# was the right one (0.05 / 0.8 fired on 11 and was wrong once).
SURE_DENSE_MARGIN = 0.08
SURE_KEYWORD_RATIO = 0.9
# After this many questions skipped for the budget, the next reranks its first candidate's
# smallest window anyway: otherwise a slow spell (other load) would stop reranking for good.
PROBE_EVERY = 8

_TOKEN = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]")


def estimate_tokens(text: str) -> int:
    """A tokenizer-free token count: words, digits, and every other character on its own.

    Close to BPE counts for prose (a word is usually one token), code (symbols split) and
    CJK (about a token per character); the cost per token is fitted on the same count.
    """
    return len(_TOKEN.findall(text))


@dataclass
class RerankReport:
    """What one question's reranking did (`Answer.rerank`, `supportbot ask --json`)."""

    strategy: str = "off"  # whole | windows | skipped | failed | off
    reason: str = ""  # why not everything whole: budget, sure; for failed, the server's one line
    candidates: int = 0  # retrieved
    reranked: int = 0  # of them, scored by the reranker (the first by fused rank)
    window_tokens: int | None = None  # each scored text's cap when windowed
    budget_ms: float = 0.0  # what the answer budget left for reranking
    estimated_ms: float = 0.0
    rerank_ms: float = 0.0
    ms_per_token: float | None = None  # this machine's cost as known before the call

    def to_dict(self) -> dict:
        return asdict(self)


class RerankCost:
    """Milliseconds per token of reranker input on this machine: a smoothed average of timings."""

    def __init__(self, *, smoothing: float = COST_SMOOTHING) -> None:
        self.smoothing = smoothing
        self.ms_per_token: float | None = None
        self._lock = threading.Lock()

    def estimate_ms(self, tokens: int) -> float | None:
        """The expected time for `tokens`, or None before the first timing."""
        with self._lock:
            return None if self.ms_per_token is None else self.ms_per_token * tokens

    def observe(self, tokens: int, ms: float) -> None:
        """Fold in one call's timing; cache hits (far faster than expected) are ignored."""
        if tokens <= 0 or ms <= 0:
            return
        sample = ms / tokens
        with self._lock:
            current = self.ms_per_token
            if current is None:
                self.ms_per_token = sample
            elif sample >= CACHE_HIT_RATIO * current:
                self.ms_per_token = (1 - self.smoothing) * current + self.smoothing * sample


def query_terms(query: str, texts: Sequence[str]) -> dict[str, float]:
    """The question's keywords (as the BM25 side analyses them), weighted by rarity among `texts`."""
    terms = set(analyze(keyword_query(query)).lower().split())
    if not terms:
        return {}
    analysed = [analyze(text).lower() for text in texts]
    count = max(1, len(analysed))
    return {
        term: math.log(1 + count / (1 + sum(term in text for text in analysed)))
        for term in terms
    }


def best_window(chunk: Chunk, terms: dict[str, float], max_tokens: int) -> str:
    """The chunk's search text cut to about `max_tokens`: its breadcrumb, then the run of
    sentences that holds the most (weighted) question terms. The whole text when it fits;
    the opening when no term matches (a section usually starts with its point)."""
    whole = chunk.search_text
    if estimate_tokens(whole) <= max_tokens:
        return whole
    header = chunk.breadcrumb
    room = max(8, max_tokens - estimate_tokens(header))
    units = split_sentences(chunk.text)
    sizes = [estimate_tokens(u) for u in units]
    analysed = [analyze(u).lower() for u in units]
    best_start, best_end, best_score = 0, 0, -1.0
    for start in range(len(units)):
        end, used, found = start, 0, set()
        while end < len(units) and (end == start or used + sizes[end] <= room):
            used += sizes[end]
            found.update(t for t in terms if t in analysed[end])
            end += 1
        score = sum(terms[t] for t in found)
        if score > best_score:  # ties keep the earliest window
            best_start, best_end, best_score = start, end, score
    body = " ".join(units[best_start:best_end])
    if estimate_tokens(body) > room:  # one sentence longer than the room: its opening
        body = _first_tokens(body, room)
    return f"{header}\n\n{body}"


def _first_tokens(text: str, tokens: int) -> str:
    matches = list(_TOKEN.finditer(text))
    return text if len(matches) <= tokens else text[: matches[tokens].start()].rstrip()


def retrieval_is_sure(
    candidates: Sequence[Candidate],
    keyword_hits: Sequence[Candidate],
    *,
    dense_margin: float = SURE_DENSE_MARGIN,
    keyword_ratio: float = SURE_KEYWORD_RATIO,
) -> bool:
    """True when dense and keyword search agree on the first passage by a clear margin.

    `candidates` in fused order with their dense scores; `keyword_hits` the keyword side's
    own first hits with their BM25 scores (at least two for a margin).
    """
    if len(candidates) < 2 or not keyword_hits:
        return False
    first = candidates[0]
    dense = sorted((c.dense_score for c in candidates if c.dense_score is not None), reverse=True)
    if first.dense_score is None or len(dense) < 2 or first.dense_score < dense[0]:
        return False
    if first.dense_score - dense[1] < dense_margin:
        return False
    if keyword_hits[0].chunk.id != first.chunk.id:
        return False
    top = keyword_hits[0].bm25_score or 0.0
    second = (keyword_hits[1].bm25_score or 0.0) if len(keyword_hits) > 1 else 0.0
    return top > 0 and second <= keyword_ratio * top


class BudgetedReranker:
    """Chooses, per question, what of the candidates to rerank within the answer budget.

    Works with any object whose `score(query, documents)` returns one float per document
    (the in-process Qwen3 reranker or a remote one): texts are counted without its
    tokenizer and its speed is learnt from timing its calls.
    """

    def __init__(
        self,
        *,
        reranker,
        budget_ms: float,
        skip_when_sure: bool = True,
        max_input_tokens: int | None = None,
        cost: RerankCost | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """`budget_ms` covers embed + search + rerank (0: always rerank every whole text);
        `max_input_tokens` is the reranker's own cut (its RERANK_MAX_TOKENS), if any."""
        self.reranker = reranker
        self.budget_ms = budget_ms
        self.skip_when_sure = skip_when_sure
        self.max_input_tokens = max_input_tokens or getattr(reranker, "max_tokens", None)
        self.question_tokens = int(getattr(reranker, "question_overhead_tokens", PROMPT_TOKENS))
        self.document_tokens = int(getattr(reranker, "document_overhead_tokens", 0))
        self.cost = cost or RerankCost()
        self._clock = clock
        self._calibrate_lock = threading.Lock()
        self._skipped = 0  # questions skipped for the budget since the last timing

    def calibrate(self) -> None:
        """Time one ~200-token input (a fresh query, so no cache answers) if nothing is known yet.

        Called at start; until then (or without it) the first question reranks everything
        and its timing is the first measurement. Never raises: a reranker that fails here (a
        model server not up yet) is reported by the first question that needs it.
        """
        if self.budget_ms <= 0:
            return
        with self._calibrate_lock:
            if self.cost.ms_per_token is not None:
                return
            query = f"How fast is reranking on this machine? ({time.time_ns()})"
            document = "Milvus keeps inserted data in object storage and metadata in etcd. " * 9
            try:
                self._timed_score(query, [document])
            except Exception as error:  # noqa: BLE001 - start-up must not fail on a timing
                reason = (str(error).strip() or type(error).__name__).splitlines()[0]
                log.warning("Could not time the reranker at start (%s); the first question will.", reason)

    def scores(
        self,
        query: str,
        candidates: Sequence[Candidate],
        *,
        spent_ms: float = 0.0,
        keyword_hits: Callable[[], Sequence[Candidate]] | None = None,
    ) -> tuple[list[float | None], RerankReport]:
        """A rerank score per candidate (None for those not scored) and what was done.

        `spent_ms` is what the question already took (embedding, search); `keyword_hits`
        fetches the keyword side's own first hits for the sure-rule (None: rule off).
        """
        report = RerankReport(candidates=len(candidates))
        if not candidates:
            return [], report
        if self.skip_when_sure and keyword_hits is not None and retrieval_is_sure(candidates, keyword_hits()):
            report.reason = "sure"
            candidates = candidates[:1]
        allowance = max(0.0, self.budget_ms - spent_ms) * PLAN_SHARE
        report.budget_ms = round(allowance, 1)
        report.ms_per_token = self.cost.ms_per_token
        plan = self._plan(query, candidates, allowance)
        if plan is None:
            self._skipped += 1
            if self._skipped < PROBE_EVERY:
                report.strategy, report.reason = "skipped", "budget"
                return [None] * report.candidates, report
            first = candidates[0].chunk  # a probe, to learn whether the machine got faster
            text = best_window(first, query_terms(query, [first.search_text]), MIN_WINDOW_TOKENS)
            plan = [text], MIN_WINDOW_TOKENS, self.cost.estimate_ms(estimate_tokens(text)) or 0.0
        self._skipped = 0
        texts, window, estimated = plan
        report.strategy = "whole" if window is None else "windows"
        if report.reason != "sure" and (window is not None or len(texts) < len(candidates)):
            report.reason = "budget"
        report.reranked, report.window_tokens, report.estimated_ms = len(texts), window, round(estimated, 1)
        started = self._clock()
        try:
            scored = self._timed_score(query, texts)
        except ModelServerError as error:
            # A reranker server that is down costs the order, not the answer: retrieval's order
            # stands (as when the budget skips), and the next question asks the server again.
            log.warning("Reranking skipped for this question: %s", error)
            report.strategy, report.reason, report.reranked = "failed", str(error), 0
            report.rerank_ms = round((self._clock() - started) * 1000, 1)
            return [None] * report.candidates, report
        report.rerank_ms = round((self._clock() - started) * 1000, 1)
        return [*scored, *([None] * (report.candidates - len(scored)))], report

    def _plan(self, query: str, candidates: Sequence[Candidate], allowance: float):
        """(texts to score, window cap or None, estimated ms), or None when nothing fits."""
        whole = [c.chunk.search_text for c in candidates]
        if self.budget_ms <= 0:
            return whole, None, 0.0
        fixed = self.question_tokens + estimate_tokens(query)
        sizes = [self._capped(estimate_tokens(text)) for text in whole]
        estimate = self.cost.estimate_ms
        full_ms = estimate(fixed + sum(sizes))
        if full_ms is None or full_ms <= allowance:
            return whole, None, full_ms or 0.0
        tokens_left = allowance / max(self.cost.ms_per_token or 0.0, 1e-9) - fixed
        terms = query_terms(query, whole)
        # The largest window that lets every candidate in, down to the smallest useful one.
        window = int(tokens_left // len(candidates)) - self.document_tokens
        if window >= MIN_WINDOW_TOKENS:
            texts = [best_window(c.chunk, terms, window) for c in candidates]
            return texts, window, estimate(fixed + sum(self._capped(estimate_tokens(t)) for t in texts))
        texts, used = [], 0
        for candidate in candidates:  # fused order: the lowest ranks drop first
            text = best_window(candidate.chunk, terms, MIN_WINDOW_TOKENS)
            size = self._capped(estimate_tokens(text))
            if used + size > tokens_left:
                break
            texts.append(text)
            used += size
        if not texts:
            return None
        return texts, MIN_WINDOW_TOKENS, estimate(fixed + used)

    def _capped(self, tokens: int) -> int:
        """What a text of `tokens` costs: cut to the reranker's input cap, plus its labels."""
        if self.max_input_tokens:
            tokens = min(tokens, max(1, self.max_input_tokens - PROMPT_TOKENS))
        return tokens + self.document_tokens

    def _timed_score(self, query: str, texts: list[str]) -> list[float]:
        started = self._clock()
        scores = [float(s) for s in self.reranker.score(query, texts)]
        elapsed_ms = (self._clock() - started) * 1000
        tokens = self.question_tokens + estimate_tokens(query) + sum(self._capped(estimate_tokens(t)) for t in texts)
        self.cost.observe(tokens, elapsed_ms)
        return scores
