"""Retriever over a real Milvus Lite store and the real chunker.

The unit tests use the hashing embedder from the Milvus fixtures and a keyword
reranker stand-in, so scores are predictable; the last test uses MiniLM.
"""

from __future__ import annotations

import pytest

from knowledge.chunking import chunk_document
from knowledge.retriever import Retriever, dedupe, join_overlapping
from knowledge.settings import KnowledgeSettings
from knowledge.store import VectorStore
from knowledge.types import Candidate, Chunk, Document

URL = "https://docs.example/{stem}#{anchor}"

ANIMALS = """# Animals

## Cats

Cats purr and chase mice in the barn at night.

## Dogs

Dogs bark loudly and fetch sticks in the park.

## Horses

Horses gallop across open fields and eat hay.
"""

# One section long enough to be split into several parts.
LONG = "# Guide\n\n## Setup\n\n" + "\n\n".join(
    f"Paragraph {word} explains the {word} step with {word} details only." for word in
    ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")
) + "\n"


class KeywordReranker:
    """Stand-in reranker: 0.9 for documents holding `favourite`, else 0.1."""

    def __init__(self, favourite: str) -> None:
        self.favourite = favourite
        self.calls: list[tuple[str, list[str]]] = []

    def score(self, query: str, documents):
        self.calls.append((query, list(documents)))
        return [0.9 if self.favourite in doc else 0.1 for doc in documents]


def settings(**overrides) -> KnowledgeSettings:
    values = dict(retrieve_top_k=10, rerank_top_n=2, retrieval_mode="dense")
    values.update(overrides)
    return KnowledgeSettings(_env_file=None, **values)


def chunks_of(text: str, *, source: str = "animals.md", source_name: str = "docs",
              max_tokens: int = 200) -> list[Chunk]:
    doc = Document(source=source, text=text, source_name=source_name)
    return chunk_document(doc, max_tokens=max_tokens, overlap_tokens=0, min_tokens=0, url_template=URL)


@pytest.fixture
def store_with(milvus_lite_uri, hashing_embedder):
    stores = []

    def build(chunks: list[Chunk]) -> VectorStore:
        store = VectorStore(uri=milvus_lite_uri, collection=f"t{len(stores)}",
                            dimension=hashing_embedder.dimension, model_id=hashing_embedder.model_id)
        store.upsert(chunks, hashing_embedder.embed_documents([c.search_text for c in chunks]))
        store.flush()
        stores.append(store)
        return store

    yield build
    for store in stores:
        store.close()


def test_dense_search_ranks_and_times(store_with, hashing_embedder):
    store = store_with(chunks_of(ANIMALS))
    retriever = Retriever(embedder=hashing_embedder, store=store, reranker=None, settings=settings())
    result = retriever.retrieve("dogs bark fetch sticks")
    assert result.candidates_top_k[0].chunk.heading_path == ("Dogs",)
    assert [c.rank for c in result.candidates_top_k] == list(range(1, len(result.candidates_top_k) + 1))
    assert [c.rank for c in result.reranked_top_n] == [1, 2]
    assert result.reranked_top_n[0].chunk.heading_path == ("Dogs",)
    assert result.reranked_top_n[0].rerank_score is None
    assert set(result.timings_ms) == {"embed", "search", "rerank"}
    assert not result.reranked


@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
def test_keyword_and_hybrid_modes(store_with, hashing_embedder, mode):
    store = store_with(chunks_of(ANIMALS))
    retriever = Retriever(embedder=hashing_embedder, store=store, reranker=None, settings=settings())
    result = retriever.retrieve("horses gallop hay", mode=mode)
    assert result.mode == mode
    assert result.candidates_top_k[0].chunk.heading_path == ("Horses",)


def test_unknown_mode_is_refused(store_with, hashing_embedder):
    retriever = Retriever(embedder=hashing_embedder, store=store_with(chunks_of(ANIMALS)),
                          reranker=None, settings=settings())
    with pytest.raises(ValueError, match="Unknown retrieval mode"):
        retriever.retrieve("cats", mode="fuzzy")


def test_same_text_from_two_sources_is_one_candidate(store_with, hashing_embedder):
    one_copy = chunks_of(ANIMALS, source_name="a")
    store = store_with(one_copy + chunks_of(ANIMALS, source_name="b"))
    retriever = Retriever(embedder=hashing_embedder, store=store, reranker=None, settings=settings())
    result = retriever.retrieve("cats purr mice")
    texts = [c.chunk.text for c in result.candidates_top_k]
    assert len(texts) == len(set(texts)) == len(one_copy)
    # The filter still works and picks the other copy.
    only_b = retriever.retrieve("cats purr mice", source_names=["b"])
    assert {c.chunk.source_name for c in only_b.candidates_top_k} == {"b"}


def test_reranker_reorders_and_keeps_top_n(store_with, hashing_embedder):
    reranker = KeywordReranker("gallop")
    store = store_with(chunks_of(ANIMALS))
    retriever = Retriever(embedder=hashing_embedder, store=store, reranker=reranker,
                          settings=settings(rerank_top_n=1))
    query = "dogs bark"
    result = retriever.retrieve(query)
    assert result.candidates_top_k[0].chunk.heading_path == ("Dogs",)
    # The reranker saw every candidate's breadcrumb + text.
    assert reranker.calls[0][1] == [c.chunk.search_text for c in result.candidates_top_k]
    assert [c.chunk.heading_path for c in result.reranked_top_n] == [("Horses",)]
    assert result.reranked_top_n[0].rerank_score == pytest.approx(0.9)
    assert result.reranked_top_n[0].rank == 1
    assert result.reranked
    # rerank=False skips it for one call.
    assert retriever.retrieve(query, rerank=False).reranked_top_n[0].rerank_score is None
    assert len(reranker.calls) == 1


def test_split_section_is_expanded_with_its_neighbours(store_with, hashing_embedder):
    chunks = [c for c in chunks_of(LONG, source="guide.md", max_tokens=30) if c.heading_path]
    assert len(chunks) >= 3 and {c.heading_path for c in chunks} == {("Setup",)}
    middle = next(c for c in chunks if "charlie" in c.text or "delta" in c.text)
    assert 0 < middle.ordinal < len(chunks) - 1
    store = store_with(chunks)
    retriever = Retriever(embedder=hashing_embedder, store=store, reranker=None,
                          settings=settings(rerank_top_n=1))
    words = " ".join(middle.text.split()[:6])
    result = retriever.retrieve(words)
    top = result.reranked_top_n[0].chunk
    assert top.id == middle.id
    before = next(c for c in chunks if c.ordinal == middle.ordinal - 1)
    after = next(c for c in chunks if c.ordinal == middle.ordinal + 1)
    assert top.text.startswith(before.text.strip())
    assert middle.text.strip() in top.text and after.text.strip() in top.text
    # The candidate list before reranking keeps the parts as indexed.
    assert result.candidates_top_k[0].chunk.text == middle.text


def test_join_overlapping_drops_the_shared_seam():
    assert join_overlapping("one two three four five six seven eight nine ten eleven twelve thirteen",
                            "eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen") == (
        "one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen")
    assert join_overlapping("first part.", "second part.") == "first part.\n\nsecond part."
    assert join_overlapping("", "x") == "x"


def test_dedupe_keeps_the_first_of_equal_texts():
    def cand(i: int, text: str) -> Candidate:
        return Candidate(chunk=Chunk(id=f"c{i}", source="s", title="T", heading_path=(), anchor="",
                                     url="u", text=text), dense_score=1.0 - i / 10)

    kept = dedupe([cand(0, "Same  text"), cand(1, "other"), cand(2, "same text")])
    assert [c.chunk.id for c in kept] == ["c0", "c1"]


def _result(*, rerank=None, dense=None):
    from knowledge.retriever import RetrievalResult

    chunk = Chunk(id="x", source="s", title="T", heading_path=(), anchor="", url="u", text="t")
    candidate = Candidate(chunk=chunk, dense_score=dense, rerank_score=rerank)
    return RetrievalResult(candidates_top_k=[candidate], reranked_top_n=[candidate])


def test_abstention_rules(hashing_embedder):
    retriever = Retriever(embedder=hashing_embedder, store=None, reranker=None,
                          settings=settings(abstain_threshold=0.5, abstain_dense_threshold=0.3))
    assert retriever.should_abstain(_result(rerank=0.49, dense=0.9))  # rerank decides when present
    assert not retriever.should_abstain(_result(rerank=0.5, dense=0.0))
    assert retriever.should_abstain(_result(dense=0.29))
    assert not retriever.should_abstain(_result(dense=0.31))
    assert not retriever.should_abstain(_result())  # BM25 only: no calibrated score
    from knowledge.retriever import RetrievalResult

    assert retriever.should_abstain(RetrievalResult())  # nothing found


def test_minilm_ranks_where_milvus_stores_data_first(make_kb, corpus_en):
    kb = make_kb(sources=f"{corpus_en}::faq/*.md", embedder="minilm", reranker=False,
                 retrieval_mode="dense", api_key="")
    result = kb.retriever.retrieve("How is data stored in milvus?")
    top = result.candidates_top_k[0].chunk
    assert top.heading_path[-1] == "Where does Milvus store data?", [
        c.chunk.heading_path for c in result.candidates_top_k[:3]]
