"""The same store and indexer code against the bundled Milvus 2.3.5 standalone server.

That server predates BM25 functions and hybrid search: the store must notice,
build a dense-only collection and answer keyword/hybrid searches densely, with
one warning and no error.
"""

from __future__ import annotations

import logging
import shutil

import pytest

from knowledge.indexer import Indexer
from knowledge.settings import KnowledgeSettings
from knowledge.store import VectorStore
from tests.fixtures.milvus import HashingEmbedder

pytestmark = pytest.mark.slow


@pytest.fixture
def server_settings(tmp_path, corpus_en, milvus_server, request) -> KnowledgeSettings:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("product_faq.md", "performance_faq.md"):
        shutil.copy(corpus_en / "faq" / name, docs / name)
    return KnowledgeSettings(
        _env_file=None,
        knowledge_sources=f"faq={docs}::*.md",
        data_dir=tmp_path / "data",
        milvus_uri=milvus_server,
        milvus_collection=f"test_{request.node.name[:40]}",
    )


def test_server_indexes_and_searches_with_dense_fallback(server_settings, caplog):
    embedder = HashingEmbedder(dimension=64)
    store = VectorStore(
        uri=server_settings.milvus_uri,
        collection=server_settings.milvus_collection,
        dimension=embedder.dimension,
        model_id=embedder.model_id,
    )
    try:
        assert store.supports_hybrid is False
        indexer = Indexer(settings=server_settings, embedder=embedder, store=store, batch_size=16)
        with caplog.at_level(logging.ERROR):
            report = indexer.refresh()
        # Milvus 2.3 takes one vector field: known from its version, no refused create (pymilvus
        # logs each refusal as an ERROR with a traceback).
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        assert report.added == report.chunks > 5
        assert store.count() == report.chunks
        assert indexer.refresh().unchanged == report.chunks  # hashes read back from the server

        vector = embedder.embed_query("how much memory does Milvus need")
        dense = store.search_dense(vector, limit=5)
        assert len(dense) == 5 and dense[0].dense_score > 0
        assert store.get([dense[0].chunk.id]) == [dense[0].chunk]

        with caplog.at_level(logging.WARNING, logger="knowledge.store"):
            hybrid = store.search_hybrid(vector, "memory", limit=5)
            keyword = store.search_bm25("memory", limit=5, vector=vector)
            store.search_hybrid(vector, "memory", limit=5)
        assert [c.chunk.id for c in hybrid] == [c.chunk.id for c in dense]
        assert [c.chunk.id for c in keyword] == [c.chunk.id for c in dense]
        warnings = [r for r in caplog.records if "dense search only" in r.getMessage()]
        assert len(warnings) == 1

        rebuilt = indexer.refresh(rebuild=True)
        assert rebuilt.rebuilt and store.physical_name() == rebuilt.collection
        assert store.count() == report.chunks
    finally:
        store.close()


def test_reopening_server_collection_keeps_fallback(server_settings):
    embedder = HashingEmbedder(dimension=64)
    first = VectorStore(
        uri=server_settings.milvus_uri, collection=server_settings.milvus_collection,
        dimension=64, model_id=embedder.model_id,
    )  # fmt: skip
    first.close()
    again = VectorStore(
        uri=server_settings.milvus_uri, collection=server_settings.milvus_collection,
        dimension=32, model_id=embedder.model_id,
    )  # fmt: skip
    try:
        assert not again.supports_hybrid and again.needs_rebuild
    finally:
        again.close()
