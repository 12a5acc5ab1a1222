"""Indexer refresh / rebuild over a copy of the FAQ folder, into real Milvus Lite files."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from knowledge import evidence
from knowledge.chunking import chunk_document
from knowledge.errors import RefreshInProgressError, SourceError
from knowledge.indexer import Indexer
from knowledge.settings import KnowledgeSettings
from knowledge.sources import parse_sources, read_documents
from knowledge.store import VectorStore
from tests.fixtures.milvus import HashingEmbedder

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FILES = ["product_faq.md", "performance_faq.md", "troubleshooting.md"]
BATCH = 8


@pytest.fixture
def docs(tmp_path, corpus_en) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in FILES:
        shutil.copy(corpus_en / "faq" / name, folder / name)
    return folder


@pytest.fixture
def settings(tmp_path, docs, milvus_lite_uri) -> KnowledgeSettings:
    return KnowledgeSettings(
        _env_file=None,
        knowledge_sources=f"faq={docs}::*.md",
        data_dir=tmp_path / "data",
        milvus_uri=milvus_lite_uri,
        milvus_collection="support_docs",
    )


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder(dimension=64)


def open_store(settings: KnowledgeSettings, embedder: HashingEmbedder) -> VectorStore:
    return VectorStore(
        uri=settings.milvus_target,
        collection=settings.milvus_collection,
        dimension=embedder.dimension,
        model_id=embedder.model_id,
    )


@pytest.fixture
def store(settings, embedder):
    store = open_store(settings, embedder)
    yield store
    store.close()


@pytest.fixture
def indexer(settings, embedder, store) -> Indexer:
    return Indexer(settings=settings, embedder=embedder, store=store, batch_size=BATCH)


def expected_hashes(settings: KnowledgeSettings, embedder: HashingEmbedder) -> dict[str, str]:
    """What a complete index of the sources holds: chunk id -> content hash."""
    documents = read_documents(parse_sources(settings.knowledge_sources), cache_dir=settings.cache_dir)
    hashes = {}
    for document in documents:
        for chunk in chunk_document(
            document,
            max_tokens=settings.chunk_max_tokens,
            overlap_tokens=settings.chunk_overlap_tokens,
            min_tokens=settings.chunk_min_tokens,
            url_template=settings.docs_base_url,
            count_tokens=embedder.count_tokens,
        ):
            hashes.setdefault(chunk.id, chunk.content_hash)
    return hashes


def sources_of(store: VectorStore) -> dict[str, str]:
    """search_text -> source path of every indexed chunk."""
    return {c.search_text: c.source for c in store.get(list(store.content_hashes()))}


def test_first_refresh_adds_everything_then_nothing_changes(indexer, store, embedder, settings):
    report = indexer.refresh()
    expected = expected_hashes(settings, embedder)
    assert report.documents == len(FILES)
    assert report.chunks == report.added == len(expected) > 10
    assert (report.updated, report.deleted, report.unchanged, report.rebuilt) == (0, 0, 0, False)
    assert store.content_hashes() == expected
    assert indexer.last_report is report and indexer.last_run_at
    hits = store.search_bm25("common.security.authorizationEnabled", limit=3)
    assert hits  # the corpus mentions it; BM25 must find an exact identifier

    calls = embedder.calls
    again = indexer.refresh()
    assert embedder.calls == calls  # nothing re-embedded
    assert (again.added, again.updated, again.deleted, again.unchanged) == (0, 0, 0, len(expected))


def test_editing_one_file_re_embeds_only_its_chunks(indexer, store, embedder, docs, settings):
    indexer.refresh()
    path = docs / "performance_faq.md"
    path.write_text(path.read_text().replace("Milvus", "Milvus (the database)"))
    embedder.embedded.clear()
    report = indexer.refresh()
    assert report.updated + report.added > 0 and report.unchanged > 0
    indexed = sources_of(store)
    # Each changed chunk's text, its section titles (once per title) and its sentences
    # (knowledge.evidence): nothing else.
    bodies = [text for text in embedder.embedded if text in indexed]
    titles = [text for text in embedder.embedded if text not in indexed and text.startswith("Performance FAQ")]
    changed = [c.text for c in store.get(list(store.content_hashes())) if c.source == "performance_faq.md"]
    sentences = [text for text in embedder.embedded if text not in indexed and text not in titles]
    assert len(bodies) == report.added + report.updated
    assert {indexed[text] for text in bodies} == {"performance_faq.md"}
    assert titles and sentences
    limit = evidence.max_sentences(embedder.dimension)
    assert set(sentences) <= {piece for body in changed for piece in evidence.sentences(body, limit=limit)}
    assert store.content_hashes() == expected_hashes(settings, embedder)


def test_deleting_a_file_removes_its_chunks(indexer, store, embedder, docs, settings):
    indexer.refresh()
    before = sum(1 for s in sources_of(store).values() if s == "troubleshooting.md")
    (docs / "troubleshooting.md").unlink()
    report = indexer.refresh()
    assert report.deleted == before > 0 and report.added == report.updated == 0
    assert "troubleshooting.md" not in set(sources_of(store).values())
    assert store.content_hashes() == expected_hashes(settings, embedder)


def test_bad_source_changes_nothing(indexer, store, settings, docs):
    indexer.refresh()
    count = store.count()
    shutil.rmtree(docs)
    with pytest.raises(SourceError):
        indexer.refresh()
    assert store.count() == count


def test_failure_halfway_keeps_old_index_and_next_refresh_completes(indexer, store, embedder, docs, settings):
    indexer.refresh()
    old_count = store.count()
    for name in FILES:
        path = docs / name
        path.write_text(path.read_text().replace("the", "THE"))
    # Each batch embeds its texts, its section titles, then their sentences: the third batch fails.
    embedder.fail_on_call = embedder.calls + 7
    with pytest.raises(RuntimeError, match="embedder failed"):
        indexer.refresh()
    # questions still get answers: nothing was deleted, each row is old or new
    assert store.count() >= old_count
    assert store.search_bm25("index", limit=3)
    embedder.fail_on_call = None
    embedded_before = len(embedder.embedded)
    report = indexer.refresh()
    assert store.content_hashes() == expected_hashes(settings, embedder)
    # the batches upserted before the failure are not embedded again
    indexed = sources_of(store)
    bodies = [text for text in embedder.embedded[embedded_before:] if text in indexed]
    assert 0 < report.added + report.updated == len(bodies)
    assert report.unchanged >= 2 * BATCH


def test_rebuild_switches_atomically_while_searching(indexer, store, embedder, settings):
    indexer.refresh()
    old = store.physical_name()
    embedder.delay = 0.05  # keep the rebuild running while the searcher works
    vector = embedder.embed_query("how do I scale query nodes")
    results: list[int] = []
    stop = threading.Event()

    def search() -> None:
        while not stop.is_set():
            results.append(len(store.search_hybrid(vector, "query node", limit=5)))

    searcher = threading.Thread(target=search)
    searcher.start()
    try:
        report = indexer.refresh(rebuild=True)
    finally:
        stop.set()
        searcher.join(timeout=30)
    assert report.rebuilt and report.collection != old
    assert store.physical_name() == report.collection
    assert old not in store._client.list_collections()
    assert len(results) > 5 and min(results) == 5  # never empty, never short
    assert store.content_hashes() == expected_hashes(settings, embedder)


def test_new_embedding_model_forces_rebuild(indexer, store, settings):
    indexer.refresh()
    bigger = HashingEmbedder(dimension=32, model_id="test/hashing-32")
    bigger_store = open_store(settings, bigger)
    assert bigger_store.needs_rebuild
    report = Indexer(settings=settings, embedder=bigger, store=bigger_store).refresh()
    assert report.rebuilt and not bigger_store.needs_rebuild
    assert bigger_store.count() == report.chunks
    assert bigger_store.search_dense(bigger.embed_query("memory"), limit=1)


def test_a_model_change_rebuilt_by_one_replica_is_not_rebuilt_by_another(indexer, store, settings):
    indexer.refresh()
    bigger = HashingEmbedder(dimension=32, model_id="test/hashing-32")
    # Two replicas started with the new model: both find the index built for the old one.
    first, second = open_store(settings, bigger), open_store(settings, bigger)
    try:
        assert first.needs_rebuild and second.needs_rebuild
        assert Indexer(settings=settings, embedder=bigger, store=first).refresh().rebuilt
        # The second one's next refresh sees the rebuild and only updates (nothing changed).
        report = Indexer(settings=settings, embedder=bigger, store=second).refresh()
        assert not report.rebuilt and (report.added, report.updated, report.deleted) == (0, 0, 0)
        assert second.search_dense(bigger.embed_query("memory"), limit=1)
    finally:
        first.close()
        second.close()


def test_concurrent_refreshes_are_refused(indexer, embedder, settings, store):
    embedder.delay = 0.2
    errors: list[BaseException] = []

    def run() -> None:
        try:
            indexer.refresh()
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    first = threading.Thread(target=run)
    first.start()
    deadline = time.time() + 20
    while embedder.calls == 0 and time.time() < deadline:
        time.sleep(0.01)
    try:
        with pytest.raises(RefreshInProgressError, match=r"already running since \d\d:\d\d:\d\d") as same:
            indexer.refresh()
        # another Indexer (the CLI beside the bot) meets the lock file
        other = Indexer(settings=settings, embedder=embedder, store=store)
        with pytest.raises(RefreshInProgressError) as cross:
            other.refresh()
        assert abs(cross.value.started_at - same.value.started_at) < 5
    finally:
        first.join(timeout=60)
    assert not errors and indexer.last_report is not None
    embedder.delay = 0
    assert indexer.refresh().unchanged == indexer.last_report.chunks  # lock released


def test_killed_refresh_then_rerun_ends_consistent(settings, embedder, docs):
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from knowledge.indexer import Indexer
            from knowledge.settings import KnowledgeSettings
            from tests.fixtures.milvus import HashingEmbedder

            class Announcing(HashingEmbedder):
                def embed_documents(self, texts, *, progress=False):
                    if self.calls == 2:
                        print("halfway", flush=True)
                    return super().embed_documents(texts, progress=progress)

            settings = KnowledgeSettings(
                _env_file=None, knowledge_sources={settings.knowledge_sources!r},
                data_dir={str(settings.data_dir)!r}, milvus_uri={settings.milvus_uri!r},
                milvus_collection={settings.milvus_collection!r},
            )
            embedder = Announcing(dimension=64)
            embedder.delay = 0.3
            Indexer(settings=settings, embedder=embedder, batch_size={BATCH}).refresh()
            print("finished", flush=True)
        """)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "halfway"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    store = open_store(settings, embedder)  # the Lite file and the refresh lock are free again
    try:
        partial = store.count()
        report = Indexer(settings=settings, embedder=embedder, store=store, batch_size=BATCH).refresh()
        assert report.unchanged == partial and report.added == report.chunks - partial
        assert store.content_hashes() == expected_hashes(settings, embedder)
    finally:
        store.close()


# ---- sentence vectors: each distinct sentence with words embedded once a run -------------

REPEATED = "Milvus Lite runs inside your Python process and suits quick prototypes."
MARKUP = '<div class="alert note">'  # no word outside its tags: no evidence, no vector
SENTENCE_DOCS = {
    "alpha.md": f"# Alpha guide\n\n## Install\n\n{REPEATED} Install it with pip before you start.\n\n"
                f"## Scale\n\nAdd query nodes when searches queue up behind each other. {REPEATED}\n",
    "beta.md": f"# Beta guide\n\n## Try it\n\n{MARKUP}\n\n{REPEATED} Move to a cluster for production traffic.\n\n"
               "</div>\n",
}


class Recording:
    """An embedder that records each embed_documents call's texts apart (sentence calls from the rest)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.batches: list[list[str]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def embed_documents(self, texts, *, progress=False):
        self.batches.append(list(texts))
        return self.inner.embed_documents(texts, progress=progress)


@pytest.mark.parametrize(("model", "batch_size"), [("hashing", 1), ("hashing", 100), ("tiny", 1)])
def test_each_distinct_worded_sentence_is_embedded_once_a_run_and_every_chunk_keeps_its_vectors(
        request, tmp_path, milvus_lite_uri, model, batch_size):
    folder = tmp_path / "sentence-docs"
    folder.mkdir()
    for name, text in SENTENCE_DOCS.items():
        (folder / name).write_text(text)
    settings = KnowledgeSettings(_env_file=None, knowledge_sources=f"docs={folder}::*.md",
                                 data_dir=tmp_path / "data", milvus_uri=milvus_lite_uri)
    if model == "tiny":  # the real Embedder (token batches) over the tiny Qwen3-shaped model
        from knowledge.embedder import Embedder

        path = request.getfixturevalue("tiny_embedder_path")
        embedder = Recording(Embedder(model=str(path), device="cpu", dtype="float32"))
    else:
        embedder = Recording(HashingEmbedder(dimension=64))
    store = open_store(settings, embedder)
    try:
        # batch_size=1: every chunk is an upsert batch of its own, so the repeats cross batches.
        report = Indexer(settings=settings, embedder=embedder, store=store, batch_size=batch_size).refresh()
        chunks = store.get(list(store.content_hashes()))
        packed = store.sentence_vectors([c.id for c in chunks])
    finally:
        store.close()
    assert report.chunks == len(chunks) >= 2
    limit = evidence.max_sentences(embedder.dimension)
    per_chunk = {c.id: evidence.sentences(c.text, limit=limit) for c in chunks}
    # The case in point: a sentence repeated across chunks (and batches), within one too when
    # the sections are joined (the tiny model's tokens split them).
    assert sum(texts.count(REPEATED) for texts in per_chunk.values()) == 3
    assert sum(REPEATED in texts for texts in per_chunk.values()) >= 2
    distinct = {text for texts in per_chunk.values() for text in texts}
    sentence_calls = [batch for batch in embedder.batches if set(batch) <= distinct]
    embedded = [text for batch in sentence_calls for text in batch]
    assert sorted(embedded) == sorted(distinct)  # each once, over the whole run
    assert any(MARKUP in c.text for c in chunks) and MARKUP not in distinct
    assert not any(MARKUP in batch for batch in embedder.batches)
    # Every chunk's row still holds one vector per sentence, in order, each its sentence's own
    # (embedded alone here: int8 packing and batch padding move it by little).
    for chunk_id, texts in per_chunk.items():
        rows = evidence.unpack(packed[chunk_id], embedder.dimension)
        assert rows.shape == (len(texts), embedder.dimension)
        expected = np.concatenate([embedder.inner.embed_documents([text]) for text in texts])
        assert np.einsum("ij,ij->i", rows, expected).min() > 0.99
