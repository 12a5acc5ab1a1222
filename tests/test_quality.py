"""Answer quality: the BM25 side finds exact identifiers, fusion keeps them, Chinese
questions are not drowned by keywords, weak retrieval abstains without a model call,
and (slow, MiniLM) hybrid retrieval is at least as good as dense on the dev set.

Figures and how the thresholds were chosen: docs/answer-quality.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from knowledge import evidence
from knowledge.chunking import chunk_document
from knowledge.evaluation import evaluate, format_result, load_items
from knowledge.keywords import analyze, identifiers, keyword_query
from knowledge.retriever import HYBRID_DEPTH_FACTOR, Retriever
from knowledge.settings import KnowledgeSettings
from knowledge.store import VectorStore
from knowledge.types import Document

IDENTIFIER = "common.security.authorizationEnabled"
FOLLOWUPS = Path(__file__).parent / "data" / "followups.jsonl"
# Written apart from the dev set, to check that retrieval choices generalise.
WHOLE_TREE_SET = Path(__file__).parents[1] / "docs" / "eval" / "whole-tree.jsonl"
# Support tickets (symptoms, goals, errors, near-miss unanswerables), also written apart.
TICKETS_SET = Path(__file__).parents[1] / "docs" / "eval" / "tickets.jsonl"
# Milvus-adjacent questions the docs do not answer, to fit the abstention model on (with
# the dev set); written apart from the reported sets (docs/eval/README.md).
ABSTENTION_TUNING_SET = Path(__file__).parents[1] / "docs" / "eval" / "abstention-tuning.jsonl"
# The dense (cosine) threshold chosen for all-MiniLM-L6-v2 on the dev set: see the doc.
MINILM_DENSE_THRESHOLD = 0.49


# ---- the keyword side's query ---------------------------------------------------------


def test_keyword_query_drops_question_words():
    assert keyword_query("How many partitions can one collection have?").split() == [
        "partitions", "collection",
    ]
    # Identifiers, versions and error names are searched exactly as written.
    assert keyword_query(f"How do I set {IDENTIFIER}?").split() == ["set", IDENTIFIER]
    assert keyword_query("ModuleNotFoundError: No module named 'milvus_lite'").split()[0] == (
        "ModuleNotFoundError")
    assert "2.4.5" in keyword_query("What changed in 2.4.5?").split()
    assert keyword_query("What is it?") == ""


def test_analyze_stems_words_alike_and_leaves_numbers_and_han_text():
    assert analyze("Changed") == analyze("changes") == analyze("change")
    assert analyze("partitions") == analyze("Partition")
    assert analyze("GPUs and SDKs") == analyze("GPU and SDK")
    assert analyze("v2.4.5 and 1,024 MB") == "v2.4.5 and 1,024 mb"
    assert analyze("分区键 partition_key") == "分区键 " + analyze("partition") + "_key"


def test_chinese_questions_keep_only_their_identifiers_for_bm25():
    assert keyword_query("Milvus 可以安装在 Windows 上吗？") == ""
    assert keyword_query("IVF_FLAT 和 FLAT 有什么区别？").split() == ["IVF_FLAT", "FLAT"]
    assert identifiers(f"如何设置 {IDENTIFIER}？") == [IDENTIFIER]


# ---- exact identifiers reach the candidates --------------------------------------------

# Sections that share the question's ordinary words, so both sides like them a little.
FILLER = "\n\n".join(
    f"## Enable authentication option {n}\n\nHow do I enable authentication in the "
    f"configuration file for setup {n}? Enable the authentication setting in the configuration."
    for n in range(12)
)
TARGET = f"## Access control\n\nSet {IDENTIFIER} to true before starting the server.\n"


@pytest.fixture
def identifier_store(milvus_lite_uri, hashing_embedder):
    doc = Document(source="config.md", text=f"# Config\n\n{FILLER}\n\n{TARGET}")
    chunks = chunk_document(doc, max_tokens=200, overlap_tokens=0, min_tokens=0,
                            url_template="https://docs.example/{stem}#{anchor}")
    store = VectorStore(uri=milvus_lite_uri, collection="ids", dimension=hashing_embedder.dimension,
                        model_id=hashing_embedder.model_id)
    # With sentence vectors, as the indexer writes them: the sentence-evidence order must not push
    # the keyword side's exact-identifier hits back out (knowledge.evidence).
    limit = evidence.max_sentences(hashing_embedder.dimension)
    sentences = [evidence.pack(hashing_embedder.embed_documents(evidence.sentences(c.text, limit=limit)))
                 for c in chunks]
    store.upsert(chunks, hashing_embedder.embed_documents([c.search_text for c in chunks]),
                 sentence_vectors=sentences)
    store.flush()
    yield store
    store.close()


def test_exact_identifier_reaches_the_candidates_when_fusion_would_drop_it(
    identifier_store, hashing_embedder
):
    question = f"How do I enable authentication in the configuration with {IDENTIFIER}?"
    settings = KnowledgeSettings(_env_file=None, retrieve_top_k=3, rerank_top_n=3,
                                 retrieval_mode="hybrid")
    retriever = Retriever(embedder=hashing_embedder, store=identifier_store, reranker=None,
                          settings=settings)

    def has_target(candidates) -> bool:
        return any(IDENTIFIER in c.chunk.text for c in candidates)

    # Preconditions: dense alone misses it, BM25 alone ranks it first, plain RRF drops it.
    dense = retriever.retrieve(question, mode="dense").candidates_top_k
    assert not has_target(dense)
    assert IDENTIFIER in retriever.retrieve(question, mode="bm25").candidates_top_k[0].chunk.text
    fused = identifier_store.search_hybrid(hashing_embedder.embed_query(question),
                                           keyword_query(question), limit=8)
    assert not has_target(fused[:3])

    hybrid = retriever.retrieve(question, mode="hybrid").candidates_top_k
    assert len(hybrid) == 3 and has_target(hybrid)


RELEASE_NOTE = " ".join(
    f"Wheel number {n} ships rebuilt packages for mirrors, archives and installers." for n in range(8)
)


def test_an_identifier_some_candidate_already_quotes_displaces_nothing(
    identifier_store, hashing_embedder
):
    # TARGET (in the top 3) quotes the identifier; so does this extra section, which
    # fusion ranks lower: bringing it in would only push out a passage fusion chose.
    extra = chunk_document(
        Document(source="changelog.md", text=f"# Changelog\n\n## Packaging\n\n{RELEASE_NOTE} "
                                              f"Renamed {IDENTIFIER}. {RELEASE_NOTE}\n"),
        max_tokens=200, overlap_tokens=0, min_tokens=0, url_template="https://docs.example/{stem}",
    )
    identifier_store.upsert(extra, hashing_embedder.embed_documents([c.search_text for c in extra]))
    identifier_store.flush()
    question = f"Set {IDENTIFIER} to true before starting the server"
    settings = KnowledgeSettings(_env_file=None, retrieve_top_k=3, rerank_top_n=3,
                                 retrieval_mode="hybrid", fusion="rrf")
    retriever = Retriever(embedder=hashing_embedder, store=identifier_store, reranker=None,
                          settings=settings)
    fused = identifier_store.search_hybrid(hashing_embedder.embed_query(question),
                                           keyword_query(question), limit=8,
                                           depth=8 * HYBRID_DEPTH_FACTOR)
    quoting = [c.chunk.source for c in fused[:3] if IDENTIFIER in c.chunk.text]
    assert quoting == ["config.md"]  # precondition: only TARGET quotes it in the top 3
    assert "changelog.md" in [c.chunk.source for c in identifier_store.search_bm25(IDENTIFIER, limit=2)]

    hybrid = retriever.retrieve(question, mode="hybrid").candidates_top_k
    assert [c.chunk.id for c in hybrid] == [c.chunk.id for c in fused[:3]]


def test_the_best_keyword_only_hit_takes_the_last_slot(milvus_lite_uri, hashing_embedder):
    """Weighted fusion ranks dense hits first; a passage only BM25 finds still gets in."""
    question = "What happens when the coordinators were stopped and are restarting?"
    # Dense-alike (the question's function words), no keyword in common.
    fillers = [f"## Note {n}\n\nWhat happens when the {n} were and are the same?\n" for n in range(10)]
    # Only the stemmed keyword side matches: coordinator/coordinators, stops/stopped, restarts/restarting.
    target = "## Recovery\n\nA coordinator restarts by itself after it stops.\n"
    doc = Document(source="ops.md", text="# Ops\n\n" + "\n".join(fillers) + "\n" + target)
    chunks = chunk_document(doc, max_tokens=200, overlap_tokens=0, min_tokens=0,
                            url_template="https://docs.example/{stem}#{anchor}")
    store = VectorStore(uri=milvus_lite_uri, collection="slot", dimension=hashing_embedder.dimension,
                        model_id=hashing_embedder.model_id)
    try:
        store.upsert(chunks, hashing_embedder.embed_documents([c.search_text for c in chunks]))
        store.flush()
        settings = KnowledgeSettings(_env_file=None, retrieve_top_k=3, rerank_top_n=3,
                                     retrieval_mode="hybrid", fusion="weighted")
        retriever = Retriever(embedder=hashing_embedder, store=store, reranker=None, settings=settings)
        fused = store.search_hybrid(hashing_embedder.embed_query(question), keyword_query(question),
                                    limit=8, fusion="weighted", depth=8 * HYBRID_DEPTH_FACTOR)
        assert all("Recovery" not in c.chunk.heading_path for c in fused[:3])  # fusion leaves it out
        assert "Recovery" in store.search_bm25(keyword_query(question), limit=1)[0].chunk.heading_path

        hybrid = retriever.retrieve(question).candidates_top_k
        assert [c.chunk.id for c in hybrid[:2]] == [c.chunk.id for c in fused[:2]]
        assert "Recovery" in hybrid[2].chunk.heading_path
    finally:
        store.close()


def test_config_section_found_through_bm25_over_real_docs(make_kb, corpus_en, tmp_path):
    """Tiny random embedder (dense is noise): the parameter name alone finds the section."""
    root = tmp_path / "docs"
    for relative in ("adminGuide/authenticate.md", "faq/operational_faq.md", "faq/product_faq.md",
                     "faq/performance_faq.md"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus_en / relative, root / relative)
    kb = make_kb(sources=root, reranker=False, api_key="", retrieval_mode="hybrid")
    question = f"What does {IDENTIFIER} do?"
    top = kb.retriever.retrieve(question).candidates_top_k
    assert any(
        c.chunk.source == "adminGuide/authenticate.md"
        and c.chunk.heading_path[-1:] == ("Enable user authentication",)
        for c in top[: kb.settings.retrieve_top_k]
    ), [c.chunk.breadcrumb for c in top]


# ---- section structure: the title vector ------------------------------------------------

FAQ_ENTRY = (
    "# Operations FAQ\n\n## How do I rotate the TLS certificate?\n\nRun renew on every proxy "
    "node, then restart proxies one at a time so that clients keep connecting during "
    "maintenance windows and nothing drops.\n"
)
# A guide page that only mentions the question's words, more often than the FAQ answer does.
GUIDE_PAGE = "# Security guide\n\n## Transport encryption\n\n" + " ".join(
    ["How the TLS certificate is loaded, how to rotate the TLS certificate, and how I do it: "
     "the certificate and the TLS files."] * 3) + "\n"


def _indexed_store(uri, embedder, documents, collection):
    from knowledge.indexer import section_title

    chunks = [
        chunk
        for source, text in documents
        for chunk in chunk_document(Document(source=source, text=text), max_tokens=300,
                                    overlap_tokens=0, min_tokens=0, url_template="https://d/{stem}")
    ]
    store = VectorStore(uri=uri, collection=collection, dimension=embedder.dimension,
                        model_id=embedder.model_id)
    store.upsert(chunks, embedder.embed_documents([c.search_text for c in chunks]),
                 title_vectors=embedder.embed_documents([section_title(c) for c in chunks]))
    store.flush()
    return store


def test_a_faq_entry_headed_by_the_question_beats_a_page_that_mentions_its_words(
    milvus_lite_uri, hashing_embedder
):
    fillers = [(f"p{n}.md", f"# Page {n}\n\n## Part {n}\n\nSegments {n} and nodes.\n") for n in range(6)]
    store = _indexed_store(milvus_lite_uri, hashing_embedder,
                           [("faq.md", FAQ_ENTRY), ("guide.md", GUIDE_PAGE), *fillers], "titles")
    question = "How do I rotate the TLS certificate?"
    try:
        def first(title_weight: float) -> str:
            settings = KnowledgeSettings(_env_file=None, retrieve_top_k=3, rerank_top_n=3,
                                         title_weight=title_weight)
            retriever = Retriever(embedder=hashing_embedder, store=store, settings=settings)
            return retriever.retrieve(question).candidates_top_k[0].chunk.source

        # Precondition: the body vector and BM25 both prefer the page that repeats the words.
        assert first(0.0) == "guide.md"
        assert store.search_bm25(keyword_query(question), limit=1)[0].chunk.source == "guide.md"
        assert first(KnowledgeSettings(_env_file=None).title_weight) == "faq.md"
    finally:
        store.close()


def test_a_section_headed_by_a_matching_question_is_favoured_in_fusion(
    milvus_lite_uri, hashing_embedder, monkeypatch
):
    """With the title side's own weight near zero, only the question-heading bonus
    (retriever.QUESTION_HEADING_BONUS x title cosine) lifts the FAQ entry over the guide
    page whose body and keywords match better."""
    import knowledge.retriever as retriever_module

    fillers = [(f"p{n}.md", f"# Page {n}\n\n## Part {n}\n\nSegments {n} and nodes.\n") for n in range(6)]
    store = _indexed_store(milvus_lite_uri, hashing_embedder,
                           [("faq.md", FAQ_ENTRY), ("guide.md", GUIDE_PAGE), *fillers], "questions")
    question = "How do I rotate the TLS certificate?"
    try:
        def order() -> list[str]:
            settings = KnowledgeSettings(_env_file=None, retrieve_top_k=3, rerank_top_n=3,
                                         title_weight=0.01)
            retriever = Retriever(embedder=hashing_embedder, store=store, settings=settings)
            found = retriever.retrieve(question).candidates_top_k
            return [c.chunk.source for c in found]

        with_bonus = order()
        monkeypatch.setattr(retriever_module, "QUESTION_HEADING_BONUS", 0.0)
        without = order()
        assert without[0] == "guide.md"
        assert with_bonus[0] == "faq.md"
    finally:
        store.close()


# ---- fusion ----------------------------------------------------------------------------


def test_deeper_side_lists_fuse_by_rrf(identifier_store, hashing_embedder):
    vector = hashing_embedder.embed_query("enable authentication setup 3")
    text = "authentication configuration 7"
    k, limit, depth = 60, 4, 12
    expected: dict[str, float] = {}
    for side in (identifier_store.search_dense(vector, limit=depth),
                 identifier_store.search_bm25(text, limit=depth)):
        for hit in side:
            expected[hit.chunk.id] = expected.get(hit.chunk.id, 0.0) + 1.0 / (k + hit.rank)
    fused = identifier_store.search_hybrid(vector, text, limit=limit, rrf_k=k, depth=depth)
    assert len(fused) == limit
    assert [h.fused_score for h in fused] == pytest.approx(
        sorted(expected.values(), reverse=True)[:limit], rel=1e-4)
    for hit in fused:
        assert hit.fused_score == pytest.approx(expected[hit.chunk.id], rel=1e-4)


def test_chinese_question_without_identifiers_is_dense_only(identifier_store, hashing_embedder):
    # No keyword side (the title vector, dense too, would still join: off here to compare).
    settings = KnowledgeSettings(_env_file=None, retrieve_top_k=5, retrieval_mode="hybrid",
                                 title_weight=0.0)
    retriever = Retriever(embedder=hashing_embedder, store=identifier_store, reranker=None,
                          settings=settings)
    question = "如何在配置文件中启用 authentication？"
    hybrid = retriever.retrieve(question).candidates_top_k
    dense = retriever.retrieve(question, mode="dense").candidates_top_k
    assert [c.chunk.id for c in hybrid] == [c.chunk.id for c in dense]
    # With an identifier in it, the keyword side joins and brings the exact match.
    with_id = retriever.retrieve(f"如何设置 {IDENTIFIER}？").candidates_top_k
    assert any(IDENTIFIER in c.chunk.text for c in with_id)


# ---- abstention and the whole path with tiny models -----------------------------------


def test_below_the_dense_threshold_the_bot_abstains_without_a_model_call(make_kb, fake_openai):
    kb = make_kb(reranker=False, abstain_dense_threshold=0.99)  # tiny vectors never get there
    answer = kb.ask("What is the capital of Australia?")
    assert answer.status == "abstained" and fake_openai.requests == []
    assert answer.citations and answer.text.startswith("The documentation doesn't seem to cover")
    kb.settings.abstain_dense_threshold = -1.0
    assert kb.ask("What is the capital of Australia?").status == "answered"
    assert len(fake_openai.requests) == 1


def test_chinese_question_with_an_identifier_through_the_whole_path(make_kb, fake_openai):
    kb = make_kb(abstain_threshold=0.0, abstain_dense_threshold=-1.0, retrieval_mode="hybrid")
    fake_openai.reply("FLAT 是暴力搜索 [1]。")
    answer = kb.ask("FLAT 和 IVF_FLAT 有什么区别？")
    assert answer.language == "zh" and answer.status == "answered"
    system = fake_openai.last_request["messages"][0]["content"]
    assert "write the answer in Chinese" in system
    passages = fake_openai.last_request["messages"][-1]["content"]
    assert "IVF_FLAT" in passages  # the keyword side found the index-type passage
    assert [c.number for c in answer.citations] == [1]


# ---- evaluation with follow-ups and the suggested threshold ---------------------------


def test_follow_up_items_search_with_the_rewritten_query(make_kb, corpus_en):
    items = load_items(FOLLOWUPS)
    assert all(item.history for item in items)
    kb = make_kb(sources=f"{corpus_en}::faq/*.md", reranker=False, api_key="", retrieval_mode="bm25")
    bare = evaluate(kb, items, rewrite=False)
    rewritten = evaluate(kb, items)
    assert rewritten["recall@10"] > bare["recall@10"], (bare["recall@10"], rewritten["recall@10"])
    text = format_result(rewritten)
    assert "Suggested ABSTAIN_DENSE_THRESHOLD" in text or "No threshold suggested" in text


# ---- MiniLM on the dev set (slow) -------------------------------------------------------


@pytest.mark.slow
def test_hybrid_at_least_dense_on_english_and_unanswerable_declined(make_kb, corpus_en, dev_set):
    """MiniLM over the FAQ, reranking off. Measured (docs/answer-quality.md): English
    recall@10 0.90 both, MRR@10 dense 0.817, hybrid 0.875."""
    kb = make_kb(sources=f"{corpus_en}::faq/*.md", embedder="minilm", reranker=False, api_key="",
                 abstain_dense_threshold=MINILM_DENSE_THRESHOLD)
    items = load_items(dev_set)
    dense = evaluate(kb, items, mode="dense", rerank=False)
    hybrid = evaluate(kb, items, mode="hybrid", rerank=False)
    en_dense, en_hybrid = dense["by_lang"]["en"], hybrid["by_lang"]["en"]
    assert en_hybrid["recall@10"] >= en_dense["recall@10"] >= 0.85, (en_dense, en_hybrid)
    assert en_hybrid["mrr@10"] > en_dense["mrr@10"], (en_dense, en_hybrid)
    assert hybrid["abstain_correct"] == 1.0, hybrid["misses"]
    # MiniLM reads English only. No English question the FAQ answers is declined (two dev
    # items are answered outside faq/: declining those is right for this knowledge base).
    in_faq = {i.id for i in items if i.lang == "en" and i.expected
              and all(e.source.startswith("faq/") for e in i.expected)}
    declined = {m["id"] for m in hybrid["misses"] if m["why"] == "declined an answerable question"}
    assert not declined & in_faq, declined


@pytest.mark.slow
@pytest.mark.timeout(1800)  # indexes 3,615 chunks and their sentences with MiniLM on CPU
def test_hybrid_beats_dense_over_the_whole_tree(make_kb, corpus_en, dev_set, tmp_path, monkeypatch):
    """MiniLM over all of en/ (3,615 chunks), reranking off (docs/answer-quality.md):
    - hybrid (body vector + title vector + BM25 with expansion, sentence evidence) beats
      dense on the dev set's English items and on the independently written whole-tree
      set (dev recall@10 0.95 -> 1.00, MRR@10 0.668 -> 0.922; whole-tree set 0.80 -> 0.83,
      0.434 -> 0.584);
    - sentence evidence lifts the tickets set's support-style items (recall@10 0.83 ->
      0.89, MRR@10 0.474 -> 0.630) and FAQ-style items reach MRR@10 0.96 (target 0.85);
    - section titles (the title vector in fusion and the FAQ heading lift) lift FAQ entries
      headed by the question (tickets set, FAQ items, MRR@10 0.59 -> 0.96 without expansion);
    - the abstention model `eval --fit-abstention` fits on the dev set plus the tuning
      file declines 3 of the tickets set's 6 near-misses and 3 of the whole-tree set's 4
      unanswerable items, wrongly declining 1 of their English answerable items each
      (bounded at 10 %; bfloat16 noise)."""
    import knowledge.retriever as retriever_module
    from knowledge.evaluation import fit_abstention

    # dtype auto: bfloat16 where the CPU has it (3x faster to index; same figures as float32).
    kb = make_kb(sources=corpus_en, embedder="minilm", reranker=False, api_key="",
                 abstain_dense_threshold=MINILM_DENSE_THRESHOLD, dtype="auto")
    assert kb.store.has_title_vector
    dev = load_items(dev_set)
    dense = evaluate(kb, dev, mode="dense", rerank=False)["by_lang"]["en"]
    hybrid = evaluate(kb, dev, mode="hybrid", rerank=False)
    en = hybrid["by_lang"]["en"]
    assert en["recall@10"] > dense["recall@10"] and en["mrr@10"] > dense["mrr@10"], (dense, en)
    tuning = evaluate(kb, dev + load_items(ABSTENTION_TUNING_SET), mode="hybrid", rerank=False)
    model = fit_abstention(kb, tuning, path=tmp_path / "abstention.json", fitted_on="dev + tuning")
    assert model is not None and "foreign_term" in model.features, model

    tree = load_items(WHOLE_TREE_SET)
    dense = evaluate(kb, tree, mode="dense", rerank=False)["by_lang"]["en"]
    hybrid = evaluate(kb, tree, mode="hybrid", rerank=False)
    en = hybrid["by_lang"]["en"]
    assert en["recall@10"] >= dense["recall@10"] and en["mrr@10"] > dense["mrr@10"], (dense, en)
    assert hybrid["abstain_correct"] >= 0.7 and en["false_abstain"] <= 0.10, hybrid["misses"]
    tickets = evaluate(kb, load_items(TICKETS_SET), mode="hybrid", rerank=False)
    assert tickets["by_kind"]["unanswerable"]["abstain_correct"] >= 0.5, tickets["misses"]
    assert tickets["by_lang"]["en"]["false_abstain"] <= 0.10, tickets["misses"]
    assert tickets["by_kind"]["faq"]["mrr@10"] >= 0.85, tickets["misses"]

    # Sentence evidence lifts the support tickets answered by one sentence of a long section.
    support = [item for item in load_items(TICKETS_SET) if item.kind == "support"]
    assert kb.store.has_sentence_vectors
    weighed = evaluate(kb, support, mode="hybrid", rerank=False)
    kb.settings.sentence_weight = 0.0
    plain = evaluate(kb, support, mode="hybrid", rerank=False)
    kb.settings.sentence_weight = KnowledgeSettings(_env_file=None).sentence_weight
    assert weighed["recall@10"] > plain["recall@10"] and weighed["mrr@10"] > plain["mrr@10"], (plain, weighed)

    faq = [item for item in load_items(TICKETS_SET) if item.kind == "faq"]
    kb.settings.query_expansion = False
    with_title = evaluate(kb, faq, mode="hybrid", rerank=False)
    kb.settings.title_weight = 0.0
    monkeypatch.setattr(retriever_module, "QUESTION_TITLE_WEIGHT", 0.0)
    without = evaluate(kb, faq, mode="hybrid", rerank=False)
    assert with_title["mrr@10"] > without["mrr@10"] + 0.1, (without, with_title)


# ---- symptoms and goals in the docs' words -------------------------------------------

SYMPTOM_DOCS = {
    "resources.md": "# Allocate Resources\n\n## Set limits\n\nAllocate CPU and memory resources "
                    "to each component with the resources.limits values.\n",
    "tls.md": "# Encryption in Transit\n\n## Enable TLS\n\nSet tls.enabled to true and mount the "
              "certificate files on the proxy.\n",
    **{f"ops{n}.md": f"# Operations {n}\n\n## Lifecycle {n}\n\nPods keep getting killed and "
                     f"restarted when nodes {n} are drained, and the traffic between the app and the "
                     f"server moves to another pod.\n" for n in range(6)},
}
SYMPTOM_ITEMS = [
    ("Our pods keep getting killed, they seem to run out of RAM", "resources.md",
     "Allocate CPU and memory resources", "allocate CPU and memory resources limits"),
    ("Traffic between the app and the server is sent in clear text", "tls.md",
     "Set tls.enabled to true", "enable TLS encryption in transit"),
]


@pytest.fixture
def symptom_corpus(tmp_path) -> Path:
    root = tmp_path / "symptoms"
    root.mkdir()
    for name, text in SYMPTOM_DOCS.items():
        (root / name).write_text(text)
    return root


def test_the_models_rewrite_into_doc_words_finds_the_section_a_symptom_never_names(
    make_kb, fake_openai, symptom_corpus
):
    from knowledge.evaluation import EvalItem, Expected
    from knowledge.prompts import DOC_WORDS_PROMPT

    items = [EvalItem(id=f"s{n}", lang="en", question=question,
                      expected=(Expected(source=source, contains=contains),))
             for n, (question, source, contains, _) in enumerate(SYMPTOM_ITEMS)]
    # The keyword side decides (the tiny embedder's vectors are noise); top 1 only.
    kb = make_kb(sources=symptom_corpus, reranker=False, retrieval_mode="bm25",
                 retrieve_top_k=1, rerank_top_n=1)
    assert evaluate(kb, items)["recall@10"] == 0.0 and fake_openai.requests == []  # off by default
    kb.settings.doc_rewrite = True
    for *_, rewrite in SYMPTOM_ITEMS:
        fake_openai.reply(rewrite)
    assert evaluate(kb, items)["recall@10"] == 1.0
    assert [r["messages"][0]["content"] for r in fake_openai.requests] == [DOC_WORDS_PROMPT] * 2
    # A failing model leaves the question as asked.
    fake_openai.fail(500, times=4)
    assert evaluate(kb, items)["recall@10"] == 0.0


RESOURCES_PAGE = (
    "# Allocate Resources\n\n## Before you start\n\nA pod that was OOM killed ran out of its "
    "memory limit.\n\n## Set limits\n\nAllocate CPU and memory resources to each component with "
    "the resources.limits values.\n"
)


def test_expansion_adds_the_heading_words_of_the_docs_that_use_a_symptoms_words(
    milvus_lite_uri, hashing_embedder
):
    """"Set limits" never says OOM or killed; its page does, under another heading."""
    pods = [(f"ops{n}.md", f"# Operations {n}\n\n## Lifecycle {n}\n\nA pod keeps getting killed and "
                           f"restarted by the scheduler {n} when nodes are drained; pods that get killed "
                           f"give their memory back.\n") for n in range(8)]
    store = _indexed_store(milvus_lite_uri, hashing_embedder,
                           [("allocate.md", RESOURCES_PAGE), *pods], "symptoms")
    question = "Our pods keep getting OOM killed. How do we give them more memory?"
    try:
        expander = Retriever(embedder=hashing_embedder, store=store,
                             settings=KnowledgeSettings(_env_file=None)).expander
        keywords = keyword_query(question)
        expanded = expander.expand(question, keywords)
        assert expanded.split()[-2:] == ["allocate", "resources"]

        # The hybrid search's keyword side: the heading words reach the section.
        def headings(text: str) -> list[str]:
            return [c.chunk.heading_path[-1] for c in store.search_bm25(text, limit=2)]

        assert "Set limits" not in headings(keywords)
        assert "Set limits" in headings(expanded)
    finally:
        store.close()


# ---- abstention: questions naming what the docs lack ----------------------------------

AUTH_DOCS = [
    ("auth.md", "# Authenticate User Access\n\n## Enable authentication\n\nSet "
                "common.security.authorizationEnabled to true; users then log in with a user name "
                "and a password.\n\n## Reset a password\n\nAn admin can reset the password of a "
                "user who forgot it.\n"),
    ("tls.md", "# Encryption in Transit\n\n## Enable TLS\n\nSet tls.enabled to true and mount the "
               "certificate files on the proxy.\n"),
]


def test_a_question_naming_what_the_docs_never_mention_gets_a_foreign_term_signal(
    milvus_lite_uri, hashing_embedder
):
    """"LDAP" is in no section and is no everyday word: the signal is high, and as high for
    an acronym that spells a common word in lower case ("KMS": kms, kilometres). A question
    in casual words the docs do not use either ("teammate", "forgot... blows up") is not."""
    store = _indexed_store(milvus_lite_uri, hashing_embedder, AUTH_DOCS, "foreign")
    try:
        retriever = Retriever(embedder=hashing_embedder, store=store,
                              settings=KnowledgeSettings(_env_file=None, reranker_model="none"))

        def foreign(question: str) -> float:
            result = retriever.retrieve(question, mode="hybrid", rerank=False)
            return retriever.signals(result)["foreign_term"]

        assert foreign("Can people log in with their company LDAP accounts instead of a password?") > 1.5
        assert foreign("Can the proxy's certificate files be encrypted with our KMS key?") > 1.5
        assert foreign("A teammate's login blows up every morning, can an admin reset her password?") < 1.0
        assert foreign("How do I enable TLS on the proxy?") == 0.0
    finally:
        store.close()


def test_the_fitted_cut_wrongly_declines_at_most_a_tenth_of_the_answerable_items():
    """Many unanswerable items scoring like answerable ones: declining all of them (the
    old cut) would decline most answerable items too. The fit keeps the false
    abstentions within MAX_FALSE_ABSTAIN and still declines those naming a foreign term."""
    from knowledge.abstention import MAX_FALSE_ABSTAIN, fit

    def row(answerable: bool, dense: float, foreign: float) -> dict:
        return {"answerable": answerable,
                "signals": {"dense_top": dense, "title_top": dense, "foreign_term": foreign}}

    answerable = [row(True, 0.40 + 0.01 * n, 0.0) for n in range(30)]
    near_misses = [row(False, 0.55 + 0.01 * n, 0.0) for n in range(6)]  # mid-range cosines
    foreign = [row(False, 0.50 + 0.01 * n, 2.0) for n in range(6)]  # "LDAP", "GraphQL"...
    model = fit(answerable + near_misses + foreign, score="dense")
    assert model.false_abstain <= MAX_FALSE_ABSTAIN, model
    assert "foreign_term" in model.features
    assert all(model.declines(r["signals"]) for r in foreign)
    assert model.declined_unanswerable.startswith(str(sum(model.declines(r["signals"])
                                                          for r in near_misses + foreign)))


def test_the_fit_leaves_out_answerable_items_whose_answer_retrieval_missed():
    """Questions in a language the embedder cannot read score below everything, and their
    answer is not among the candidates anyway: counted in the false-abstention budget they
    would pull the cut below every near-miss. Left out, the cut is set on the answerable
    items retrieval served."""
    from knowledge.abstention import MAX_FALSE_ABSTAIN, fit

    def row(answerable: bool, dense: float, rank: int | None = None) -> dict:
        return {"answerable": answerable, "rank_before": rank,
                "signals": {"dense_top": dense, "title_top": dense, "foreign_term": 0.0}}

    served = [row(True, 0.60 + 0.01 * n, rank=1) for n in range(20)]
    unread = [row(True, 0.20 + 0.02 * n, rank=None) for n in range(8)]  # answer never retrieved
    near_misses = [row(False, 0.45 + 0.01 * n) for n in range(6)]
    model = fit(served + unread + near_misses, score="dense")
    assert model.declined_unanswerable == "6/6", model
    assert sum(model.declines(r["signals"]) for r in served) <= MAX_FALSE_ABSTAIN * len(served)
    assert model.false_abstain <= MAX_FALSE_ABSTAIN
