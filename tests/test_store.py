"""VectorStore over real Milvus Lite files in tmp dirs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from knowledge.errors import DimensionMismatchError, StoreLockedError, StoreUnavailableError
from knowledge.store import VectorStore
from knowledge.types import Chunk, SourceFilter
from tests.fixtures.milvus import HashingEmbedder, release_lite

PROJECT_ROOT = Path(__file__).resolve().parents[1]

TEXTS = {
    "auth": "Enable authentication by setting common.security.authorizationEnabled to true in milvus.yaml.",
    "version": "Milvus v2.4.5 fixed a bug in the query node; upgrade from 2.4.4 is recommended.",
    "index": "An index speeds up vector search. HNSW and IVF_FLAT are the most common index types.",
    "storage": "Milvus stores vector data in object storage such as MinIO or S3, and metadata in etcd.",
    "memory": "Query nodes load segments into memory; the memory needed grows with the vector count.",
    "limits": "A collection can hold up to 4 vector fields; the maximum dimension is 32768.",
}


def make_chunk(key: str, text: str, *, source_name: str = "docs", ordinal: int = 0) -> Chunk:
    return Chunk(
        id=f"{source_name}:faq/{key}.md#{key}:{ordinal}",
        source=f"faq/{key}.md",
        title=f"{key.title()} FAQ",
        heading_path=("Questions", f"About {key} › details"),
        anchor=key,
        url=f"https://milvus.io/docs/{key}.md#{key}",
        text=text,
        ordinal=ordinal,
        content_hash=f"hash-{key}-{len(text)}",
        source_name=source_name,
    )


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder(dimension=64)


@pytest.fixture
def chunks() -> list[Chunk]:
    names = ["docs", "docs", "docs", "ops", "ops", "ops"]
    return [make_chunk(k, t, source_name=n) for (k, t), n in zip(TEXTS.items(), names)]


@pytest.fixture
def store(milvus_lite_uri, embedder, chunks):
    store = VectorStore(
        uri=milvus_lite_uri, collection="docs", dimension=embedder.dimension, model_id=embedder.model_id
    )
    store.upsert(chunks, embedder.embed_documents([c.search_text for c in chunks]))
    store.flush()
    yield store
    store.close()


def test_round_trip_keeps_every_chunk_field(store, chunks):
    assert store.count() == len(chunks)
    ids = [c.id for c in reversed(chunks)]
    assert store.get(ids) == list(reversed(chunks))  # exact, in the order asked
    assert store.get(["missing", chunks[0].id]) == [chunks[0]]
    assert store.content_hashes() == {c.id: c.content_hash for c in chunks}


def test_upsert_replaces_and_delete_removes(store, chunks, embedder):
    changed = make_chunk("auth", "Authentication is configured in user.yaml now.")
    store.upsert([changed], embedder.embed_documents([changed.search_text]))
    store.delete([chunks[1].id])
    assert store.count() == len(chunks) - 1
    assert store.get([changed.id]) == [changed]
    assert store.get([chunks[1].id]) == []
    hits = store.search_dense(embedder.embed_query("user.yaml authentication"), limit=1)
    assert hits[0].chunk == changed


def test_dense_search_ranks_and_filters(store, embedder):
    query = embedder.embed_query("how much memory do query nodes need to load segments")
    hits = store.search_dense(query, limit=3)
    assert hits[0].chunk.source == "faq/memory.md"
    assert [h.rank for h in hits] == [1, 2, 3]
    scores = [h.dense_score for h in hits]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1.0001
    filtered = store.search_dense(query, limit=6, source_names=["docs"])
    assert filtered and {h.chunk.source_name for h in filtered} == {"docs"}


def test_a_prefix_keeps_out_every_source_it_starts_but_the_allowed_ones(store, embedder):
    # bot.access: private channels' saved answers, including names no list of exclusions knows.
    extra = [make_chunk("memory", TEXTS["memory"], source_name=name)
             for name in ("team-answers-ga", "team-answers-gb")]
    store.upsert(extra, embedder.embed_documents([c.search_text for c in extra]))
    store.flush()
    query = embedder.embed_query("how much memory do query nodes need to load segments")
    wanted = SourceFilter(exclude=("ops",), exclude_prefix="team-answers-", allow=("team-answers-gb",))
    for hits in (store.search_dense(query, limit=10, source_names=wanted),
                 store.search_bm25("memory segments", limit=10, source_names=wanted, vector=query)):
        assert "team-answers-gb" in {h.chunk.source_name for h in hits} <= {"docs", "team-answers-gb"}
    alone = SourceFilter(exclude_prefix="team-answers-")
    assert {h.chunk.source_name for h in store.search_dense(query, limit=10, source_names=alone)} == {"docs", "ops"}


class _StoreWithoutTitleVectors(VectorStore):
    """Creates collections the way the store did before section-title vectors."""

    def _create(self, name, *, with_bm25, with_title):
        super()._create(name, with_bm25=with_bm25, with_title=False)


def test_an_index_without_title_vectors_serves_as_before_until_rebuilt(
    milvus_lite_uri, chunks, embedder
):
    uri = milvus_lite_uri
    old = _StoreWithoutTitleVectors(uri=uri, collection="docs", dimension=64, model_id=embedder.model_id)
    old.upsert(chunks, embedder.embed_documents([c.search_text for c in chunks]))
    old.flush()
    old.close()
    store = VectorStore(uri=uri, collection="docs", dimension=64, model_id=embedder.model_id)
    try:
        assert store.needs_rebuild and "section-title vectors" in store.rebuild_reason
        assert store.supports_hybrid and not store.has_title_vector  # BM25 still serves
        store.check()
        vector = embedder.embed_query("etcd metadata")
        hits = store.search_hybrid(vector, "etcd", limit=2, title_weight=0.5)
        assert hits and all(h.title_score is None for h in hits)  # body vector and BM25 only
        staging = store.create_staging()
        store.upsert(chunks, embedder.embed_documents([c.search_text for c in chunks]),
                     title_vectors=embedder.embed_documents([c.breadcrumb for c in chunks]),
                     collection=staging)
        store.switch_to(staging)
        assert not store.needs_rebuild and store.has_title_vector
        hits = store.search_hybrid(vector, "etcd", limit=2, title_weight=0.5)
        assert hits and all(h.title_score is not None for h in hits)
    finally:
        store.close()


class _StoreBeforeTheSentencesProperty(VectorStore):
    """Creates collections the way the store did before it recorded whether sentences are filled."""

    @property
    def _sentences_state(self) -> str:
        return ""


def test_an_index_from_before_the_sentences_property_counts_as_filled(milvus_lite_uri, chunks, embedder):
    old = _StoreBeforeTheSentencesProperty(uri=milvus_lite_uri, collection="docs", dimension=64,
                                           model_id=embedder.model_id)
    old.close()
    for wanted in (True, False):
        store = VectorStore(uri=milvus_lite_uri, collection="docs", dimension=64, model_id=embedder.model_id,
                            sentence_vectors=wanted)
        try:
            # They were filled by default then: neither setting rebuilds it, and updates keep them.
            assert store.has_sentence_vectors and not store.needs_rebuild
            assert store.holds_sentence_vectors() and store.holds_sentence_vectors(collection="x") is wanted
        finally:
            store.close()


def test_a_replica_follows_the_rebuild_another_one_made(milvus_lite_uri, chunks, embedder, monkeypatch):
    import knowledge.store as store_module

    old = _StoreWithoutTitleVectors(uri=milvus_lite_uri, collection="docs", dimension=64, model_id=embedder.model_id)
    old.upsert(chunks, embedder.embed_documents([c.search_text for c in chunks]))
    old.flush()
    old.close()
    a = VectorStore(uri=milvus_lite_uri, collection="docs", dimension=64, model_id=embedder.model_id)
    b = VectorStore(uri=milvus_lite_uri, collection="docs", dimension=64, model_id=embedder.model_id)
    try:
        assert a.needs_rebuild and b.needs_rebuild and not b.has_title_vector
        staging = a.create_staging()
        a.upsert(chunks, embedder.embed_documents([c.search_text for c in chunks]),
                 title_vectors=embedder.embed_documents([c.breadcrumb for c in chunks]), collection=staging)
        a.switch_to(staging)
        assert not a.needs_rebuild
        vector = embedder.embed_query("etcd metadata")
        # Within FOLLOW_SECONDS b serves the new collection as it read the old one...
        hits = b.search_hybrid(vector, "etcd", limit=2, title_weight=0.5)
        assert hits and all(h.title_score is None for h in hits) and b.needs_rebuild
        # ...then a search notices the switch, and b neither serves without the new fields
        # nor rebuilds the index once more.
        monkeypatch.setattr(store_module, "FOLLOW_SECONDS", 0.0)
        hits = b.search_hybrid(vector, "etcd", limit=2, title_weight=0.5)
        assert hits and all(h.title_score is not None for h in hits)
        assert not b.needs_rebuild and b.has_title_vector
        assert not b.follow_serving()  # nothing moved since
    finally:
        a.close()
        b.close()


def test_bm25_finds_exact_identifier_and_version(store):
    hits = store.search_bm25("common.security.authorizationEnabled", limit=3)
    assert hits[0].chunk.source == "faq/auth.md"
    assert hits[0].bm25_score > 0 and hits[0].dense_score is None
    version = store.search_bm25("2.4.5", limit=3)
    assert version[0].chunk.source == "faq/version.md"
    assert store.search_bm25("2.4.5", limit=3, source_names=["ops"]) == [] or all(
        h.chunk.source_name == "ops" for h in store.search_bm25("2.4.5", limit=3, source_names=["ops"])
    )


def test_bm25_matches_other_inflections_of_a_word(store):
    # "loaded" and "segment" are in the memory passage only as "load" and "segments".
    hits = store.search_bm25("loaded segment", limit=3)
    assert hits and hits[0].chunk.source == "faq/memory.md"
    # Identifier parts are analysed alike on both sides, so they still match exactly.
    assert store.search_bm25("IVF_FLAT", limit=1)[0].chunk.source == "faq/index.md"


def test_keyword_index_from_an_older_analyzer_serves_dense_until_rebuilt(
    milvus_lite_uri, store, chunks, embedder, monkeypatch
):
    store.close()
    monkeypatch.setattr("knowledge.store.ANALYZER_VERSION", "snowball-english-0")
    older = VectorStore(uri=milvus_lite_uri, collection="docs", dimension=64, model_id=embedder.model_id)
    try:
        assert older.needs_rebuild and "older version" in older.rebuild_reason
        assert not older.supports_hybrid
        older.check()  # still servable: only its keywords are out of date
        hits = older.search_hybrid(embedder.embed_query("etcd metadata"), "etcd", limit=2)
        assert hits and all(h.fused_score == h.dense_score for h in hits)  # dense search
        staging = older.create_staging()
        older.upsert(chunks, embedder.embed_documents([c.search_text for c in chunks]), collection=staging)
        older.switch_to(staging)
        assert not older.needs_rebuild and older.supports_hybrid
    finally:
        older.close()


def test_hybrid_rrf_fuses_both_rankings(store, embedder):
    text = "vector index types HNSW"
    vector = embedder.embed_query("object storage MinIO S3 for vector data")
    k = 60
    dense = store.search_dense(vector, limit=6)
    bm25 = store.search_bm25(text, limit=6)
    expected: dict[str, float] = {}
    for hits in (dense, bm25):
        for hit in hits:
            expected[hit.chunk.id] = expected.get(hit.chunk.id, 0.0) + 1.0 / (k + hit.rank)
    hybrid = store.search_hybrid(vector, text, limit=6, fusion="rrf", rrf_k=k)
    assert [h.chunk.id for h in hybrid] == sorted(expected, key=lambda i: -expected[i])[: len(hybrid)]
    for hit in hybrid:
        assert hit.fused_score == pytest.approx(expected[hit.chunk.id], rel=1e-4)
        assert hit.dense_score == pytest.approx(float(vector @ embedder.embed_query(hit.chunk.search_text)), abs=1e-4)
    # the chunk first in both lists wins; one strong on a single side still makes the list
    assert {hybrid[0].chunk.id} <= {dense[0].chunk.id, bm25[0].chunk.id}
    assert {dense[0].chunk.id, bm25[0].chunk.id} <= {h.chunk.id for h in hybrid}


def test_hybrid_weighted_and_filter(store, embedder):
    vector = embedder.embed_query("memory for segments")
    hits = store.search_hybrid(
        vector, "memory segments", limit=4, fusion="weighted", weights=(0.5, 0.5), source_names=["ops"]
    )
    assert hits and {h.chunk.source_name for h in hits} == {"ops"}
    assert hits[0].chunk.source == "faq/memory.md"
    fused = [h.fused_score for h in hits]
    assert fused == sorted(fused, reverse=True)


def test_reopen_after_restart_is_searchable(milvus_lite_uri, store, chunks, embedder):
    store.close()
    release_lite(milvus_lite_uri)  # what a process exit does: the collection comes back released
    reopened = VectorStore(
        uri=milvus_lite_uri, collection="docs", dimension=embedder.dimension, model_id=embedder.model_id
    )
    try:
        assert reopened.count() == len(chunks)
        assert reopened.supports_hybrid
        hits = reopened.search_hybrid(embedder.embed_query("etcd metadata"), "etcd", limit=2)
        assert hits[0].chunk.source == "faq/storage.md"
    finally:
        reopened.close()


def test_other_vector_size_or_model_is_refused(milvus_lite_uri, store, embedder):
    bigger = VectorStore(uri=milvus_lite_uri, collection="docs", dimension=128, model_id=embedder.model_id)
    assert bigger.needs_rebuild
    with pytest.raises(DimensionMismatchError, match="supportbot index --rebuild"):
        bigger.search_dense(np.ones(128, dtype=np.float32), limit=1)
    with pytest.raises(DimensionMismatchError):
        bigger.check()
    other_model = VectorStore(uri=milvus_lite_uri, collection="docs", dimension=64, model_id="other/model")
    with pytest.raises(DimensionMismatchError, match="other/model"):
        other_model.search_bm25("memory", limit=1)


def test_rebuild_switches_alias_and_drops_old(milvus_lite_uri, store, chunks, embedder):
    old = store.physical_name()
    assert old and old != "docs"
    staging = store.create_staging()
    assert store.physical_name() == old  # the alias still serves the old collection
    store.upsert(chunks[:2], embedder.embed_documents([c.search_text for c in chunks[:2]]), collection=staging)
    assert store.count() == len(chunks)
    store.switch_to(staging)
    assert store.physical_name() == staging
    assert store.count() == 2
    assert old not in store._client.list_collections()
    # a second store on the same file sees the switched alias
    again = VectorStore(uri=milvus_lite_uri, collection="docs", dimension=64, model_id=embedder.model_id)
    assert again.count() == 2


def test_a_rebuild_keeps_another_runs_staging_and_drops_day_old_leftovers(store):
    first = store.create_staging()  # another replica's rebuild, still filling it
    leftover = f"docs_{int((time.time() - 2 * 86400) * 1000)}"  # a failed rebuild two days ago
    store._client.create_collection(leftover, dimension=8)
    second = store.create_staging()
    names = store._client.list_collections()
    assert first != second and first in names and second in names
    assert leftover not in names and store.physical_name() not in (first, second)


def test_plain_collection_with_serving_name_is_served_then_replaced(milvus_lite_uri, embedder, chunks):
    from pymilvus import MilvusClient

    Path(milvus_lite_uri).parent.mkdir(parents=True, exist_ok=True)
    client = MilvusClient(uri=milvus_lite_uri)
    client.create_collection("docs", dimension=64, id_type="string", max_length=512)
    client.close()
    store = VectorStore(uri=milvus_lite_uri, collection="docs", dimension=64, model_id=embedder.model_id)
    assert store.physical_name() == "docs" and store.needs_rebuild  # not our schema
    staging = store.create_staging()
    store.upsert(chunks, embedder.embed_documents([c.search_text for c in chunks]), collection=staging)
    store.switch_to(staging)
    assert store.physical_name() == staging and not store.needs_rebuild
    assert store.search_bm25("etcd", limit=1)[0].chunk.source == "faq/storage.md"
    store.close()


def test_second_process_on_same_lite_file_is_refused(milvus_lite_uri, embedder):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from knowledge.store import VectorStore
            store = VectorStore(uri={milvus_lite_uri!r}, collection="docs", dimension=64)
            print("ready", flush=True)
            sys.stdin.read()
        """)],
        cwd=PROJECT_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError) as caught:
            VectorStore(uri=milvus_lite_uri, collection="docs", dimension=64)
        message = str(caught.value)
        assert milvus_lite_uri in message and "stop the bot" in message
        assert "\n" not in message
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # once the other process is gone the file opens
    VectorStore(uri=milvus_lite_uri, collection="docs", dimension=64).close()


def test_unreachable_server_error_hides_credentials():
    with pytest.raises(StoreUnavailableError) as caught:
        VectorStore(
            uri="http://admin:s3cret@127.0.0.1:9", token="tok-s3cret", collection="docs",
            dimension=8, timeout=2,
        )  # fmt: skip
    assert "s3cret" not in str(caught.value)
    assert "127.0.0.1:9" in str(caught.value)


def test_content_hashes_pages_through_large_collections(store, chunks, monkeypatch):
    import knowledge.store

    monkeypatch.setattr(knowledge.store, "QUERY_WINDOW", 2)  # force the query iterator
    assert store.content_hashes() == {c.id: c.content_hash for c in chunks}


def test_jieba_analyzer_finds_chinese_keywords(milvus_lite_uri, embedder):
    store = VectorStore(
        uri=milvus_lite_uri, collection="zh", dimension=64, model_id=embedder.model_id, analyzer="jieba"
    )
    try:
        zh = [
            make_chunk("index", "向量索引可以加快相似性搜索的速度。"),
            make_chunk("storage", "Milvus 使用对象存储保存向量数据，使用 etcd 保存元数据。"),
        ]
        store.upsert(zh, embedder.embed_documents([c.search_text for c in zh]))
        hits = store.search_bm25("对象存储", limit=2)
        assert hits and hits[0].chunk.source == "faq/storage.md"
    finally:
        store.close()
