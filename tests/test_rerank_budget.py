"""Reranking within ANSWER_BUDGET_MS: windows, fewer candidates, the sure-rule, for any `.score`.

The budget tests run the real tiny Qwen3 reranker slowed down per token it reads (as a CPU
without fast matmuls is), so the budget has something to cut.
"""

from __future__ import annotations

import time

import pytest

import knowledge.reranker as reranker_module
from knowledge import rerank_budget
from knowledge.rerank_budget import (
    MIN_WINDOW_TOKENS,
    BudgetedReranker,
    RerankCost,
    best_window,
    estimate_tokens,
    query_terms,
    retrieval_is_sure,
)
from knowledge.reranker import Reranker
from knowledge.settings import DEFAULT_RERANK_INSTRUCTION
from knowledge.types import Candidate, Chunk

QUESTION = "Where does Milvus store metadata?"
FILLER = [
    "Milvus deals with two types of data, inserted data and vectors, in persistent storage.",
    "Inserted data including vector data and collection-specific schema are stored as logs.",
    "Milvus supports MinIO, AWS S3, Google Cloud Storage and Azure Blob Storage.",
    "Each node keeps memory for the segments it loads and releases them when asked.",
    "The quick brown fox jumps over the lazy dog in the partition of the cluster.",
]
KEY_SENTENCE = "Metadata are generated within Milvus and each module stores its metadata in etcd."


def chunk(n: int, text: str) -> Chunk:
    return Chunk(id=f"c{n}", source=f"faq/page{n}.md", title=f"Page {n}", heading_path=("Storage",),
                 anchor="storage", url=f"https://docs.example/page{n}", text=text)


def long_text(n: int, *, key_at: int | None = None, sentences: int = 30) -> str:
    body = [f"{FILLER[(i + n) % len(FILLER)]}" for i in range(sentences)]
    if key_at is not None and key_at < sentences:
        body[key_at] = KEY_SENTENCE
    return " ".join(body)


def candidates(count: int = 10, **kwargs) -> list[Candidate]:
    return [Candidate(chunk=chunk(n, long_text(n, key_at=12 if n % 3 == 0 else None, **kwargs)),
                      dense_score=0.8 - n * 0.01, fused_score=1.0 - n * 0.05) for n in range(count)]


class SlowReranker(Reranker):
    """The tiny Qwen3 reranker, plus `ms_per_token` of waiting for every token it computes
    (the prompt and query shared by all documents once, as the real path runs them)."""

    ms_per_token = 4.0  # well above the tiny model's own time, so timings are steady

    def _score_uncached(self, query, documents):
        sequences = self._sequences(query, documents)
        shared = reranker_module._common_prefix_length(sequences) if len(sequences) > 1 else 0
        tokens = sum(len(ids) - shared for ids in sequences) + shared
        time.sleep(tokens * self.ms_per_token / 1000)
        return super()._score_uncached(query, documents)


@pytest.fixture(scope="module")
def slow_reranker(tiny_reranker_path):
    return SlowReranker(model=str(tiny_reranker_path), instruction=DEFAULT_RERANK_INSTRUCTION,
                        max_tokens=512, batch_size=4, device="cpu", dtype="float32")


# ---- windows -----------------------------------------------------------------------------


def test_best_window_keeps_the_breadcrumb_and_the_sentences_that_match():
    c = chunk(0, long_text(0, key_at=17))
    terms = query_terms(QUESTION, [c.search_text])
    window = best_window(c, terms, 60)
    assert window.startswith(c.breadcrumb + "\n\n")
    assert KEY_SENTENCE in window
    assert estimate_tokens(window) <= 60
    assert estimate_tokens(c.search_text) > 300  # the whole text would have been five times as long


def test_best_window_is_the_whole_text_when_it_fits_and_the_opening_without_matches():
    short = chunk(1, "Metadata live in etcd.")
    assert best_window(short, query_terms(QUESTION, []), 60) == short.search_text
    c = chunk(2, long_text(2))
    window = best_window(c, query_terms("How do I bake bread?", [c.search_text]), 40)
    assert window.split("\n\n", 1)[1].startswith(long_text(2)[:30])


def test_rarer_question_words_choose_the_window():
    """'Milvus' is in every sentence; 'etcd' only in one: that one wins."""
    text = " ".join(["Milvus is a vector database for similarity search."] * 12
                    + ["Milvus keeps its coordination state in etcd."]
                    + ["Milvus is a vector database for similarity search."] * 12)
    c = chunk(3, text)
    window = best_window(c, query_terms("Milvus etcd", [c.search_text, "Milvus only"]), 24)
    assert "etcd" in window


# ---- the budget with a slowed-down real reranker -----------------------------------------


def test_a_tight_budget_reranks_windows_or_fewer_candidates_and_stays_within_it(slow_reranker):
    found = candidates(6)
    budget = BudgetedReranker(reranker=slow_reranker, budget_ms=60_000, skip_when_sure=False)
    budget.calibrate()
    ms_per_token = budget.cost.ms_per_token
    assert ms_per_token is not None

    def spent_leaving(texts: int, tokens: int) -> float:
        """Time already spent such that `texts` texts of `tokens` each fit in what is left."""
        fixed = budget.question_tokens + estimate_tokens(QUESTION)
        used = texts * (tokens + budget.document_tokens)
        return 60_000 - ms_per_token * (fixed + used) / rerank_budget.PLAN_SHARE

    # The reranker says what it adds per question and per text: the fixed prompt is cached.
    assert budget.question_tokens == 0 and budget.document_tokens > 0
    # Room for 6 windows of ~100 tokens: whole texts (~480 each) do not fit.
    scores, report = budget.scores(QUESTION, found, spent_ms=spent_leaving(6, 100))
    assert report.strategy == "windows" and report.reason == "budget", report
    assert 90 <= report.window_tokens < estimate_tokens(found[0].chunk.search_text)
    assert report.reranked == 6 and None not in scores
    assert report.estimated_ms <= report.budget_ms
    assert report.rerank_ms <= report.budget_ms * 1.5, report
    # Room for about three of the smallest windows: the lowest fused ranks drop.
    ms_per_token = budget.cost.ms_per_token  # learnt from that call
    scores, report = budget.scores(f"{QUESTION} (2)", found, spent_ms=spent_leaving(3, MIN_WINDOW_TOKENS))
    assert report.window_tokens == MIN_WINDOW_TOKENS and 1 <= report.reranked < len(found), report
    assert all(s is not None for s in scores[: report.reranked])
    assert all(s is None for s in scores[report.reranked:])
    assert report.rerank_ms <= report.budget_ms * 1.5, report


def test_a_generous_budget_reranks_every_whole_text(slow_reranker):
    found = candidates(4, sentences=6)
    budget = BudgetedReranker(reranker=slow_reranker, budget_ms=60_000, skip_when_sure=False)
    budget.calibrate()
    scores, report = budget.scores(QUESTION, found, spent_ms=100)
    assert (report.strategy, report.reason, report.reranked, report.window_tokens) == ("whole", "", 4, None)
    assert scores == slow_reranker.score(QUESTION, [c.chunk.search_text for c in found])


def test_when_nothing_fits_reranking_is_skipped_then_probed_now_and_then(slow_reranker):
    budget = BudgetedReranker(reranker=slow_reranker, budget_ms=500, skip_when_sure=False)
    budget.calibrate()
    reports = [budget.scores(f"{QUESTION} {i}", candidates(3), spent_ms=490)[1]
               for i in range(rerank_budget.PROBE_EVERY)]
    assert all(r.strategy == "skipped" and r.reranked == 0 for r in reports[:-1])
    assert reports[-1].reranked == 1  # a probe keeps the cost estimate current


def test_the_cost_learns_from_timings_and_ignores_cache_hits():
    cost = RerankCost(smoothing=0.5)
    assert cost.estimate_ms(100) is None
    cost.observe(100, 200.0)
    assert cost.estimate_ms(100) == pytest.approx(200.0)
    cost.observe(100, 400.0)
    assert cost.ms_per_token == pytest.approx(3.0)
    cost.observe(100, 1.0)  # a cache hit, not a faster machine
    assert cost.ms_per_token == pytest.approx(3.0)


class CountingReranker:
    """Any object with `.score` works (a remote reranker, say): this one counts what it reads."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def score(self, query, documents):
        self.calls.append(list(documents))
        return [0.5 + 0.01 * i for i in range(len(documents))]


# ---- the sure-rule -----------------------------------------------------------------------


def hits(*pairs) -> list[Candidate]:
    return [Candidate(chunk=chunk(n, "x"), bm25_score=score) for n, score in pairs]


def test_sure_when_dense_and_keywords_agree_clearly():
    found = [Candidate(chunk=chunk(n, "x"), dense_score=d) for n, d in ((0, 0.80), (1, 0.70), (2, 0.65))]
    assert retrieval_is_sure(found, hits((0, 10.0), (5, 6.0)))
    assert not retrieval_is_sure(found, hits((1, 10.0), (0, 6.0)))  # keywords prefer another
    assert not retrieval_is_sure(found, hits((0, 10.0), (5, 9.5)))  # keyword margin too small
    close = [Candidate(chunk=chunk(n, "x"), dense_score=d) for n, d in ((0, 0.80), (1, 0.79))]
    assert not retrieval_is_sure(close, hits((0, 10.0), (5, 2.0)))  # dense margin too small
    behind = [Candidate(chunk=chunk(n, "x"), dense_score=d) for n, d in ((0, 0.70), (1, 0.80))]
    assert not retrieval_is_sure(behind, hits((0, 10.0)))  # fused first is not dense first
    assert not retrieval_is_sure(found, [])


def test_when_sure_only_the_first_passage_is_reranked():
    reranker = CountingReranker()
    found = [Candidate(chunk=chunk(n, f"text {n}"), dense_score=d) for n, d in ((0, 0.9), (1, 0.6), (2, 0.5))]
    budget = BudgetedReranker(reranker=reranker, budget_ms=0, skip_when_sure=True)
    scores, report = budget.scores(QUESTION, found, keyword_hits=lambda: hits((0, 9.0), (3, 1.0)))
    assert reranker.calls == [[found[0].chunk.search_text]]
    assert scores == [0.5, None, None] and (report.reason, report.reranked) == ("sure", 1)
    off = BudgetedReranker(reranker=CountingReranker(), budget_ms=0, skip_when_sure=False)
    assert off.scores(QUESTION, found, keyword_hits=lambda: hits((0, 9.0)))[1].reranked == 3


# ---- through the answer path ---------------------------------------------------------------


def test_the_answer_records_what_was_reranked(make_kb):
    kb = make_kb(api_key="", answer_budget_ms=60_000, rerank_skip_when_sure=False)
    answer = kb.ask("How does Milvus store data?")
    record = answer.to_dict()["rerank"]
    assert record["strategy"] == "whole" and record["reranked"] == record["candidates"] > 0
    assert record["ms_per_token"] > 0  # calibrated when the knowledge base started
    assert all(c.rerank_score is not None for c in answer.candidates)


class DownReranker:
    def score(self, query, documents):
        raise ConnectionError("model server not up yet")


def test_calibration_never_stops_the_start():
    budget = BudgetedReranker(reranker=DownReranker(), budget_ms=1500)
    budget.calibrate()  # logs, does not raise
    assert budget.cost.ms_per_token is None


def test_a_chinese_sections_window_is_the_sentence_that_matches():
    """Chinese is written without spaces after 。！？: the window is still cut at sentences."""
    filler = "集群中的每个节点都会定期向协调器报告自己的状态和负载情况。"
    key = "如果要开启 mmap，请在配置文件中把 queryNode.mmap.mmapEnabled 设为 true。"
    c = chunk(3, filler * 12 + key + filler * 12)
    terms = query_terms("mmapEnabled 怎么开启？", [c.search_text])
    window = best_window(c, terms, 60)
    assert key in window
    assert estimate_tokens(window) <= 60
