"""Reranker: the fast yes/no path against the model card's scoring, on a tiny Qwen3ForCausalLM."""

import math
import threading
import time

import pytest

import knowledge.reranker as reranker_module
from knowledge.errors import ModelLoadError
from knowledge.reranker import Reranker, reference_scores
from knowledge.settings import DEFAULT_RERANK_INSTRUCTION
from tests.concurrently import run_concurrently

QUERY = "How is data stored in Milvus?"
DOCS = [
    "Milvus stores inserted data in object storage as incremental logs.",
    "etcd",
    "Metadata are generated within Milvus; each module keeps its own metadata in etcd. " * 6,
    "向量数据库把数据存储在对象存储中。",
    "The quick brown fox jumps over the lazy dog.",
    "Milvus supports MinIO, AWS S3, Google Cloud Storage and Azure Blob Storage. " * 3,
    "no",
]


def _reranker(path, *, dtype="float32", max_tokens=512, batch_size=3, int8=False):
    return Reranker(
        model=str(path),
        instruction=DEFAULT_RERANK_INSTRUCTION,
        max_tokens=max_tokens,
        batch_size=batch_size,
        device="cpu",
        dtype=dtype,
        int8=int8,
    )


def _reference(reranker, query, docs, max_length=None):
    return reference_scores(
        reranker.model, reranker.tokenizer, query, docs, DEFAULT_RERANK_INSTRUCTION, max_length or reranker.max_tokens
    )


def test_fast_path_equals_the_model_card_scoring_in_float32(tiny_reranker):
    fast = tiny_reranker.score(QUERY, DOCS, use_cache=False)
    reference = _reference(tiny_reranker, QUERY, DOCS)
    assert max(abs(a - b) for a, b in zip(fast, reference)) <= 1e-4
    assert all(0.0 < score < 1.0 for score in fast)


def test_fast_path_equals_the_model_card_scoring_in_bfloat16(tiny_reranker_path):
    reranker = _reranker(tiny_reranker_path, dtype="bfloat16")
    fast = reranker.score(QUERY, DOCS, use_cache=False)
    reference = _reference(reranker, QUERY, DOCS)
    assert max(abs(a - b) for a, b in zip(fast, reference)) <= 0.02


def test_scores_come_back_in_input_order_whatever_the_lengths(tiny_reranker_path):
    reranker = _reranker(tiny_reranker_path, batch_size=2)
    alone = [reranker.score(QUERY, [doc], use_cache=False)[0] for doc in DOCS]
    # Distinct scores, so any reordering would show.
    assert min(abs(a - b) for i, a in enumerate(alone) for b in alone[i + 1 :]) > 1e-5
    together = reranker.score(QUERY, DOCS)
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(together, alone))
    reversed_docs = list(reversed(DOCS))
    reranker_fresh = _reranker(tiny_reranker_path, batch_size=4)
    assert all(
        math.isclose(a, b, abs_tol=1e-5) for a, b in zip(reranker_fresh.score(QUERY, reversed_docs), reversed(alone))
    )


def test_length_sorted_batches_of_batch_size(tiny_reranker_path):
    reranker = _reranker(tiny_reranker_path, batch_size=3)
    reranker.score(QUERY, DOCS)
    # One pass for the shared prompt start, then one per batch.
    assert reranker.forward_calls == 1 + math.ceil(len(DOCS) / 3)


def test_shared_prefix_cache_gives_the_same_scores_as_full_sequences(tiny_reranker_path, monkeypatch):
    reranker = _reranker(tiny_reranker_path, batch_size=3)
    with_prefix = reranker.score(QUERY, DOCS, use_cache=False)
    assert reranker.forward_calls == 1 + math.ceil(len(DOCS) / 3)
    monkeypatch.setattr(reranker_module, "MIN_SHARED_PREFIX", 10**9)
    without_prefix = reranker.score(QUERY, DOCS, use_cache=False)
    assert reranker.forward_calls == 2 * (1 + math.ceil(len(DOCS) / 3)) - 1
    assert max(abs(a - b) for a, b in zip(with_prefix, without_prefix)) <= 1e-5


def test_system_prompt_and_instruction_run_once_for_all_questions(tiny_reranker_path):
    reranker = _reranker(tiny_reranker_path)
    fixed = reranker._fixed.length
    assert fixed > len(reranker._prefix_ids)  # the system prompt and the instruction
    question = reranker.model_inputs(QUERY, DOCS[:2])
    shared = reranker_module._common_prefix_length(question)
    scores = reranker.score(QUERY, DOCS[:2], use_cache=False)
    assert reranker.prefix_tokens_run == shared - fixed  # only the question's own words ran
    assert scores == pytest.approx(_reference(reranker, QUERY, DOCS[:2]), abs=1e-4)
    reranker.score("Where is metadata kept?", DOCS[:2], use_cache=False)
    assert reranker.prefix_tokens_run < 2 * (shared - fixed) + 10


def test_documents_are_truncated_to_max_tokens_like_the_model_card(tiny_reranker_path):
    head = "Milvus keeps inserted data in object storage. " * 20
    doc_a, doc_b = head + "Tail one about etcd.", head + "Completely different ending, 中文。"
    short = _reranker(tiny_reranker_path, max_tokens=96)
    a, b = short.score(QUERY, [doc_a, doc_b])
    assert a == pytest.approx(b, abs=1e-6)  # the differing tails were cut off
    reference = _reference(short, QUERY, [doc_a, doc_b], max_length=96)
    assert max(abs(x - y) for x, y in zip([a, b], reference)) <= 1e-4
    long = _reranker(tiny_reranker_path, max_tokens=1024)
    a_full, b_full = long.score(QUERY, [doc_a, doc_b])
    assert abs(a_full - b_full) > 1e-6


def test_max_tokens_too_small_for_the_prompt_is_refused(tiny_reranker_path):
    with pytest.raises(ModelLoadError, match="RERANK_MAX_TOKENS"):
        _reranker(tiny_reranker_path, max_tokens=16)


def test_empty_document_list_returns_nothing_without_running_the_model(tiny_reranker):
    calls = tiny_reranker.forward_calls
    assert tiny_reranker.score(QUERY, []) == []
    assert tiny_reranker.forward_calls == calls


def test_repeated_pairs_come_from_the_cache(tiny_reranker_path):
    reranker = _reranker(tiny_reranker_path, batch_size=8)
    first = reranker.score(QUERY, DOCS[:4])
    calls = reranker.forward_calls
    assert reranker.score(QUERY, DOCS[:4]) == first
    assert reranker.forward_calls == calls
    # Only the unseen document is scored; the cached ones keep their places.
    mixed = reranker.score(QUERY, [DOCS[4], DOCS[0], DOCS[2]])
    assert reranker.forward_calls == calls + 2  # the shared prefix, then the one new document
    assert mixed[1] == first[0] and mixed[2] == first[2]
    # Another query is another key.
    reranker.score("Where is metadata kept?", DOCS[:1])
    assert reranker.forward_calls == calls + 4


def test_concurrent_scoring_from_several_threads(tiny_reranker_path):
    reranker = _reranker(tiny_reranker_path, batch_size=2, max_tokens=256)
    queries = [f"{QUERY} ({i})" for i in range(5)]
    expected = {q: _reference(reranker, q, DOCS) for q in queries}
    results: dict[str, list[float]] = {}
    barrier = threading.Barrier(len(queries))

    def work(query: str) -> None:
        barrier.wait()
        results[query] = reranker.score(query, DOCS)

    assert not run_concurrently([lambda q=q: work(q) for q in queries], timeout=60)
    for query in queries:
        assert max(abs(a - b) for a, b in zip(results[query], expected[query])) <= 1e-4


def test_use_cache_false_runs_the_model_and_leaves_the_cache_alone(tiny_reranker_path):
    reranker = _reranker(tiny_reranker_path)
    first = reranker.score(QUERY, DOCS[:2], use_cache=False)
    second = reranker.score(QUERY, DOCS[:2], use_cache=False)
    assert first == second
    assert reranker.forward_calls == 4 and len(reranker._cache) == 0


def test_warm_up_scores_without_filling_the_cache(tiny_reranker_path):
    reranker = _reranker(tiny_reranker_path)
    reranker.warm_up()
    assert reranker.forward_calls == 2
    assert len(reranker._cache) == 0


def test_missing_model_folder_is_a_quick_one_line_error(tmp_path):
    missing = str(tmp_path / "absent-reranker")
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        _reranker(missing)
    assert time.monotonic() - started < 2
    assert "\n" not in str(caught.value) and missing in str(caught.value)


def test_uncached_hub_model_offline_is_a_quick_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        _reranker("acme-test/not-a-real-reranker")
    assert time.monotonic() - started < 2
    message = str(caught.value)
    assert "\n" not in message and "acme-test/not-a-real-reranker" in message and "RERANKER_MODEL" in message


def test_folder_without_weights_is_a_one_line_error(tiny_tokenizer_dir):
    with pytest.raises(ModelLoadError) as caught:
        _reranker(tiny_tokenizer_dir)
    assert "\n" not in str(caught.value) and "could not be loaded" in str(caught.value)


def test_tiny_tokenizer_has_the_qwen_specials_and_reads_any_text(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<|endoftext|>"
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "yes", "no"):
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)]
    text = "Milvus 向量数据库 — naïve café ✓ emoji 🚀 and unseen words like zyxwvut"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


# A pasted stack trace: 2,000 characters (MAX_QUESTION_CHARS), the real question at both ends.
LONG_QUESTION = (
    "Why does my insert fail? " + "  File \"/app/ingest.py\", line 42, in insert_rows\n" * 40
)[:1961] + " MilvusException: collection not loaded"


def test_a_2000_char_question_leaves_each_document_its_share(tiny_reranker):
    assert len(LONG_QUESTION) == 2000
    long_docs = [f"{doc} " * 200 for doc in DOCS[:4]]  # each far longer than the share
    sequences = tiny_reranker.model_inputs(LONG_QUESTION, long_docs)
    bare = len(tiny_reranker.model_inputs(LONG_QUESTION, [""])[0])  # the same prompt, no document
    share = int(reranker_module.MIN_DOCUMENT_SHARE * tiny_reranker.max_tokens)
    for ids in sequences:
        assert len(ids) <= tiny_reranker.max_tokens
        assert len(ids) - bare >= share
    text = tiny_reranker.tokenizer.decode(sequences[0])
    assert "Why does my insert fail?" in text and "collection not loaded" in text  # head and tail kept
    # The documents are read, so their scores differ (cut away, all would score the same).
    scores = tiny_reranker.score(LONG_QUESTION, long_docs, use_cache=False)
    assert max(scores) - min(scores) > 1e-5


def test_short_questions_are_not_cut(tiny_reranker):
    text = tiny_reranker.tokenizer.decode(tiny_reranker.model_inputs(QUERY, ["etcd"])[0])
    assert f"<Query>: {QUERY}\n<Document>: etcd" in text


def test_int8_weights_replace_every_linear_layer_and_keep_the_scores_close(tiny_reranker_path):
    import torch

    exact = _reranker(tiny_reranker_path)
    quantized = _reranker(tiny_reranker_path, dtype="auto", int8=True)
    assert quantized.int8 and not exact.int8
    layers = list(quantized.model.base_model.modules())
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in layers)
    assert not any(type(m) is torch.nn.Linear for m in layers)
    expected = exact.score(QUERY, DOCS, use_cache=False)
    scores = quantized.score(QUERY, DOCS, use_cache=False)
    assert scores != expected  # int8 really ran
    assert max(abs(a - b) for a, b in zip(scores, expected)) <= 0.05
    assert scores == pytest.approx(quantized.score(QUERY, list(DOCS), use_cache=False), abs=1e-6)


def test_int8_with_16_bit_weights_is_a_one_line_error(tiny_reranker_path):
    with pytest.raises(ModelLoadError, match="DTYPE=float32"):
        _reranker(tiny_reranker_path, dtype="bfloat16", int8=True)
