"""Embedder: real sentence-transformers loading of a tiny Qwen3 embedding model, and MiniLM for quality."""

import sys
import threading
import time

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from knowledge.embedder import Embedder
from knowledge.errors import ModelLoadError
from tests.fixtures.models import QUERY_PROMPT

TEXTS = [
    "Milvus stores inserted data in object storage as incremental logs.",
    "etcd",
    "向量数据库是什么？",
    "How do I upgrade the index type of a collection that already holds a few million vectors?",
    "MinIO, S3, GCS, Azure Blob",
    "What is the maximum dimension?",
    "A much longer passage. " * 30,
    "no",
    "Metadata are generated within Milvus and stored in etcd.",
    "Partitions split a collection.",
]


def test_loads_through_sentence_transformers_and_reads_the_dimension(tiny_embedder):
    assert isinstance(tiny_embedder._model, SentenceTransformer)
    assert tiny_embedder.dimension == 64
    assert tiny_embedder.embed_query("hello").shape == (64,)
    assert tiny_embedder.embed_documents(["a", "b"]).shape == (2, 64)


def test_vectors_are_normalized_float32(tiny_embedder):
    vectors = np.vstack([tiny_embedder.embed_documents(TEXTS), tiny_embedder.embed_query("Where is data kept?")])
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_bfloat16_vectors_are_normalized_in_float32_too(tiny_embedder_path, tiny_embedder):
    embedder = Embedder(model=str(tiny_embedder_path), device="cpu", dtype="bfloat16")
    vectors = np.vstack([embedder.embed_documents(TEXTS), embedder.embed_query("Where is data kept?")])
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Close to the float32 model: the same model, only rounded.
    assert (np.sum(vectors[:-1] * tiny_embedder.embed_documents(TEXTS), axis=1) > 0.99).all()


def test_query_prompt_is_applied_to_queries_only(tiny_embedder):
    text = "Where does Milvus store data?"
    query = tiny_embedder.embed_query(text)
    document = tiny_embedder.embed_documents([text])[0]
    assert not np.allclose(query, document, atol=1e-3)
    # Exactly the model's query prompt, prepended: the same as embedding the prompted text as a document.
    prompted = tiny_embedder.embed_documents([QUERY_PROMPT + text])[0]
    np.testing.assert_allclose(query, prompted, atol=1e-5)


def test_without_prompts_queries_and_documents_match(tiny_embedder_no_prompts_path):
    embedder = Embedder(model=str(tiny_embedder_no_prompts_path), device="cpu", dtype="float32")
    text = "Where does Milvus store data?"
    np.testing.assert_allclose(embedder.embed_query(text), embedder.embed_documents([text])[0], atol=1e-5)


def test_batched_documents_keep_input_order(tiny_embedder):
    batched = tiny_embedder.embed_documents(TEXTS)  # grouped by token count, longest first
    one_by_one = np.vstack([tiny_embedder.embed_documents([text]) for text in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    # The rows are distinct, so a permutation could not pass the check above.
    similarity = batched @ batched.T
    assert (similarity[~np.eye(len(TEXTS), dtype=bool)] < 0.9999).all()


def test_batches_keep_to_the_token_budget_longest_first(tiny_embedder_path):
    long_text, short_text = "vector index " * 30, "hello"
    probe = Embedder(model=str(tiny_embedder_path), device="cpu", dtype="float32")
    budget = probe.count_tokens(long_text) + 2  # room for one long text (and its special tokens)
    embedder = Embedder(model=str(tiny_embedder_path), device="cpu", dtype="float32",
                        batch_size=4, batch_tokens=budget)
    texts = [short_text, long_text, short_text, long_text] + [short_text] * 4
    vectors = embedder.embed_documents(texts)
    # Each long text alone (2 passes); six short ones in passes of at most 4 (2 passes).
    assert embedder.encode_calls == 4
    alone = np.stack([probe.embed_documents([t])[0] for t in texts])
    np.testing.assert_allclose(vectors, alone, atol=1e-5)


def test_empty_document_list_returns_an_empty_matrix(tiny_embedder):
    calls = tiny_embedder.encode_calls
    assert tiny_embedder.embed_documents([]).shape == (0, 64)
    assert tiny_embedder.encode_calls == calls


def test_query_cache_returns_the_same_vector_without_running_the_model(tiny_embedder):
    first = tiny_embedder.embed_query("a question asked twice")
    calls = tiny_embedder.encode_calls
    second = tiny_embedder.embed_query("a question asked twice")
    assert second is first
    assert tiny_embedder.encode_calls == calls
    assert not second.flags.writeable  # a caller cannot corrupt the cached vector
    tiny_embedder.embed_query("a different question")
    assert tiny_embedder.encode_calls == calls + 1


def test_warm_up_runs_the_model(tiny_embedder):
    calls = tiny_embedder.encode_calls
    tiny_embedder.warm_up()
    assert tiny_embedder.encode_calls == calls + 1


def test_concurrent_calls_from_several_threads_agree_with_sequential_ones(tiny_embedder_path):
    embedder = Embedder(model=str(tiny_embedder_path), device="cpu", dtype="float32", batch_size=3)
    expected_docs = embedder.embed_documents(TEXTS)
    expected_queries = [embedder.embed_documents([QUERY_PROMPT + t])[0] for t in TEXTS]
    errors: list[BaseException] = []
    results: dict[int, tuple] = {}
    barrier = threading.Barrier(6)

    def work(worker: int) -> None:
        try:
            barrier.wait()
            docs = embedder.embed_documents(TEXTS)
            queries = [embedder.embed_query(t) for t in TEXTS[worker:] + TEXTS[:worker]]
            counts = [embedder.count_tokens(t) for t in TEXTS]
            results[worker] = (docs, queries, counts)
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len(results) == 6
    for worker, (docs, queries, counts) in results.items():
        np.testing.assert_allclose(docs, expected_docs, atol=1e-5)
        rotated = expected_queries[worker:] + expected_queries[:worker]
        np.testing.assert_allclose(np.vstack(queries), np.vstack(rotated), atol=1e-5)
        assert counts == [embedder.count_tokens(t) for t in TEXTS]


def test_count_tokens_uses_the_model_tokenizer_without_truncation(tiny_embedder):
    tokenizer = tiny_embedder._model.tokenizer
    text = "How is data stored in Milvus? 向量数据库"
    assert tiny_embedder.count_tokens(text) == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert tiny_embedder.count_tokens("") == 0
    long_text = "Milvus stores inserted data as incremental logs. " * 400
    assert tiny_embedder.count_tokens(long_text) > tiny_embedder._model.max_seq_length
    # Counting switches the shared tokenizer's truncation off; the next encode must truncate again.
    truncated = tiny_embedder.embed_documents([long_text])
    tiny_embedder.count_tokens(long_text)
    np.testing.assert_allclose(tiny_embedder.embed_documents([long_text]), truncated, atol=1e-6)


def test_progress_bar_option_embeds_the_same(tiny_embedder):
    np.testing.assert_allclose(
        tiny_embedder.embed_documents(TEXTS[:3], progress=True), tiny_embedder.embed_documents(TEXTS[:3]), atol=1e-6
    )


def test_missing_model_folder_is_a_quick_one_line_error(tmp_path):
    missing = str(tmp_path / "absent")
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        Embedder(model=missing, device="cpu")
    assert time.monotonic() - started < 2
    assert "\n" not in str(caught.value) and missing in str(caught.value)


def test_uncached_hub_model_offline_is_a_quick_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        Embedder(model="acme-test/not-a-real-embedding-model", device="cpu")
    assert time.monotonic() - started < 2
    message = str(caught.value)
    assert "\n" not in message and "acme-test/not-a-real-embedding-model" in message
    assert "EMBEDDING_MODEL" in message


def test_broken_model_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "modules.json").write_text("[]")
    with pytest.raises(ModelLoadError) as caught:
        Embedder(model=str(tmp_path), device="cpu")
    assert "\n" not in str(caught.value) and "could not be loaded" in str(caught.value)


def test_minilm_ranks_a_paraphrase_above_an_unrelated_sentence(minilm_path):
    embedder = Embedder(model=str(minilm_path), device="cpu", dtype="float32")
    assert embedder.dimension == 384
    query = embedder.embed_query("How is data stored in milvus?")
    related, unrelated = embedder.embed_documents(
        ["Where does Milvus store data?", "The weather in Lisbon is sunny in July."]
    )
    assert float(query @ related) > float(query @ unrelated) + 0.2


# Eight threads alive at once, each allocating past pymalloc (which would serve small objects itself),
# then glibc's heap count from malloc_info: one line per arena.
_ARENA_PROBE = """
import ctypes, os, sys, tempfile, threading
if sys.argv[1]:
    from knowledge.embedder import Embedder
    Embedder(model=sys.argv[1], device="cpu", dtype="float32")
barrier = threading.Barrier(8)
def work():
    kept = [bytearray(1 << 16) for _ in range(4)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
path = tempfile.mktemp()
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, stream)
libc.fclose(stream)
print(open(path).read().count("<heap nr="))
os.remove(path)
"""


def _arenas_after_threads(model_path: str) -> int:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", _ARENA_PROBE, model_path], env=env, cwd=Path(__file__).resolve().parents[1],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc arenas")
def test_loading_the_model_caps_malloc_arenas_for_later_worker_threads(tiny_embedder_path):
    # Without the cap each of the eight threads gets an arena of its own (RSS grew ~1 GB in the bench).
    assert _arenas_after_threads("") > 4
    assert _arenas_after_threads(str(tiny_embedder_path)) <= 2


def test_a_2000_char_question_keeps_the_instruction_head_and_tail(tiny_embedder):
    question = ("Why does my insert fail? " + "File ingest.py, line 42, in insert_rows; " * 60)[:1970]
    question += " MilvusException: not loaded"
    capped = tiny_embedder.capped_query(question)
    assert capped != question
    assert capped.startswith("Why does my insert fail?") and capped.endswith("MilvusException: not loaded")
    assert tiny_embedder.count_tokens(capped) <= tiny_embedder.query_max_tokens + 4
    short = "How is data stored?"
    assert tiny_embedder.capped_query(short) == short
    vector = tiny_embedder.embed_query(question)  # the long question embeds, from the capped text
    np.testing.assert_allclose(vector, tiny_embedder.embed_query(capped), atol=1e-6)


def test_questions_queued_while_the_model_is_busy_share_one_forward_pass(tiny_embedder_path):
    from knowledge.runtime import model_call

    embedder = Embedder(model=str(tiny_embedder_path), device="cpu", dtype="float32")
    questions = [f"question number {i} about {word}" for i, word in enumerate(("etcd", "minio", "pulsar"))]
    alone = [embedder.embed_documents([QUERY_PROMPT + q])[0] for q in questions]
    calls = embedder.encode_calls
    results: dict[int, np.ndarray] = {}
    with model_call():  # another question's reranking holds the model
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, embedder.embed_query(questions[i])))
            for i in range(3)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while embedder._queries.waiting < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert embedder._queries.waiting == 3
    for thread in threads:
        thread.join(timeout=60)
    assert embedder.encode_calls == calls + 1  # three questions, one pass
    for i, vector in results.items():
        np.testing.assert_allclose(vector, alone[i], atol=1e-5)
        assert not vector.flags.writeable


def test_questions_run_after_the_cached_query_instruction_with_the_plain_paths_vectors(tiny_embedder_path):
    embedder = Embedder(model=str(tiny_embedder_path), device="cpu", dtype="float32")
    questions = ["How is data stored?", "Why does my standalone pod keep restarting after an upgrade to 2.4?"]
    plain = [embedder.embed_documents([QUERY_PROMPT + q])[0] for q in questions]
    calls = embedder.encode_calls
    vectors = [embedder.embed_query(q) for q in questions]
    assert embedder.caches_instruction
    assert embedder.encode_calls == calls + 2  # the start-up check is not counted as a question
    np.testing.assert_allclose(np.vstack(vectors), np.vstack(plain), atol=1e-5)
    # Several at once: right-padded rows after the one cached instruction.
    batch = embedder._embed_query_batch(["a", "a much longer question about index building on GPUs"])
    expected = [embedder.embed_documents([QUERY_PROMPT + q])[0]
                for q in ("a", "a much longer question about index building on GPUs")]
    np.testing.assert_allclose(np.vstack(batch), np.vstack(expected), atol=1e-5)


def test_models_without_last_token_pooling_keep_the_plain_path(minilm_path, tiny_embedder_no_prompts_path):
    for path in (minilm_path, tiny_embedder_no_prompts_path):  # mean pooling; no query instruction
        embedder = Embedder(model=str(path), device="cpu", dtype="float32")
        embedder.embed_query("What is a partition key?")
        assert not embedder.caches_instruction
