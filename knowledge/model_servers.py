"""Embedding and reranking on model servers over HTTP: the only module that talks to them.

`RemoteEmbedder` speaks the OpenAI embeddings API (`POST {base}/embeddings`, served by
vLLM, Text Embeddings Inference, Infinity and Ollama); `RemoteReranker` the Cohere/Jina
rerank API (`POST {base}/rerank`, served by vLLM and Infinity). They have the interfaces
of `knowledge.embedder.Embedder` and `knowledge.reranker.Reranker`, so the retriever and
indexer cannot tell them apart, and neither imports torch: a bot whose models are both
remote loads no model.

Qwen3 prompts are the client's job (vLLM serves the raw model): questions get the
embedding model's `query` prompt, and reranker requests are formatted with the model
card's template as vLLM's qwen3_reranker example does, so a server returns what the
in-process models compute. Timeouts, 429 and 5xx are retried with backoff (honouring
Retry-After, as the OpenAI client does); what still fails raises ModelServerUnavailableError
with a one-line message meant for the person who asked. After MODEL_SERVER_BREAKER_FAILURES
such failures in a row a circuit breaker answers that at once for MODEL_SERVER_BREAKER_COOLDOWN
seconds, then lets one question probe the server (knowledge/breaker.py, as for the language model).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import requests
from cachetools import LRUCache
from requests.adapters import HTTPAdapter
from tqdm.auto import tqdm
from urllib3.util.retry import Retry

from knowledge.breaker import CircuitBreaker
from knowledge.errors import DimensionMismatchError, ModelLoadError, ModelServerError, ModelServerUnavailableError
from knowledge.model_prompts import (
    QWEN3_EMBEDDING_QUERY_PROMPT,
    RERANK_PREFIX,
    RERANK_SUFFIX,
    format_pair,
    rerank_document_text,
    rerank_query_text,
)
from knowledge.prompts import estimate_tokens
from knowledge.score_cache import ScoreCache
from knowledge.token_cap import keep_head_and_tail
from knowledge.urls import without_credentials
from knowledge.vectors import unit_rows

log = logging.getLogger(__name__)

QUERY_CACHE_SIZE = 1024
SCORE_CACHE_SIZE = 4096
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)
BACKOFF_FACTOR = 0.5  # seconds: 0, 1, 2, 4 ... between attempts (urllib3 doubles it), plus jitter
MAX_RETRY_AFTER = 30.0  # a longer Retry-After is cut to this, as the OpenAI client limits it
_DIMENSION_PROBE = "dimension probe"
# Long questions keep their head and tail exactly as the in-process models cut them (issue 14):
# the values of knowledge.embedder.QUERY_MAX_TOKENS and knowledge.reranker's MIN_DOCUMENT_SHARE,
# MIN_QUERY_TOKENS and _SEAM_SLACK, copied because those modules import torch.
QUERY_MAX_TOKENS = 512
MIN_DOCUMENT_SHARE = 0.5
MIN_QUERY_TOKENS = 16
_SEAM_SLACK = 4
_TRUTHY = {"1", "true", "yes", "on"}


class _Retry(Retry):
    """urllib3's retry with Retry-After honoured but capped (a server asking for an hour
    would hold a Slack question that long)."""

    def get_retry_after(self, response):
        value = super().get_retry_after(response)
        return None if value is None else min(value, MAX_RETRY_AFTER)


class _ServerClient:
    """One model server: a pooled requests session with retries, JSON in and out, behind a
    circuit breaker (a server that keeps failing is not waited for by every question)."""

    def __init__(self, *, role: str, setting: str, base_url: str, api_key: str, timeout: float,
                 max_retries: int, breaker: CircuitBreaker | None = None, pool_size: int = 16) -> None:
        self.role, self.setting = role, setting
        self.breaker = breaker or CircuitBreaker(name=f"The {role} model server", failure_threshold=0)
        self.base_url = base_url.strip().rstrip("/")
        self.shown_url = without_credentials(self.base_url)
        self.timeout = timeout
        self.attempts = max_retries + 1
        retry = _Retry(
            total=max_retries, connect=max_retries, read=max_retries, status=max_retries, other=0,
            allowed_methods=None,  # POST too: embedding and scoring change nothing on the server
            status_forcelist=RETRY_STATUSES, backoff_factor=BACKOFF_FACTOR, backoff_jitter=0.25,
            respect_retry_after_header=True, raise_on_status=False,
        )
        self._session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["Content-Type"] = "application/json"
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"
        self.requests = 0  # HTTP requests made, retries not counted (tests and the bench read it)

    def post(self, path: str, body: dict) -> dict:
        """The JSON object the server answered. Raises ModelServerUnavailableError (unreachable,
        too slow, 429/5xx after retries) or ModelServerError (refused or unreadable)."""
        if not self.breaker.allow():
            raise ModelServerUnavailableError(
                f"The {self.role} model server is unavailable right now (paused after repeated failures, "
                f"next try in {self.breaker.retry_in():.0f} s); please try again in a few minutes."
            )
        try:
            payload = self._post(path, body)
        except ModelServerUnavailableError as error:
            self.breaker.record_failure(str(error))
            raise
        except ModelServerError:
            self.breaker.release()  # the server answered: a refusal says nothing about its health
            raise
        self.breaker.record_success()
        return payload

    def _post(self, path: str, body: dict) -> dict:
        url = f"{self.base_url}/{path}"
        self.requests += 1
        try:
            response = self._session.post(url, data=json.dumps(body), timeout=self.timeout)
        except requests.exceptions.RequestException as error:
            timed_out = isinstance(error, requests.exceptions.Timeout) or "timed out" in str(error).lower()
            reason = "did not answer in time" if timed_out else "could not be reached"
            log.warning("%s model server %s %s after %d attempts: %s", self.role, self.shown_url, reason,
                        self.attempts, type(error).__name__)
            raise self._unavailable(reason) from None
        if response.status_code in RETRY_STATUSES:
            log.warning("%s model server %s answered HTTP %d after %d attempts", self.role, self.shown_url,
                        response.status_code, self.attempts)
            raise self._unavailable(f"answered HTTP {response.status_code}")
        if response.status_code in (401, 403):
            raise ModelServerError(
                f"The {self.role} model server refused the API key (HTTP {response.status_code}); "
                f"check {self.setting.replace('BASE_URL', 'API_KEY')}."
            )
        if response.status_code >= 400:
            raise ModelServerError(
                f"The {self.role} model server refused the request (HTTP {response.status_code}: "
                f"{_error_detail(response)})."
            )
        try:
            payload = response.json()
        except ValueError:
            raise ModelServerError(f"The {self.role} model server sent an unreadable response (not JSON).") from None
        if not isinstance(payload, dict):
            raise ModelServerError(f"The {self.role} model server sent an unreadable response (not an object).")
        return payload

    def _unavailable(self, reason: str) -> ModelServerUnavailableError:
        return ModelServerUnavailableError(
            f"The {self.role} model server is unavailable right now (it {reason}, "
            f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}); please try again in a few minutes."
        )

    def close(self) -> None:
        self._session.close()


class RemoteEmbedder:
    """Embeddings from an OpenAI-compatible server; the Embedder interface, no torch.

    Vectors come back L2-normalized float32 (normalized again here: servers differ).
    `count_tokens` uses the model's own `tokenizer.json` (the `tokenizers` library) when
    it is on this machine or downloadable, else an estimate of ~4 characters a token.
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str,
        api_key: str = "",
        timeout: float = 30.0,
        max_retries: int = 2,
        batch_size: int = 32,
        query_prompt: str | None = None,
        query_cache_size: int = QUERY_CACHE_SIZE,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        """Ask the server for one vector to learn its dimension.

        `query_prompt` None: the model's `query` prompt from its config_sentence_transformers.json,
        or Qwen3-Embedding's when the files cannot be read and the name says Qwen3-Embedding.
        Raises ModelLoadError when the server does not serve `model`, ModelServerUnavailableError
        when it cannot be reached, ModelServerError for any other refusal.
        """
        self.model_id = model.strip()
        if not self.model_id:
            raise ModelLoadError("Embedding model is not configured; set EMBEDDING_MODEL to the name the server serves.")
        self.batch_size = max(1, batch_size)
        self._client = _ServerClient(role="embedding", setting="EMBEDDING_BASE_URL", base_url=base_url,
                                     api_key=api_key, timeout=timeout, max_retries=max_retries, breaker=breaker)
        self.query_prompt = _query_prompt(self.model_id) if query_prompt is None else query_prompt
        self._tokenizer = _tokenizer(self.model_id)
        self._cache: LRUCache[str, np.ndarray] = LRUCache(maxsize=max(1, query_cache_size))
        self._cache_lock = threading.Lock()
        self.dimension = 0
        self.encode_calls = 0
        try:
            probe = self._request([_DIMENSION_PROBE])
        except ModelServerError as error:
            if "HTTP 404" in str(error) or "does not exist" in str(error):
                raise ModelLoadError(
                    f"The embedding model server at {self._client.shown_url} does not serve {self.model_id!r}; "
                    "set EMBEDDING_MODEL to the name it serves (vLLM: --served-model-name)."
                ) from None
            raise
        self.dimension: int = int(probe.shape[1])
        self.encode_calls = 0  # server requests for questions and documents, the probe not counted (tests read it)
        log.info("embedding model %s on %s: %d dimensions, query prompt %s, token counts %s", self.model_id,
                 self._client.shown_url, self.dimension, "on" if self.query_prompt else "off",
                 "exact" if self._tokenizer else "estimated")

    def embed_query(self, text: str) -> np.ndarray:
        """The normalized float32 vector (dimension,) of a question; repeated questions hit a cache.

        Raises ModelServerUnavailableError / ModelServerError when the server fails.
        """
        with self._cache_lock:
            cached = self._cache.get(text)
        if cached is not None:
            return cached
        vector = self._request([f"{self.query_prompt}{self.capped_query(text)}"])[0]
        vector.setflags(write=False)  # shared by every later hit
        with self._cache_lock:
            self._cache[text] = vector
        return vector

    def capped_query(self, text: str) -> str:
        """The question as sent: at most QUERY_MAX_TOKENS, head and tail kept (as the Embedder does;
        without the tokenizer the question goes whole and the server truncates)."""
        if self._tokenizer is None:
            return text
        return keep_head_and_tail(text, limit=QUERY_MAX_TOKENS,
                                  encode=lambda value: self._tokenizer.encode(value, add_special_tokens=False).ids,
                                  decode=self._tokenizer.decode)

    def embed_documents(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Normalized float32 vectors (len(texts), dimension), in input order, EMBEDDING_BATCH_SIZE
        texts a request. Raises ModelServerUnavailableError / ModelServerError."""
        texts = list(texts)
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return vectors
        bar = tqdm(total=len(texts), desc="Embedding", unit="chunk") if progress else None
        try:
            for start in range(0, len(texts), self.batch_size):
                batch = texts[start : start + self.batch_size]
                vectors[start : start + len(batch)] = self._request(batch)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        return vectors

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for `text` (no special tokens): exact with the model's tokenizer, else estimated."""
        if not text:
            return 0
        if self._tokenizer is None:
            return estimate_tokens(text)
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def warm_up(self) -> None:
        """Nothing to load here: the server is warm (the start-up probe already reached it)."""

    def close(self) -> None:
        self._client.close()

    def _request(self, inputs: list[str]) -> np.ndarray:
        self.encode_calls += 1
        payload = self._client.post("embeddings", {"model": self.model_id, "input": inputs, "encoding_format": "float"})
        try:
            rows = sorted(payload["data"], key=lambda row: row.get("index", 0))
            vectors = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ModelServerError("The embedding model server sent an unreadable response (no data[].embedding).") from None
        if vectors.ndim != 2 or vectors.shape[0] != len(inputs) or vectors.shape[1] == 0:
            raise ModelServerError(
                f"The embedding model server answered {vectors.shape[0] if vectors.ndim else 0} vectors "
                f"for {len(inputs)} texts."
            )
        if self.dimension and vectors.shape[1] != self.dimension:
            raise DimensionMismatchError(
                f"The embedding model server now makes {vectors.shape[1]}-dimensional vectors, not "
                f"{self.dimension}: it serves another model; restart the bot, and rebuild the index "
                "with `supportbot index --rebuild` if the model changed."
            )
        return unit_rows(vectors)


class RemoteReranker:
    """Rerank scores from a Cohere/Jina-style server; the Reranker interface, no torch.

    With the Qwen3 template (`template="qwen3"`, or `auto` and a name containing
    "qwen3-reranker") the client sends the model card's prompt split as vLLM's example
    does: query = prefix + instruction + query, document = document + suffix, so the
    server's score is P("yes"). Passages are cut to fit `max_tokens` for the whole input
    with the model's tokenizer when it is available (else by an estimate).
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str,
        instruction: str,
        max_tokens: int,
        api_key: str = "",
        timeout: float = 30.0,
        max_retries: int = 2,
        template: str = "auto",
        cache_size: int = SCORE_CACHE_SIZE,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        """Nothing is requested yet (the first question does). Raises ModelLoadError for an unknown template."""
        self.model_id = model.strip()
        self.instruction = instruction
        self.max_tokens = max_tokens
        if template not in ("auto", "qwen3", "none"):
            raise ModelLoadError(f"Unknown RERANKER_TEMPLATE {template!r}; use auto, qwen3 or none.")
        self.qwen3 = template == "qwen3" or (template == "auto" and "qwen3-reranker" in self.model_id.lower())
        self._client = _ServerClient(role="reranker", setting="RERANKER_BASE_URL", base_url=base_url,
                                     api_key=api_key, timeout=timeout, max_retries=max_retries, breaker=breaker)
        self._tokenizer = _tokenizer(self.model_id)
        self._template_tokens: int | None = None
        self._cache = ScoreCache(size=cache_size)
        self.forward_calls = 0  # server requests (tests read it)
        # A served name without "qwen3-reranker" (vLLM --served-model-name) needs RERANKER_TEMPLATE=qwen3.
        log.info("reranker %s on %s: %s prompt template", self.model_id, self._client.shown_url,
                 "Qwen3" if self.qwen3 else "no")

    def score(self, query: str, documents: Sequence[str], *, use_cache: bool = True) -> list[float]:
        """P("yes") for each document, in input order; repeated (query, document) pairs hit a cache.

        Raises ModelServerUnavailableError / ModelServerError when the server fails.
        """
        if not documents:
            return []
        if not use_cache:
            return self._request(query, list(documents))
        return self._cache.scores(query, documents, self._request)

    def warm_up(self) -> None:
        """Nothing to load here: the server is warm."""

    def close(self) -> None:
        self._client.close()

    def request_texts(self, query: str, documents: Sequence[str]) -> tuple[str, list[str]]:
        """The `query` and `documents` sent for these inputs: the template applied and passages cut
        (Qwen3), or both as given (another reranker: its server truncates)."""
        if not self.qwen3:
            return query, list(documents)
        query = self._capped_query(query)
        return rerank_query_text(self.instruction, query), [rerank_document_text(self._cut(query, doc)) for doc in documents]

    def _capped_query(self, query: str) -> str:
        """A long question's head and tail, leaving documents MIN_DOCUMENT_SHARE of max_tokens (as the Reranker)."""
        if self._tokenizer is None:
            return query
        encode = lambda value: self._tokenizer.encode(value, add_special_tokens=False).ids  # noqa: E731
        body_budget = self.max_tokens - len(encode(RERANK_PREFIX)) - len(encode(RERANK_SUFFIX))
        overhead = len(encode(format_pair(self.instruction, "", "")))
        limit = max(MIN_QUERY_TOKENS, body_budget - overhead - int(MIN_DOCUMENT_SHARE * self.max_tokens) - _SEAM_SLACK)
        return keep_head_and_tail(query, limit=limit, encode=encode, decode=self._tokenizer.decode)

    def _request(self, query: str, documents: list[str]) -> list[float]:
        self.forward_calls += 1
        query_text, texts = self.request_texts(query, documents)
        payload = self._client.post(
            "rerank", {"model": self.model_id, "query": query_text, "documents": texts, "top_n": len(texts)}
        )
        scores: list[float | None] = [None] * len(documents)
        try:
            for row in payload["results"]:
                scores[int(row["index"])] = float(row["relevance_score"])
        except (KeyError, TypeError, ValueError, IndexError):
            raise ModelServerError("The reranker model server sent an unreadable response (no results[].relevance_score).") from None
        if any(value is None for value in scores):
            raise ModelServerError(f"The reranker model server scored fewer than the {len(documents)} passages sent.")
        return [float(value) for value in scores]

    def _cut(self, query: str, document: str) -> str:
        """`document` cut at its end so prompt + query + document fit `max_tokens`, as the in-process
        Reranker cuts the model card's user message (the same tokens when the tokenizer is here)."""
        body = format_pair(self.instruction, query, document)
        head = len(format_pair(self.instruction, query, ""))
        if self._tokenizer is None:
            budget = self.max_tokens - estimate_tokens(RERANK_PREFIX + RERANK_SUFFIX)
            return document if estimate_tokens(body) <= budget else document[: max(0, budget * 3 - head)]
        if self._template_tokens is None:
            self._template_tokens = len(self._tokenizer.encode(RERANK_PREFIX + RERANK_SUFFIX, add_special_tokens=False).ids)
        budget = max(1, self.max_tokens - self._template_tokens)
        encoding = self._tokenizer.encode(body, add_special_tokens=False)
        if len(encoding.ids) <= budget:
            return document
        return document[: max(0, encoding.offsets[budget - 1][1] - head)]


# Model files the clients read (prompts, tokenizer), found without loading the model -------------
def _model_file(model: str, filename: str) -> Path | None:
    """`filename` of a model folder or hub repo: local, cached, or downloaded (when the hub is allowed)."""
    path = Path(model).expanduser()
    if path.is_dir():
        candidate = path / filename
        return candidate if candidate.is_file() else None
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:
        return None  # a folder that is not here
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(model, filename, local_files_only=_hub_offline(), etag_timeout=10))
    except Exception:  # not cached and offline, no such file, no network: the caller falls back
        return None


def _hub_offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in _TRUTHY for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _query_prompt(model: str) -> str:
    config = _model_file(model, "config_sentence_transformers.json")
    if config is not None:
        try:
            return str(json.loads(config.read_text(encoding="utf-8")).get("prompts", {}).get("query") or "")
        except (OSError, ValueError, AttributeError):
            pass
    if "qwen3-embedding" in model.lower():
        return QWEN3_EMBEDDING_QUERY_PROMPT
    log.info("No query prompt known for %s: questions are embedded as they are.", model)
    return ""


def _tokenizer(model: str):
    path = _model_file(model, "tokenizer.json")
    return None if path is None else _load_tokenizer(str(path))


@lru_cache(maxsize=4)
def _load_tokenizer(path: str):
    """The Rust tokenizer, shared by both clients when they name the same file; None when unreadable."""
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(path)
    except Exception as error:  # not a tokenizers file
        log.info("Cannot read %s (%s): token counts are estimated.", path, type(error).__name__)
        return None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _error_detail(response: requests.Response) -> str:
    """The server's own error text, one short line."""
    try:
        body = response.json()
        message = body.get("message") or body.get("detail") or body.get("error") or ""
        if isinstance(message, dict):
            message = message.get("message", "")
    except (ValueError, AttributeError):
        message = response.text
    text = " ".join(str(message).split())[:200]
    return text or response.reason or "no detail"


__all__ = ["RemoteEmbedder", "RemoteReranker", "RERANK_PREFIX", "RERANK_SUFFIX"]
