"""The embedding model (sentence-transformers): the only place that loads it.

Queries get the model's `query` prompt when it defines one (Qwen3-Embedding's
instruction), documents none; vectors come back L2-normalized float32.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
from cachetools import LRUCache
from tqdm.auto import tqdm

from knowledge.coalescing import Coalescer
from knowledge.errors import ModelLoadError
from knowledge.prefix_cache import PrefixCache, last_hidden
from knowledge.token_cap import keep_head_and_tail
from knowledge.runtime import (
    choose_device,
    choose_dtype,
    first_line,
    limit_malloc_arenas,
    model_call,
    release_free_memory,
    resolve_model_source,
)
from knowledge.vectors import unit_rows

QUERY_CACHE_SIZE = 1024
# A question longer than this (a pasted log) keeps its head and tail: the query instruction
# before it always stays, and the embedding pass stays short.
QUERY_MAX_TOKENS = 512
_SEAM_SLACK = 4  # tokens re-tokenizing a head + " … " + tail may add, plus the end-of-text token
_WARM_UP_QUERY = "How do I get started?"
# Questions that arrive together share one forward pass, up to this many (knowledge/coalescing).
QUERY_BATCH = 8
# The cached-instruction path is kept only when its first vector matches the plain path's this well
# (float rounding gives > 0.9999; a model that is not causal would be far off).
PREFIX_CHECK_COSINE = 0.999


class Embedder:
    """Turns questions and passages into unit vectors; safe to call from several threads."""

    def __init__(
        self,
        *,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 32,
        batch_tokens: int = 1024,
        query_cache_size: int = QUERY_CACHE_SIZE,
        query_max_tokens: int = QUERY_MAX_TOKENS,
    ) -> None:
        """Load the model once. Raises ModelLoadError (one line) when it is missing or broken.

        A forward pass takes at most `batch_size` texts and `batch_tokens` tokens
        counting padding (texts x the longest of them).
        """
        limit_malloc_arenas()  # before any worker thread calls the model (see runtime)
        self.model_id = model.strip()
        self.batch_size = max(1, batch_size)
        self.batch_tokens = max(1, batch_tokens)
        self.device = choose_device(device)
        self.dtype = choose_dtype(dtype, device=self.device)
        source = resolve_model_source(model, role="Embedding model", setting="EMBEDDING_MODEL")
        try:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(
                source,
                device=str(self.device),
                local_files_only=True,
                model_kwargs={"dtype": self.dtype},
            )
        except Exception as error:  # missing weights, bad config, unknown architecture
            raise ModelLoadError(
                f"Embedding model {self.model_id!r} could not be loaded: {first_line(error)}"
            ) from error
        dimension = self._model.get_embedding_dimension()
        if not dimension:
            raise ModelLoadError(f"Embedding model {self.model_id!r} does not report its vector size.")
        self.dimension: int = int(dimension)
        self._query_prompt_name = "query" if self._model.prompts.get("query") else None
        prompt = self._model.prompts.get("query") or ""
        self._query_prompt = prompt
        # Qwen3-Embedding's query instruction (~20 tokens) is the same in every question: a causal model
        # with last-token pooling runs it once and reads its keys/values (decided on the first query).
        self._prefix: PrefixCache | None = None
        self._prefix_state = "untried"  # untried | on | off
        prompt_tokens = len(self._model.tokenizer.encode(prompt, add_special_tokens=False)) if prompt else 0
        seq_limit = (self._model.max_seq_length or query_max_tokens + prompt_tokens) - prompt_tokens
        self.query_max_tokens = max(1, min(query_max_tokens, seq_limit - _SEAM_SLACK))
        self._backend = getattr(self._model.tokenizer, "backend_tokenizer", None)
        if self._backend is None:
            raise ModelLoadError("The embedding model has no fast tokenizer; token counting needs one.")
        self._lock = threading.Lock()
        self._cache: LRUCache[str, np.ndarray] = LRUCache(maxsize=max(1, query_cache_size))
        self._cache_lock = threading.Lock()
        self.encode_calls = 0  # how many times the model ran (tests and metrics read it)
        # Questions queued while the model was busy (another question's reranking, say) go
        # through together: measured 2 in flight vs 1, docs/performance.md.
        self._queries: Coalescer[str, np.ndarray] = Coalescer(
            run=self._embed_query_batch, max_batch=min(QUERY_BATCH, self.batch_size), gate=model_call
        )

    @property
    def model(self):
        """The loaded SentenceTransformer (benchmarks run the tutorial's loop on the same object)."""
        return self._model

    def embed_query(self, text: str) -> np.ndarray:
        """The normalized float32 vector (dimension,) of a question; repeated questions hit a cache."""
        with self._cache_lock:
            cached = self._cache.get(text)
        if cached is not None:
            return cached
        vector = self._queries.submit(self.capped_query(text))
        release_free_memory()  # questions run on many worker threads, each filling its arena
        vector.setflags(write=False)  # shared by every later hit
        with self._cache_lock:
            self._cache[text] = vector
        return vector

    def _embed_query_batch(self, texts: list[str]) -> list[np.ndarray]:
        # The coalescer already holds the model-call slot for this batch (and runs one at a time).
        vectors = self._after_instruction(texts) if self._instruction_cached() else None
        if vectors is None:
            vectors = self._encode(texts, prompt_name=self._query_prompt_name, progress=False, gated=False)
        else:
            self.encode_calls += 1
        return [vector.copy() for vector in vectors]  # each question's cache entry owns its row

    @property
    def caches_instruction(self) -> bool:
        """Whether questions run after the query instruction's cached keys/values (known after the first)."""
        return self._prefix_state == "on"

    def _instruction_cached(self) -> bool:
        if self._prefix_state == "untried":
            self._prefix_state = "on" if self._cache_instruction() else "off"
        return self._prefix_state == "on"

    def _cache_instruction(self) -> bool:
        """Run the query instruction once and keep its keys/values, if this model allows it.

        Needs a query prompt, a transformer with last-token pooling that counts the prompt, and
        the same vector as the plain path for a probe question (a bidirectional model fails that).
        """
        modules = list(self._model)
        pooling = modules[1] if len(modules) > 1 else None
        config = pooling.get_config_dict() if hasattr(pooling, "get_config_dict") else {}
        if (
            not self._query_prompt
            or not hasattr(modules[0], "auto_model")
            or config.get("pooling_mode") != "lasttoken"
            or not config.get("include_prompt", True)
            or any(type(module).__name__ not in ("Pooling", "Normalize") for module in modules[1:])
        ):
            return False
        with self._lock:
            probe = self._token_ids(self._query_prompt + _WARM_UP_QUERY)
            bare = self._model.tokenizer.encode(self._query_prompt, add_special_tokens=False)
            start = next((i for i in range(2) if probe[i : i + len(bare)] == bare), None)  # after a BOS, say
            if start is None:
                return False
            self._prefix = PrefixCache(model=modules[0].auto_model, prefix=probe[: start + len(bare)], device=self.device)
        fast = self._after_instruction([_WARM_UP_QUERY])
        plain = self._encode([_WARM_UP_QUERY], prompt_name=self._query_prompt_name, progress=False, gated=False)
        self.encode_calls -= 1  # the check is not a question
        if fast is None or float(fast[0] @ plain[0]) < PREFIX_CHECK_COSINE:
            self._prefix = None
            return False
        return True

    def _after_instruction(self, texts: list[str]) -> np.ndarray | None:
        """Query vectors from the cached instruction, or None when a text's tokens do not start
        with it (a tokenizer merging across the seam): the caller then takes the plain path."""
        prefix = self._prefix
        assert prefix is not None
        with self._lock:  # the tokenizer; the forward pass below needs no lock
            tails = []
            for text in texts:
                ids = self._token_ids(self._query_prompt + text)
                if ids[: prefix.length] != prefix.ids or len(ids) <= prefix.length:
                    return None
                tails.append(ids[prefix.length :])
        pad_id = self._model.tokenizer.pad_token_id or 0
        hidden = last_hidden(self._model[0].auto_model, tails, pad_id=pad_id, device=self.device, prefix=prefix)
        return unit_rows(hidden.float().cpu().numpy())

    def _token_ids(self, text: str) -> list[int]:
        # The model's own preprocessing (special tokens, truncation to max_seq_length), one text unpadded.
        return self._model.preprocess([text])["input_ids"][0].tolist()

    def capped_query(self, text: str) -> str:
        """The question as embedded: at most `query_max_tokens`, its head and tail kept, so the
        model's query instruction (which comes first) is never what truncation cuts."""
        with self._lock:
            self._backend.no_truncation()  # `encode` left the model's truncation switched on
            return keep_head_and_tail(
                text,
                limit=self.query_max_tokens,
                encode=lambda value: self._backend.encode(value, add_special_tokens=False).ids,
                decode=self._backend.decode,
            )

    def embed_documents(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Normalized float32 vectors (len(texts), dimension), in input order.

        Texts are sorted by their token count and grouped under the token budget, so
        long passages go a few at a time and short ones many at a time.
        """
        texts = list(texts)
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return vectors
        bar = tqdm(total=len(texts), desc="Embedding", unit="chunk") if progress else None
        try:
            for batch in self._token_batches(texts):
                vectors[batch] = self._encode(
                    [texts[i] for i in batch], prompt_name=None, progress=False, batch_size=len(batch)
                )
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        release_free_memory()  # the batches' activations, or the process keeps them as RSS
        return vectors

    def _token_batches(self, texts: list[str]) -> list[list[int]]:
        """Indices of `texts`, longest first, in batches within the row and token budgets.

        Measured for the Qwen3-0.6B shape on a 2-core CPU (docs/performance.md): fixed
        batches of 8 sorted by characters, as sentence-transformers sorts, padded code
        and tables to 2x the time of one text per call; this grouping is 1.3-1.6x faster
        than one text per call.
        """
        counts = self._token_counts(texts, special_tokens=True)
        limit = self._model.max_seq_length or max(counts)
        counts = [min(count, limit) for count in counts]
        batches: list[list[int]] = []
        for index in sorted(range(len(texts)), key=lambda i: -counts[i]):
            batch = batches[-1] if batches else None
            # The batch's first text is its longest: the width every row is padded to.
            if batch and len(batch) < self.batch_size and (len(batch) + 1) * counts[batch[0]] <= self.batch_tokens:
                batch.append(index)
            else:
                batches.append([index])
        return batches

    def count_tokens(self, text: str) -> int:
        """How many tokens the model sees for `text` (no special tokens, no truncation)."""
        if not text:
            return 0
        return self._token_counts([text], special_tokens=False)[0]

    def _token_counts(self, texts: list[str], *, special_tokens: bool) -> list[int]:
        # The model's own Rust tokenizer, under the encode lock with truncation and padding off
        # (the next `encode` sets them again): a private copy cost ~160 MB RSS for Qwen's vocabulary.
        with self._lock:
            self._backend.no_truncation()
            self._backend.no_padding()
            encodings = self._backend.encode_batch(texts, add_special_tokens=special_tokens)
        return [len(encoding.ids) for encoding in encodings]

    def warm_up(self) -> None:
        """Run one short query through the model so the first real question is not slow."""
        self._queries.submit(_WARM_UP_QUERY)

    def _encode(
        self,
        texts: list[str],
        *,
        prompt_name: str | None,
        progress: bool,
        batch_size: int | None = None,
        gated: bool = True,
    ) -> np.ndarray:
        # One encode at a time: the shared HF tokenizer is not safe to reconfigure concurrently,
        # and two forward passes would only fight over the same cores. The model-call slot is
        # taken before the lock, in the same order as the query coalescer takes them.
        with model_call() if gated else nullcontext(), self._lock:
            self.encode_calls += 1
            vectors = self._model.encode(
                texts,
                prompt_name=prompt_name,
                batch_size=batch_size or self.batch_size,
                show_progress_bar=progress,
                normalize_embeddings=True,
                convert_to_numpy=True,
            )
        # Normalizing again in float32: under bfloat16 the model's own Normalize is only ~1e-2 exact.
        return unit_rows(np.asarray(vectors, dtype=np.float32))
