"""The texts the Qwen3 embedding and reranker models expect around their inputs.

Torch-free, so the model-server clients (knowledge/model_servers.py) format
exactly what the in-process models (embedder.py, reranker.py) do.
"""

from __future__ import annotations

# Qwen3-Embedding's `query` prompt (its config_sentence_transformers.json): sentence-transformers
# prepends it to a question; documents get none. vLLM leaves this to the client.
QWEN3_EMBEDDING_QUERY_PROMPT = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
)

# Qwen3-Reranker's model card: a chat prompt around one (instruction, query, document) triple,
# scored by P("yes") at the last position.
RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and "
    'the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def format_pair(instruction: str, query: str, document: str) -> str:
    """The model card's user message for one (query, document) pair."""
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"


def rerank_query_text(instruction: str, query: str) -> str:
    """The `query` of a /rerank request: the prompt up to the document (vLLM's qwen3_reranker example)."""
    return f"{RERANK_PREFIX}<Instruct>: {instruction}\n<Query>: {query}\n"


def rerank_document_text(document: str) -> str:
    """One `documents` entry of a /rerank request; query + document is the whole model input."""
    return f"<Document>: {document}{RERANK_SUFFIX}"
