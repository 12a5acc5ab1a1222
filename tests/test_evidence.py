"""Sentence evidence (knowledge/evidence.py): every sentence embedded at index time, and
hybrid search ordering its candidates by their best sentence too, so a section whose one
sentence answers the question is not lost in its average."""

from __future__ import annotations

import numpy as np
import pytest

from knowledge import evidence
from knowledge.indexer import Indexer
from knowledge.retriever import Retriever
from knowledge.settings import KnowledgeSettings
from knowledge.store import TEXT_BYTES, VectorStore
from tests.fixtures.milvus import HashingEmbedder

# ---- packing and splitting ---------------------------------------------------------------


def test_packed_vectors_keep_their_cosines_and_fit_one_field():
    rng = np.random.default_rng(0)
    for dimension in (384, 1024):
        count = evidence.max_sentences(dimension)
        vectors = rng.standard_normal((count, dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        packed = evidence.pack(vectors)
        assert len(packed.encode()) <= TEXT_BYTES  # one VARCHAR field holds the most a chunk keeps
        query = vectors[3] + 0.5 * vectors[5]
        query /= np.linalg.norm(query)
        exact = vectors @ query
        unpacked = evidence.unpack(packed, dimension) @ query
        assert np.abs(unpacked - exact).max() < 0.01
    assert evidence.pack(np.zeros((0, 8))) == ""
    assert evidence.unpack("", 8).shape == (0, 8)
    assert evidence.best_cosines(np.ones(8), ["", evidence.pack(np.eye(8)[:2])], 8) == [
        None, pytest.approx(8 ** -0.5, abs=0.01)]
    # A value `pack` did not write (cut, or another model's size) counts as no vectors.
    assert evidence.best_cosines(np.ones(8), ["not base64!", evidence.pack(np.eye(8)[:2])[:-4], "AAAA"], 8) == [
        None, None, None]


def test_sentences_split_on_punctuation_and_lines_and_merge_to_the_limit():
    text = ("## Enable partition key\n\nOnce a partition key is set, you cannot create partitions. "
            "Pick an index, e.g. HNSW. See [the guide](https://docs.example/index.md) first!\n"
            "- a list item that is long enough to count\n```\nx = 1\n```")
    assert evidence.sentences(text, limit=10) == [
        "## Enable partition key",
        "Once a partition key is set, you cannot create partitions.",
        "Pick an index, e.g. HNSW.",  # a piece too short to stand alone joins the next
        "See the guide first!",  # link targets are not the docs' words
        "- a list item that is long enough to count ``` x = 1 ```",  # ... or the last
    ]
    merged = evidence.sentences(text, limit=2)
    assert len(merged) == 2 and " ".join(merged) == " ".join(evidence.sentences(text, limit=10))
    # Chinese sentences end without a space.
    first, second = "设置分区键之后，您将无法再手动创建或者删除任何分区。", "请改为使用分区键字段的不同取值来区分不同租户的数据。"
    assert evidence.sentences(first + second, limit=5) == [first, second]
    assert evidence.sentences("short", limit=5) == ["short"]  # no boundary: the whole text
    assert evidence.sentences("", limit=5) == []


def test_sentences_without_a_word_outside_html_tags_get_no_vector():
    for markup in ("</tr> </thead> <tbody>", '<div class="alert note">', "|---|---|---|---|---|",
                   "//                 ],", '</div> <div class="language-java">', "``` <div class=\"alert note\">"):
        assert not evidence.has_words(markup), markup
    for worded in ('<th class="width80">Description</th>', '<a href="#python">Python </a>', "<td>-1</td>",
                   "accessKeyID: <your_s3_access_key_id>", "设置分区键之后。", "x = 1"):
        assert evidence.has_words(worded), worded
    text = ('<table>\n<thead> <tr> <th class="width80">Description</th>\n</tr> </thead> <tbody>\n'
            "<tr> <td>The maximum number of partitions in a collection.</td>\n</tr> </tbody> </table>")
    assert evidence.sentences(text, limit=10) == [
        '<table> <thead> <tr> <th class="width80">Description</th>',  # "<table>" is short: it joins
        "<tr> <td>The maximum number of partitions in a collection.</td>",
    ]
    assert evidence.sentences("</tr> </thead> <tbody>\n|---|---|---|---|---|", limit=10) == []
    # A short worded piece joining markup makes it worth a vector.
    assert evidence.sentences('Note\n<div class="alert note">', limit=10) == ['Note <div class="alert note">']


def test_the_best_sentence_decides_after_the_search_orders_fading_head_start():
    def merge(best, *, prior=0.3, prior_k=3.0, weight=1.0, lift=(), fallback=None):
        return evidence.scored_order(best, fallback=fallback or [0.0] * len(best), weight=weight,
                                     prior=prior, prior_k=prior_k, lift=lift)

    # Head starts 0.1, 0.075, 0.06, 0.05: a clearly better sentence overtakes, a slightly better one not.
    assert merge([0.50, 0.70, 0.52, 0.40]) == [1, 0, 2, 3]
    assert merge([0.50, 0.52, 0.40, 0.30]) == [0, 1, 2, 3]
    assert merge([0.50, 0.70, 0.52, 0.40], weight=0.0) == [0, 1, 2, 3]  # evidence off: search order
    assert merge([]) == []
    # Without sentence vectors (an index filled in part) the body cosine stands in.
    assert merge([None, 0.6, 0.5], fallback=[0.9, 0.0, 0.0]) == [0, 1, 2]
    assert merge([None, 0.6, 0.5], fallback=[0.1, 0.0, 0.0]) == [1, 2, 0]
    # A FAQ entry whose heading matches the question is lifted.
    assert merge([0.6, 0.6, 0.6], lift=[0.0, 0.0, 0.2]) == [2, 0, 1]
    # Ties keep the search order.
    assert merge([0.5, 0.5, 0.5], prior=0.0) == [0, 1, 2]


# ---- through the indexer, Milvus Lite and the retriever --------------------------------------

# The answer is one sentence of a long section about other things...
LONG_SECTION = "# Operations\n\n## Cluster upkeep\n\n" + " ".join([
    "Rotate the logs of every coordinator weekly and archive them to cold storage.",
    "Watch the memory of the query nodes during compaction windows and scale when needed.",
    "Upgrade the operator first, then the proxies, then the data nodes in rolling order.",
    "Back up the etcd metadata before every upgrade and keep three generations of it.",
    "Once a partition key is set you cannot create or drop partitions by hand.",
    "Keep the object storage bucket versioned so that a bad upgrade can be rolled back.",
    "Alert on slow flushes because they usually point at an overloaded object store.",
]) + "\n"
# ...while short sections share more of the question's words on average.
SHORT_SECTIONS = {
    "partitions.md": "# Partitions\n\n## Partition basics\n\nCreate partitions or drop partitions "
                     "to group entities; a partition holds entities.\n",
    "load.md": "# Loading\n\n## Load partitions\n\nLoad partitions after you create partitions, "
               "then drop them from memory.\n",
    "keys.md": "# Keys\n\n## Primary key\n\nEvery entity has a key; set the key field "
               "when you create a collection.\n",
}
FILLERS = [f"# Page {n}\n\n## Part {n}\n\nSegments {n} and nodes and indexes {n}.\n" for n in range(8)]
QUESTION = "Why can I not drop partitions after a partition key is set?"


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "upkeep.md").write_text(LONG_SECTION)
    for name, text in SHORT_SECTIONS.items():
        (folder / name).write_text(text)
    for n, text in enumerate(FILLERS):
        (folder / f"filler{n}.md").write_text(text)
    return folder


def _order(settings: KnowledgeSettings, store: VectorStore, embedder) -> list[str]:
    retriever = Retriever(embedder=embedder, store=store, settings=settings)
    found = retriever.retrieve(QUESTION, mode="hybrid", rerank=False).candidates_top_k
    return [c.chunk.source for c in found]


def test_a_section_whose_one_sentence_answers_comes_first(tmp_path, docs, milvus_lite_uri):
    embedder = HashingEmbedder(dimension=256)
    settings = KnowledgeSettings(_env_file=None, knowledge_sources=f"docs={docs}::*.md",
                                 data_dir=tmp_path / "data", milvus_uri=milvus_lite_uri,
                                 retrieve_top_k=4, rerank_top_n=3, query_expansion=False)
    store = VectorStore(uri=milvus_lite_uri, collection="evidence", dimension=embedder.dimension,
                        model_id=embedder.model_id)
    try:
        Indexer(settings=settings, embedder=embedder, store=store).refresh()
        store.flush()
        assert store.has_sentence_vectors
        assert len(embedder.embedded) > 3 * store.count()  # bodies, titles and their sentences
        # The long section's row holds one vector per sentence, and one for its two short headings.
        [upkeep] = [c for c in store.get(list(store.content_hashes())) if c.source == "upkeep.md"]
        packed = store.sentence_vectors([upkeep.id])[upkeep.id]
        assert evidence.unpack(packed, embedder.dimension).shape == (8, embedder.dimension)

        # Precondition: searched as wholes, the short sections come first, the long one last.
        assert _order(settings.model_copy(update={"sentence_weight": 0.0}), store, embedder) == [
            "partitions.md", "load.md", "keys.md", "upkeep.md"]
        calls = []
        for name in ("sentence_vectors", "title_scores", "get"):  # the reads the searches' hits make needless
            read = getattr(store, name)
            setattr(store, name, lambda *args, _name=name, _read=read, **kwargs: (calls.append(_name),
                                                                                _read(*args, **kwargs))[1])
        found = Retriever(embedder=embedder, store=store, settings=settings).retrieve(
            QUESTION, mode="hybrid", rerank=False).candidates_top_k
        assert len(found) == 4
        sources = [c.chunk.source for c in found]
        assert sources.index("upkeep.md") < 3, sources  # its one sentence lifts it
        assert found[sources.index("upkeep.md")].sentence_score == max(c.sentence_score for c in found)
        # The sentence vectors and title cosines came with the hits: no read of their own.
        assert "sentence_vectors" not in calls and "title_scores" not in calls, calls
    finally:
        store.close()


def test_without_sentence_vectors_the_index_serves_the_search_order(tmp_path, docs, milvus_lite_uri):
    embedder = HashingEmbedder(dimension=256)
    settings = KnowledgeSettings(_env_file=None, knowledge_sources=f"docs={docs}::*.md",
                                 data_dir=tmp_path / "data", milvus_uri=milvus_lite_uri,
                                 retrieve_top_k=3, rerank_top_n=3, query_expansion=False,
                                 sentence_vectors=False)
    store = VectorStore(uri=milvus_lite_uri, collection="plain", dimension=embedder.dimension,
                        model_id=embedder.model_id, sentence_vectors=settings.embeds_sentences)
    try:
        Indexer(settings=settings, embedder=embedder, store=store).refresh()
        store.flush()
        assert len(embedder.embedded) == 2 * store.count()  # each chunk's body and title, no sentences
        found = Retriever(embedder=embedder, store=store, settings=settings).retrieve(
            QUESTION, mode="hybrid", rerank=False).candidates_top_k
        assert "upkeep.md" not in [c.chunk.source for c in found]
        assert all(c.sentence_score is None for c in found)
    finally:
        store.close()


def test_the_index_records_whether_it_holds_sentence_vectors(tmp_path, docs, milvus_lite_uri):
    embedder = HashingEmbedder(dimension=256)
    on = KnowledgeSettings(_env_file=None, knowledge_sources=f"docs={docs}::*.md",
                           data_dir=tmp_path / "data", milvus_uri=milvus_lite_uri,
                           retrieve_top_k=4, rerank_top_n=3, query_expansion=False)
    off = on.model_copy(update={"sentence_vectors": False})
    assert on.embeds_sentences and not off.embeds_sentences
    assert not on.model_copy(update={"retrieval_mode": "dense"}).embeds_sentences

    def opened(settings: KnowledgeSettings) -> VectorStore:
        return VectorStore(uri=milvus_lite_uri, collection="toggled", dimension=embedder.dimension,
                           model_id=embedder.model_id, sentence_vectors=settings.embeds_sentences)

    def upkeep_sentences(store: VectorStore) -> int:
        [upkeep] = [c for c in store.get(list(store.content_hashes())) if c.source == "upkeep.md"]
        return len(evidence.unpack(store.sentence_vectors([upkeep.id]).get(upkeep.id, ""), embedder.dimension))

    # Built without them, and still not wanted: the index serves as it is, no rebuild.
    store = opened(off)
    Indexer(settings=off, embedder=embedder, store=store).refresh()
    store.close()
    store = opened(off)
    try:
        assert not store.needs_rebuild and not store.has_sentence_vectors
    finally:
        store.close()

    # Wanted now: the next refresh rebuilds it with them, and search weighs sentences.
    store = opened(on)
    try:
        assert store.needs_rebuild and "SENTENCE_VECTORS" in store.rebuild_reason
        assert Indexer(settings=on, embedder=embedder, store=store).refresh().rebuilt
        assert store.has_sentence_vectors and not store.needs_rebuild
        assert upkeep_sentences(store) == 8
        found = Retriever(embedder=embedder, store=store, settings=on).retrieve(
            QUESTION, mode="hybrid", rerank=False).candidates_top_k
        assert all(c.sentence_score is not None for c in found)
    finally:
        store.close()

    # Turned off again: no rebuild, and an edited section keeps its sentences filled, so that
    # turning them back on finds the whole index filled rather than a mix.
    (docs / "upkeep.md").write_text(LONG_SECTION + "A ninth sentence says nothing new at all.\n")
    store = opened(off)
    try:
        assert not store.needs_rebuild and store.has_sentence_vectors
        report = Indexer(settings=off, embedder=embedder, store=store).refresh()
        assert not report.rebuilt and report.updated == 1
        assert upkeep_sentences(store) == 9
        found = Retriever(embedder=embedder, store=store, settings=off).retrieve(
            QUESTION, mode="hybrid", rerank=False).candidates_top_k
        assert all(c.sentence_score is None for c in found)  # kept, not used
    finally:
        store.close()


def test_an_abstention_model_is_not_applied_to_a_result_lacking_one_of_its_signals(tmp_path):
    from knowledge.abstention import AbstentionModel
    from knowledge.retriever import RetrievalResult
    from knowledge.types import Candidate, Chunk

    settings = KnowledgeSettings(_env_file=None, data_dir=tmp_path / "data")
    retriever = Retriever(embedder=HashingEmbedder(), store=None, settings=settings)
    chunk = Chunk(id="a", source="a.md", title="A", heading_path=("A",), anchor="", url="", text="A text.")
    plain = Candidate(chunk=chunk, dense_score=0.6)
    weighed = Candidate(chunk=chunk, dense_score=0.6, sentence_score=0.7)
    titled = Candidate(chunk=chunk, dense_score=0.6, title_score=0.5)

    def applies(features: tuple[str, ...], candidate: Candidate) -> bool:
        retriever.abstention = AbstentionModel(
            features=features, mean=(0.5,) * len(features), scale=(0.1,) * len(features),
            coef=(1.0,) * len(features), intercept=0.0, threshold=0.5, score="dense")
        result = RetrievalResult(candidates_top_k=[candidate], reranked_top_n=[candidate])
        return retriever.abstention_for(result) is not None

    # Without best-sentence cosines (weighing off, an index without sentence vectors) or title
    # cosines (an index without title vectors) the signal would fall back to the body cosine,
    # on another scale: the plain thresholds decide.
    assert not applies(("dense_top", "sentence_top"), plain)
    assert applies(("dense_top", "sentence_top"), weighed)
    assert not applies(("dense_top", "title_top"), weighed)
    assert applies(("dense_top", "title_top"), titled)
    assert applies(("dense_top", "foreign_term"), plain)


# A FAQ entry headed by (a paraphrase of) the question, whose answer repeats none of its words...
FAQ_ENTRY = ("# Product FAQ\n\n## Can I drop partitions by hand once a partition key is set?\n\n"
             "No. Milvus then manages them for you; manual management is disabled.\n")
# ...against guide sections that use the question's words, one sentence of them verbatim.
GUIDE_SECTIONS = {
    "guide.md": "# Partitions\n\n## Drop partitions\n\nOnce the partition key is set, can I still drop "
                "partitions by hand? Release them first, then drop them one by one.\n",
    "keys2.md": "# Partition key\n\n## Set a partition key\n\nSet a partition key on a scalar field; "
                "the partition key decides the partition of each entity.\n",
}


def test_a_faq_entry_whose_heading_is_the_question_is_lifted(tmp_path, milvus_lite_uri, monkeypatch):
    import knowledge.retriever as retriever_module

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "faq.md").write_text(FAQ_ENTRY)
    for name, text in {**GUIDE_SECTIONS, **dict(zip(map("filler{}.md".format, range(8)), FILLERS))}.items():
        (folder / name).write_text(text)
    embedder = HashingEmbedder(dimension=256)
    settings = KnowledgeSettings(_env_file=None, knowledge_sources=f"docs={folder}::*.md",
                                 data_dir=tmp_path / "data", milvus_uri=milvus_lite_uri,
                                 retrieve_top_k=3, rerank_top_n=3, query_expansion=False,
                                 title_weight=0.0)  # the heading's cosine comes from the store
    store = VectorStore(uri=milvus_lite_uri, collection="faqlift", dimension=embedder.dimension,
                        model_id=embedder.model_id)
    question = "Once the partition key is set, can I still drop partitions by hand?"
    try:
        Indexer(settings=settings, embedder=embedder, store=store).refresh()
        store.flush()
        retriever = Retriever(embedder=embedder, store=store, settings=settings)

        def first() -> str:
            return retriever.retrieve(question, mode="hybrid", rerank=False).candidates_top_k[0].chunk.source

        monkeypatch.setattr(retriever_module, "QUESTION_TITLE_WEIGHT", 0.0)
        assert first() != "faq.md"  # precondition: the guide's words win without the lift
        monkeypatch.undo()
        assert first() == "faq.md"
    finally:
        store.close()
