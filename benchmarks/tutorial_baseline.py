"""The original tutorial's loops, kept verbatim in spirit: the benchmark's baseline only.

The Milvus + Qwen3 RAG tutorial embeds one text per `encode` call, and scores
reranker candidates with the model card's `process_inputs` + `compute_logits`
(`knowledge.reranker.reference_scores`). The product never calls this module;
`benchmarks.bench` times it against the product's path on the same model objects.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

# The tutorial reranks with the model card's maximum length.
TUTORIAL_RERANK_MAX_LENGTH = 8192


def emb_text(embedding_model, text: str, *, is_query: bool = False) -> list[float]:
    """The tutorial's `emb_text`: one `encode` call for one text."""
    if is_query:
        embeddings = embedding_model.encode([text], prompt_name="query")
    else:
        embeddings = embedding_model.encode([text])
    return embeddings[0].tolist()


def embed_corpus(embedding_model, text_lines: Sequence[str]) -> np.ndarray:
    """The tutorial's indexing loop: `emb_text` per chunk, in corpus order."""
    data = [emb_text(embedding_model, line) for line in text_lines]
    return np.asarray(data, dtype=np.float32)


def rerank_documents(model, tokenizer, query: str, documents: Sequence[str], *, instruction: str) -> list[float]:
    """The tutorial's `rerank_documents`: every pair in one batch at full length, all-position logits."""
    from knowledge.reranker import reference_scores

    with warnings.catch_warnings():  # the model card's pad(max_length=...) call warns on every use
        warnings.simplefilter("ignore", UserWarning)
        return list(
            reference_scores(
                model, tokenizer, query, list(documents), instruction=instruction,
                max_length=TUTORIAL_RERANK_MAX_LENGTH,
            )
        )
