"""The embedding model (sentence-transformers): the only place that loads it.

Queries get the model's `query` prompt when it defines one (Qwen3-Embedding's
instruction), documents none; vectors come back L2-normalized float32.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from cachetools import LRUCache

from knowledge.errors import ModelLoadError
from knowledge.runtime import (
    choose_device,
    choose_dtype,
    limit_malloc_arenas,
    release_free_memory,
    resolve_model_source,
)

QUERY_CACHE_SIZE = 1024
_WARM_UP_QUERY = "How do I get started?"


class Embedder:
    """Turns questions and passages into unit vectors; safe to call from several threads."""

    def __init__(
        self,
        *,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        query_cache_size: int = QUERY_CACHE_SIZE,
    ) -> None:
        """Load the model once. Raises ModelLoadError (one line) when it is missing or broken."""
        limit_malloc_arenas()  # before any worker thread calls the model (see runtime)
        self.model_id = model.strip()
        self.batch_size = batch_size
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
                f"Embedding model {self.model_id!r} could not be loaded: {_first_line(error)}"
            ) from error
        dimension = self._model.get_embedding_dimension()
        if not dimension:
            raise ModelLoadError(f"Embedding model {self.model_id!r} does not report its vector size.")
        self.dimension: int = int(dimension)
        self._query_prompt_name = "query" if self._model.prompts.get("query") else None
        self._backend = getattr(self._model.tokenizer, "backend_tokenizer", None)
        if self._backend is None:
            raise ModelLoadError("The embedding model has no fast tokenizer; token counting needs one.")
        self._lock = threading.Lock()
        self._cache: LRUCache[str, np.ndarray] = LRUCache(maxsize=max(1, query_cache_size))
        self._cache_lock = threading.Lock()
        self.encode_calls = 0  # how many times the model ran (tests and metrics read it)

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
        vector = self._encode([text], prompt_name=self._query_prompt_name, progress=False)[0]
        release_free_memory()  # questions run on many worker threads, each filling its arena
        vector.setflags(write=False)  # shared by every later hit
        with self._cache_lock:
            self._cache[text] = vector
        return vector

    def embed_documents(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Normalized float32 vectors (len(texts), dimension), in input order.

        The whole list goes to one `encode` call, which sorts it by length into batches.
        """
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._encode(list(texts), prompt_name=None, progress=progress)
        release_free_memory()  # the batches' activations, or the process keeps them as RSS
        return vectors

    def count_tokens(self, text: str) -> int:
        """How many tokens the model sees for `text` (no special tokens, no truncation)."""
        if not text:
            return 0
        # The model's own Rust tokenizer, under the encode lock with truncation and padding off
        # (the next `encode` sets them again): a private copy cost ~160 MB RSS for Qwen's vocabulary.
        with self._lock:
            self._backend.no_truncation()
            self._backend.no_padding()
            return len(self._backend.encode(text, add_special_tokens=False).ids)

    def warm_up(self) -> None:
        """Run one short query through the model so the first real question is not slow."""
        self._encode([_WARM_UP_QUERY], prompt_name=self._query_prompt_name, progress=False)

    def _encode(self, texts: list[str], *, prompt_name: str | None, progress: bool) -> np.ndarray:
        # One encode at a time: the shared HF tokenizer is not safe to reconfigure concurrently,
        # and two forward passes would only fight over the same cores.
        with self._lock:
            self.encode_calls += 1
            vectors = self._model.encode(
                texts,
                prompt_name=prompt_name,
                batch_size=self.batch_size,
                show_progress_bar=progress,
                normalize_embeddings=True,
                convert_to_numpy=True,
            )
        vectors = np.asarray(vectors, dtype=np.float32)
        # Normalizing again in float32: under bfloat16 the model's own Normalize is only ~1e-2 exact.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
