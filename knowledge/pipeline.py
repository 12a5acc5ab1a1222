"""KnowledgeBase: the one facade `bot` and the CLI use (ask, refresh, status, close)."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence

from knowledge.errors import AnswerError, InvalidQuestionError, ModelUnavailableError
from knowledge.expansion import doc_words_query
from knowledge.language import language_detector
from knowledge.retriever import RetrievalResult, Retriever
from knowledge.rewrite import standalone_query
from knowledge.settings import KnowledgeSettings
from knowledge.types import Answer, Candidate, Citation, Document, RefreshReport, SourceFilter, Turn

log = logging.getLogger(__name__)

# [1], [2][3], [1, 2] and [1-3] style markers.
CITATION_MARKER = re.compile(r"\[(\d+(?:\s*[,\-–]\s*\d+)*)\]")
_NEGATIVE_MARKER = re.compile(r"\[\s*[-–]\s*\d+\s*\]")  # "[-1]": a model's slip, never a source
# Full-width brackets, which models often use in Chinese answers: 【1】, ［1］.
_WIDE_MARKER = re.compile(r"[【［]\s*(\d+(?:\s*[,，\-–]\s*\d+)*)\s*[】］]")

TEXTS = {
    "en": {
        "abstain": "The documentation doesn't seem to cover this, so I won't guess.",
        "abstain_read": "The closest sections are under Sources, in case they help.",
        "retrieval_only": "Here are the most relevant passages from the documentation:",
        "no_key": "No OpenAI API key is configured (OPENAI_API_KEY): these are the most "
        "relevant passages, not a written answer.",
        "model_failed": "The language model failed ({error}), after retries: these are "
        "the most relevant passages, not a written answer.",
        "model_paused": "{error}: these are the most relevant passages, not a written answer.",
    },
    "zh": {
        "abstain": "文档中似乎没有涉及这个问题，我不做猜测。",
        "abstain_read": "最接近的章节列在 Sources 中，供您参考。",
        "retrieval_only": "以下是文档中最相关的段落：",
        "no_key": "未配置 OpenAI API 密钥（OPENAI_API_KEY）：以下是最相关的段落，而不是生成的回答。",
        "model_failed": "语言模型调用失败（{error}，已重试）：以下是最相关的段落，而不是生成的回答。",
        "model_paused": "语言模型多次失败，暂停调用（{error}）：以下是最相关的段落，而不是生成的回答。",
    },
}
_EXCERPT_CHARS = 300
ANSWER_RECHECK_SECONDS = 30.0  # how often /readyz re-checks a language model found broken
# C0/C1 control characters other than tab and newline: noise to search, risky in logs.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
LONE_SURROGATES = re.compile(r"[\ud800-\udfff]")
_LEADING_HEADINGS = re.compile(r"\A(?:#{1,6}[ \t][^\n]*\n\s*)+")


def _cleaned(text: str) -> str:
    """Lone surrogates (valid JSON escapes, invalid UTF-8; stdin's undecodable bytes) would break
    the tokenizer, Milvus and SQLite: each becomes U+FFFD. Control characters become spaces."""
    return CONTROL_CHARS.sub(" ", LONE_SURROGATES.sub("\ufffd", text or ""))


class KnowledgeBase:
    """Retrieval plus answering over the indexed documentation; safe for concurrent ask()."""

    def __init__(
        self,
        *,
        settings: KnowledgeSettings,
        embedder,
        store,
        indexer,
        reranker=None,
        answerer=None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.reranker = reranker
        self.store = store
        self.indexer = indexer
        self.answerer = answerer
        self.retriever = Retriever(embedder=embedder, store=store, reranker=reranker, settings=settings)
        # Shared by every KnowledgeBase with the same languages; lingua is built on first use.
        self.language_detector = language_detector(settings.languages)
        self._lock = threading.Lock()
        self._last_refresh: RefreshReport | None = None
        self._closed = False
        self.answer_problem = ""  # why the language model cannot answer, from check_answerer()
        self._answer_checked_at = 0.0

    @classmethod
    def from_settings(cls, settings: KnowledgeSettings) -> KnowledgeBase:
        """Check the store can be reached, load the models and open the store.
        Raises StoreError subclasses (before any model loads), ModelLoadError."""
        from knowledge.store import VectorStore

        token = settings.milvus_token.get_secret_value()
        # Milvus first: a wrong or unreachable MILVUS_URI is one line at once, not after torch,
        # the models (and even the openai library) have loaded.
        VectorStore.check_reachable(uri=settings.milvus_target, token=token)
        from knowledge.answerer import Answerer
        from knowledge.breaker import CircuitBreaker
        from knowledge.indexer import Indexer

        if not (settings.embedding_base_url and (settings.reranker_base_url or not settings.reranking)):
            # A model runs here: only then is torch imported (remote models keep the process small).
            from knowledge.runtime import configure_threads

            configure_threads(torch_threads=settings.torch_threads, model_calls=settings.model_calls)
        embedder = make_embedder(settings)
        reranker = make_reranker(settings) if settings.reranking else None
        store = VectorStore(
            uri=settings.milvus_target,
            token=token,
            collection=settings.milvus_collection,
            dimension=embedder.dimension,
            model_id=embedder.model_id,
            sentence_vectors=settings.embeds_sentences,
        )
        indexer = Indexer(settings=settings, embedder=embedder, store=store)
        answerer = None
        api_key = settings.openai_api_key.get_secret_value()
        if api_key:
            answerer = Answerer(
                api_key=api_key,
                base_url=settings.openai_base_url,
                model=settings.openai_model,
                timeout=settings.openai_timeout,
                max_retries=settings.openai_max_retries,
                max_tokens=settings.answer_max_tokens,
                history_max_tokens=settings.history_max_tokens,
                breaker=CircuitBreaker(
                    name="The language model",
                    failure_threshold=settings.answer_breaker_failures,
                    cooldown=settings.answer_breaker_cooldown,
                ),
            )
        kb = cls(
            settings=settings,
            embedder=embedder,
            reranker=reranker,
            store=store,
            indexer=indexer,
            answerer=answerer,
        )
        if kb.retriever.rerank_budget is not None:
            kb.retriever.rerank_budget.calibrate()  # this machine's rerank speed, for ANSWER_BUDGET_MS
        return kb

    # Asking ----------------------------------------------------------------------
    def ask(
        self,
        question: str,
        *,
        history: Sequence[Turn] = (),
        source_names: Sequence[str] | SourceFilter | None = None,
        on_delta: Callable[[str], None] | None = None,
    ) -> Answer:
        """Answer one question from the documentation.

        Returns status "answered", "abstained" (nothing relevant enough; no model
        call) or "retrieval_only" (no API key, or the model failed: `note` says
        which). Raises InvalidQuestionError for an empty or over-long question;
        store and model-loading errors pass through as knowledge.errors types.
        """
        started = time.perf_counter()
        question = self._validated(question)
        history = tuple(Turn(role=turn.role, text=_cleaned(turn.text)) for turn in history)
        language = self.language_detector.detect(question)  # "" when unsure
        timings: dict[str, float] = {}

        rewrite_started = time.perf_counter()
        search_query = standalone_query(question, history, answerer=self.answerer)
        search_query = doc_words_query(
            search_query, answerer=self.answerer, enabled=self.settings.doc_rewrite
        )
        timings["rewrite"] = _ms(rewrite_started)

        result = self.retriever.retrieve(search_query, source_names=source_names)
        timings.update(result.timings_ms)
        passages = result.reranked_top_n
        answer = Answer(
            question=question,
            text="",
            status="answered",
            passages=passages,
            candidates=ranked_candidates(result),
            timings_ms=timings,
            search_query=search_query,
            language=language,
            rerank=result.rerank.to_dict(),
        )

        if self.retriever.should_abstain(result):
            answer.status = "abstained"
            answer.citations = _citations(passages)
            answer.text = abstention_text(passages, language)
        elif self.answerer is None:
            self._retrieval_only(answer, passages, _texts(language)["no_key"])
        else:
            model_started = time.perf_counter()
            try:
                text = self.answerer.answer(
                    question,
                    [c.chunk for c in passages],
                    history=history,
                    language=language,
                    on_delta=on_delta,
                )
            except ModelUnavailableError as error:
                answer.model_failed = True
                reason = str(error).rstrip(".")
                self._retrieval_only(
                    answer, passages, _texts(language)["model_paused"].format(error=reason)
                )
            except AnswerError as error:
                answer.model_failed = True
                reason = str(error).rstrip(".")
                self._retrieval_only(
                    answer, passages, _texts(language)["model_failed"].format(error=reason)
                )
            else:
                answer.text = normalise_markers(text, len(passages))
                # No usable marker: still show what the answer was built from.
                answer.citations = used_citations(answer.text, passages) or _citations(passages)
            timings["model"] = _ms(model_started)
        timings.setdefault("model", 0.0)
        timings["total"] = _ms(started)
        return answer

    def check_answerer(self) -> str:
        """Check the language model settings once (key, model, URL) and remember the outcome.

        Returns "" when answers can be written, else one line saying why not (also kept
        in `answer_problem` and `status()`); never raises. Without an API key there is
        nothing to check: answers are passages by design.
        """
        check = getattr(self.answerer, "check", None)
        self.answer_problem = check() if check is not None else ""
        self._answer_checked_at = time.monotonic()
        return self.answer_problem

    def answer_readiness(self, *, recheck_after: float = ANSWER_RECHECK_SECONDS) -> tuple[bool, str]:
        """(ready, reason) for the language model: the start-up check's outcome, re-checked at
        most every `recheck_after` seconds while it reports a problem (a server that was
        still starting comes good without a restart). Never raises."""
        if self.answer_problem and time.monotonic() - self._answer_checked_at >= recheck_after:
            self.check_answerer()
        return (not self.answer_problem, self.answer_problem)

    def _validated(self, question: str) -> str:
        if not isinstance(question, str) or not question.strip():
            raise InvalidQuestionError("Please ask a question: the message is empty.")
        question = _cleaned(question).strip()
        if not question:
            raise InvalidQuestionError("Please ask a question: the message is empty.")
        limit = self.settings.max_question_chars
        if len(question) > limit:
            raise InvalidQuestionError(
                f"The question is too long ({len(question)} characters; the limit is {limit}). "
                "Please shorten it."
            )
        return question

    @staticmethod
    def _retrieval_only(answer: Answer, passages: list[Candidate], note: str) -> None:
        answer.status = "retrieval_only"
        answer.note = note
        answer.citations = _citations(passages)
        answer.text = retrieval_only_text(passages, answer.language)

    # Index -------------------------------------------------------------------------
    def refresh(self, *, rebuild: bool = False, progress: bool = False) -> RefreshReport:
        """Bring the index up to date. Raises RefreshInProgressError, SourceError, StoreError."""
        report = self.indexer.refresh(rebuild=rebuild, progress=progress)
        self.retriever.expander.forget()  # the vocabulary is learned again from the new index
        with self._lock:
            self._last_refresh = report
        return report

    def supply_documents(self, provider: Callable[[], Sequence[Document]] | None) -> None:
        """Documents kept outside KNOWLEDGE_SOURCES (the bot's team answers), read by every
        refresh and rebuild so they are indexed with the rest and never deleted by one."""
        self.indexer.extra_documents = provider

    def sync_documents(self, documents: Sequence[Document], *, source_names: Sequence[str]) -> RefreshReport:
        """Make the index's chunks of `source_names` match `documents` at once, without a refresh.

        Only changed documents are embedded. Raises ValueError for a document of another
        source, StoreError subclasses from Milvus.
        """
        return self.indexer.sync_documents(documents, source_names=source_names)

    def standalone_question(self, question: str, history: Sequence[Turn] = ()) -> str:
        """`question` rewritten by the chat model to stand on its own given the earlier turns;
        the question itself when there is no history or no model."""
        if not history or self.answerer is None:
            return question.strip()
        return standalone_query(question, history, answerer=self.answerer)

    def source_names(self) -> list[str]:
        """The KNOWLEDGE_SOURCES names ([] when the setting cannot be parsed)."""
        from knowledge.sources import parse_sources

        try:
            return [spec.name for spec in parse_sources(self.settings.knowledge_sources)]
        except Exception:  # noqa: BLE001 - reported where the index is built
            return []

    def status(self) -> dict:
        """Chunk count, sources, the last refresh report and the model ids."""
        from knowledge.sources import parse_sources

        with self._lock:
            # Refreshes run through the indexer directly (a scheduler) count too.
            last = self._last_refresh or getattr(self.indexer, "last_report", None)
        try:
            sources = [
                {"name": spec.name, "location": spec.location, "glob": spec.glob, "kind": spec.kind}
                for spec in parse_sources(self.settings.knowledge_sources)
            ]
        except Exception:  # a bad KNOWLEDGE_SOURCES must not break a status page
            sources = []
        return {
            "chunks": self.store.count(),
            "collection": self.settings.milvus_collection,
            "sources": sources,
            "last_refresh": last.to_dict() if last else None,
            "embedding_model": self.embedder.model_id,
            "reranker_model": getattr(self.reranker, "model_id", "") if self.reranker else "",
            "answer_model": self.answerer.model if self.answerer else "",
            "answer_problem": self.answer_problem,
            "answer_paused": getattr(getattr(self.answerer, "breaker", None), "state", "") == "open",
            "retrieval_mode": self.settings.retrieval_mode,
            # Why the next refresh will rebuild the index ("" when it will not), and
            # whether the index serves meanwhile (dense-only: keywords analysed another way).
            "rebuild_reason": getattr(self.store, "rebuild_reason", ""),
            "serves_until_rebuilt": bool(getattr(self.store, "stale", ""))
            and not getattr(self.store, "mismatch", ""),
        }

    def close(self) -> None:
        """Release the store and the HTTP client; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.answerer is not None:
            self.answerer.close()
        for model in (self.embedder, self.reranker):  # model-server clients hold HTTP sessions
            close = getattr(model, "close", None)
            if close is not None:
                close()
        self.store.close()


# Models: in this process, or on a model server when its URL is set ------------------------
def make_embedder(settings: KnowledgeSettings):
    """The embedding model: RemoteEmbedder with EMBEDDING_BASE_URL, else the in-process Embedder."""
    if settings.embedding_base_url:
        from knowledge.model_servers import RemoteEmbedder

        return RemoteEmbedder(
            model=settings.embedding_model,
            base_url=settings.embedding_base_url,
            api_key=settings.embedding_api_key.get_secret_value(),
            timeout=settings.model_server_timeout,
            max_retries=settings.model_server_max_retries,
            batch_size=settings.embedding_batch_size,
            breaker=_model_server_breaker(settings, "embedding"),
        )
    from knowledge.embedder import Embedder

    return Embedder(
        model=settings.embedding_model,
        device=settings.device,
        dtype=settings.dtype,
        batch_size=settings.embedding_batch_size,
        batch_tokens=settings.embedding_batch_tokens,
    )


def _model_server_breaker(settings: KnowledgeSettings, role: str):
    from knowledge.breaker import CircuitBreaker

    return CircuitBreaker(name=f"The {role} model server", failure_threshold=settings.model_server_breaker_failures,
                          cooldown=settings.model_server_breaker_cooldown)


def make_reranker(settings: KnowledgeSettings):
    """The reranker: RemoteReranker with RERANKER_BASE_URL, else the in-process Reranker."""
    if settings.reranker_base_url:
        from knowledge.model_servers import RemoteReranker

        return RemoteReranker(
            model=settings.reranker_model,
            base_url=settings.reranker_base_url,
            api_key=settings.reranker_api_key.get_secret_value(),
            instruction=settings.rerank_instruction,
            max_tokens=settings.rerank_max_tokens,
            timeout=settings.model_server_timeout,
            max_retries=settings.model_server_max_retries,
            template=settings.reranker_template,
            breaker=_model_server_breaker(settings, "reranker"),
        )
    from knowledge.reranker import Reranker

    return Reranker(
        model=settings.reranker_model,
        instruction=settings.rerank_instruction,
        max_tokens=settings.rerank_max_tokens,
        batch_size=settings.rerank_batch_size,
        device=settings.device,
        dtype=settings.dtype,
        int8=settings.reranker_int8,
    )


# Answer texts ------------------------------------------------------------------------
def ranked_candidates(result: RetrievalResult) -> list[Candidate]:
    """Every retrieved candidate in final order: the passages, then the rest.

    The rest follow by rerank score when reranked, else as retrieved; ranks continue
    the passages' numbering, so `supportbot ask --json` shows what was found and kept.
    """
    kept = {c.chunk.id for c in result.reranked_top_n}
    rest = [c for c in result.candidates_top_k if c.chunk.id not in kept]
    if result.reranked:
        rest.sort(key=lambda c: -(c.rerank_score or 0.0))  # stable: ties keep retrieval order
    ordered = [*result.reranked_top_n, *(dataclasses.replace(c) for c in rest)]
    for rank, candidate in enumerate(ordered, start=1):
        candidate.rank = rank
    return ordered


def _marker_parts(inside: str) -> list[tuple[str, list[int]]]:
    """The parts of a marker's inside ("1, 2-3"), each with its numbers ([1], [2, 3])."""
    return [
        (part, [int(n) for n in re.split(r"\s*[\-–]\s*", part)])
        for part in re.split(r"\s*,\s*", inside)
    ]


_DROPPED = "\x00"  # where a marker naming no listed passage was (a NUL of the model's own goes too)


def normalise_markers(text: str, count: int) -> str:
    """[n] markers only, each naming one of the `count` passages.

    Full-width 【n】 become [n]; numbers outside 1..count (a model's slip) are dropped
    so no marker points at a source that is not listed.
    """
    text = _WIDE_MARKER.sub(lambda m: "[" + m.group(1).replace("，", ",") + "]", text)

    def keep_valid(match: re.Match) -> str:
        parts = [part for part, bounds in _marker_parts(match.group(1))
                 if all(1 <= n <= count for n in bounds)]
        return f"[{', '.join(parts)}]" if parts else _DROPPED

    # A dropped marker takes the space before it along ("See [7] and" -> "See and", "works [9]." -> "works.").
    text = CITATION_MARKER.sub(keep_valid, _NEGATIVE_MARKER.sub(_DROPPED, text))
    return re.sub(rf"[ \t]+{_DROPPED}(?=[ \t.,;:!?)。，]|$)|{_DROPPED}", "", text, flags=re.MULTILINE)


def used_citations(text: str, passages: Sequence[Candidate]) -> list[Citation]:
    """Citations for the [n] markers the text uses (1 ≤ n ≤ len(passages)), by number."""
    used: set[int] = set()
    for match in CITATION_MARKER.finditer(text):
        for _, bounds in _marker_parts(match.group(1)):
            low, high = bounds[0], bounds[-1]
            if high - low > len(passages):  # "[1-2000]" is not a citation range
                continue
            used.update(range(low, high + 1))
    return [
        _citation(number, passages[number - 1])
        for number in sorted(used)
        if 1 <= number <= len(passages)
    ]


def _citation(number: int, candidate: Candidate) -> Citation:
    chunk = candidate.chunk
    return Citation(
        number=number,
        title=chunk.title,
        heading_path=chunk.heading_path,
        url=chunk.url,
        source=chunk.source,
        source_name=chunk.source_name,
    )


def _citations(passages: Sequence[Candidate]) -> list[Citation]:
    return [_citation(number, c) for number, c in enumerate(passages, start=1)]


def _texts(language: str) -> dict[str, str]:
    return TEXTS.get(language, TEXTS["en"])


def abstention_text(passages: Sequence[Candidate], language: str) -> str:
    """Say the docs don't seem to cover it, and point to the closest sections: they are the
    answer's citations, which every front end lists under Sources (not a second time here)."""
    texts = _texts(language)
    if not passages:
        return texts["abstain"]
    return f"{texts['abstain']}\n\n{texts['abstain_read']}"


def retrieval_only_text(passages: Sequence[Candidate], language: str) -> str:
    """The best passages, each with its section and link, numbered like citations."""
    texts = _texts(language)
    if not passages:
        return texts["abstain"]
    lines = [texts["retrieval_only"]]
    for number, candidate in enumerate(passages, start=1):
        chunk = candidate.chunk
        # The breadcrumb already names the section: skip the heading lines it repeats.
        excerpt = " ".join(_LEADING_HEADINGS.sub("", chunk.text.lstrip()).split())
        if len(excerpt) > _EXCERPT_CHARS:
            excerpt = excerpt[:_EXCERPT_CHARS].rsplit(" ", 1)[0] + " …"
        lines += ["", f"[{number}] {chunk.breadcrumb} — {chunk.url}", excerpt]
    return "\n".join(lines)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


__all__ = ["KnowledgeBase", "RetrievalResult", "used_citations", "abstention_text"]
