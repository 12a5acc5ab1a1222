"""Models on model servers: the HTTP clients against a local vLLM-style server wrapping the tiny models.

The server (tests/fixtures/model_server_fake.py) computes what vLLM computes from what it is
sent, so equal vectors and scores mean the clients send exactly the in-process models' inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from knowledge.errors import DimensionMismatchError, ModelLoadError, ModelServerError, ModelServerUnavailableError
from knowledge.model_prompts import QWEN3_EMBEDDING_QUERY_PROMPT, RERANK_PREFIX, RERANK_SUFFIX
from knowledge.model_servers import RemoteEmbedder, RemoteReranker
from knowledge.settings import DEFAULT_RERANK_INSTRUCTION
from tests.fixtures.model_server_fake import FakeModelServer

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["How is data stored in Milvus?", "Where does Milvus store data?", "向量数据库是什么？"]
DOCUMENTS = [
    "Milvus deals with two types of data, inserted data and metadata.",
    "Metadata are generated within Milvus. Each Milvus module has its own metadata that are stored in etcd.",
    "我们的文档使用中文和英文。你好，世界！",
    "The quick brown fox jumps over the lazy dog. " * 120,  # longer than RERANK_MAX_TOKENS: cut to fit
]


def remote_embedder(server, path, **kwargs) -> RemoteEmbedder:
    return RemoteEmbedder(model=str(path), base_url=server.base_url, **kwargs)


def remote_reranker(server, path, **kwargs) -> RemoteReranker:
    kwargs.setdefault("max_tokens", 512)
    return RemoteReranker(model=str(path), base_url=server.base_url, instruction=DEFAULT_RERANK_INSTRUCTION, **kwargs)


def test_vectors_and_scores_through_http_equal_the_in_process_models(
    fake_model_server, tiny_embedder, tiny_reranker, tiny_embedder_path, tiny_reranker_path
):
    embedder = remote_embedder(fake_model_server, tiny_embedder_path)
    assert (embedder.dimension, embedder.model_id) == (tiny_embedder.dimension, tiny_embedder.model_id)
    for question in QUESTIONS:
        np.testing.assert_allclose(embedder.embed_query(question), tiny_embedder.embed_query(question), atol=1e-4)
    np.testing.assert_allclose(embedder.embed_documents(DOCUMENTS), tiny_embedder.embed_documents(DOCUMENTS), atol=1e-4)
    # The model's own tokenizer counts (chunk sizes do not change when the embedder moves out).
    assert [embedder.count_tokens(d) for d in DOCUMENTS] == [tiny_embedder.count_tokens(d) for d in DOCUMENTS]

    reranker = remote_reranker(fake_model_server, tiny_reranker_path)
    assert reranker.qwen3
    for question in QUESTIONS:
        remote = reranker.score(question, DOCUMENTS)
        local = tiny_reranker.score(question, DOCUMENTS, use_cache=False)
        np.testing.assert_allclose(remote, local, atol=1e-4)
    # vLLM answers best-first: scores still come back in input order.
    rerank_calls = [body for path, body, _ in fake_model_server.requests if path.endswith("/rerank")]
    assert rerank_calls and all(len(body["documents"]) == len(DOCUMENTS) for body in rerank_calls)


def test_requests_carry_the_qwen3_prompts_the_model_names_and_the_key(
    fake_model_server, tiny_embedder_path, tiny_reranker_path
):
    embedder = remote_embedder(fake_model_server, tiny_embedder_path, api_key="sk-embed")
    reranker = remote_reranker(fake_model_server, tiny_reranker_path, api_key="sk-rerank")
    embedder.embed_query("Where is data?")
    embedder.embed_documents(["Passage one.", "Passage two."])
    reranker.score("Where is data?", ["Passage one."])
    (_, probe, _), (_, query, query_headers), (_, documents, _), (_, rerank, rerank_headers) = fake_model_server.requests
    assert query["model"] == str(tiny_embedder_path)
    assert query["input"] == [QWEN3_EMBEDDING_QUERY_PROMPT + "Where is data?"]  # the model's `query` prompt
    assert documents["input"] == ["Passage one.", "Passage two."]  # documents: no prompt
    assert query_headers["authorization"] == "Bearer sk-embed"
    assert rerank_headers["authorization"] == "Bearer sk-rerank"
    assert rerank["model"] == str(tiny_reranker_path)
    assert rerank["query"] == f"{RERANK_PREFIX}<Instruct>: {DEFAULT_RERANK_INSTRUCTION}\n<Query>: Where is data?\n"
    assert rerank["documents"] == [f"<Document>: Passage one.{RERANK_SUFFIX}"]
    # Repeated questions and pairs hit the clients' caches, like the in-process models'.
    embedder.embed_query("Where is data?")
    reranker.score("Where is data?", ["Passage one."])
    assert len(fake_model_server.requests) == 4


def test_a_reranker_without_the_qwen3_template_gets_the_raw_texts(fake_model_server, tiny_reranker_path):
    reranker = remote_reranker(fake_model_server, tiny_reranker_path, template="none")
    reranker.score("q?", ["d."])
    assert fake_model_server.requests[-1][1]["query"] == "q?"
    assert fake_model_server.requests[-1][1]["documents"] == ["d."]


def test_5xx_and_429_are_retried_honouring_retry_after(fake_model_server, tiny_embedder_path, tiny_reranker_path):
    embedder = remote_embedder(fake_model_server, tiny_embedder_path, max_retries=2)
    fake_model_server.fail(503, times=2)
    assert embedder.embed_documents(["Passage."]).shape == (1, embedder.dimension)
    assert fake_model_server.paths()[-3:] == ["/v1/embeddings"] * 3

    reranker = remote_reranker(fake_model_server, tiny_reranker_path, max_retries=1)
    fake_model_server.fail(429, retry_after=1)
    started = time.monotonic()
    assert len(reranker.score("q?", ["d."])) == 1
    assert time.monotonic() - started >= 1.0


def test_a_server_that_keeps_failing_is_a_clear_unavailable_error(fake_model_server, tiny_embedder_path, tiny_reranker_path):
    embedder = remote_embedder(fake_model_server, tiny_embedder_path, max_retries=2)
    before = len(fake_model_server.requests)
    fake_model_server.fail(503, times=3)
    with pytest.raises(ModelServerUnavailableError) as raised:
        embedder.embed_query("Where is data?")
    assert len(fake_model_server.requests) - before == 3
    message = str(raised.value)
    assert message == ("The embedding model server is unavailable right now (it answered HTTP 503, 3 attempts); "
                       "please try again in a few minutes.")
    assert "127.0.0.1" not in message  # a person reads it in Slack

    reranker = remote_reranker(fake_model_server, tiny_reranker_path, max_retries=1, timeout=0.5)
    fake_model_server.hang(2, times=2)
    with pytest.raises(ModelServerUnavailableError, match="reranker model server is unavailable.*did not answer in time"):
        reranker.score("q?", ["d."])

    fake_model_server.garbage()
    with pytest.raises(ModelServerError, match="unreadable response"):
        reranker.score("another q?", ["d."])


def test_an_unreachable_server_fails_at_start_in_one_line(tiny_embedder_path):
    with pytest.raises(ModelServerUnavailableError, match="could not be reached"):
        RemoteEmbedder(model=str(tiny_embedder_path), base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=2)


def test_a_model_the_server_does_not_serve_is_refused_at_start(fake_model_server):
    with pytest.raises(ModelLoadError, match="does not serve 'Qwen/Qwen3-Embedding-8B'.*EMBEDDING_MODEL"):
        RemoteEmbedder(model="Qwen/Qwen3-Embedding-8B", base_url=fake_model_server.base_url)


def test_an_index_from_another_model_is_refused_with_the_stores_message(make_kb, tiny_embedder_path, minilm_path):
    """The index records model name and dimension; a server making other vectors is refused as
    the in-process model would be."""
    from knowledge.model_servers import RemoteEmbedder as _Remote  # noqa: F401 (import is the point)
    from tests.fixtures.model_server_fake import FakeModelServer

    built = make_kb(reranker=False, api_key="")
    settings = built.settings
    built.close()
    from tests.fixtures.milvus import release_lite

    release_lite(settings.milvus_target)
    # Same name, other weights: MiniLM's 384 dimensions against the index's 64.
    server = FakeModelServer(embedder=minilm_path, embedder_name=str(tiny_embedder_path))
    try:
        kb = make_kb(reranker=False, api_key="", refresh=False, embedding_base_url=server.base_url,
                     data_dir=settings.data_dir, milvus_uri=settings.milvus_uri)
        expected = (f"The index holds 64-dimensional vectors but the embedding model makes 384; "
                    "rebuild the index with `supportbot index --rebuild`.")
        assert kb.store.mismatch == expected
        with pytest.raises(DimensionMismatchError) as raised:
            kb.ask("How is data stored?")
        assert str(raised.value) == expected
    finally:
        server.close()


def test_an_index_built_in_process_serves_the_same_model_on_a_server(make_kb, fake_model_server):
    from tests.fixtures.milvus import release_lite

    built = make_kb(api_key="")
    local = built.ask("How is data stored in Milvus?")
    settings = built.settings
    built.close()
    release_lite(settings.milvus_target)
    kb = make_kb(api_key="", refresh=False, data_dir=settings.data_dir, milvus_uri=settings.milvus_uri,
                 embedding_base_url=fake_model_server.base_url, reranker_base_url=fake_model_server.base_url)
    assert kb.store.mismatch == ""
    remote = kb.ask("How is data stored in Milvus?")
    assert [c.chunk.id for c in remote.passages] == [c.chunk.id for c in local.passages]
    np.testing.assert_allclose([c.rerank_score for c in remote.passages],
                               [c.rerank_score for c in local.passages], atol=1e-4)


def test_the_knowledge_base_says_when_the_embedding_server_is_down(make_kb, fake_model_server):
    kb = make_kb(embedding_base_url=fake_model_server.base_url, reranker_base_url=fake_model_server.base_url,
                 model_server_max_retries=1)
    fake_model_server.fail(502, times=2)
    with pytest.raises(ModelServerUnavailableError, match="^The embedding model server is unavailable"):
        kb.ask("How is data stored in Milvus?")
    assert kb.ask("How is data stored in Milvus?").status == "answered"  # back by itself


def test_a_reranker_server_that_is_down_costs_the_order_not_the_answer(make_kb, fake_model_server,
                                                                      tiny_reranker_path):
    rerank_server = FakeModelServer(reranker=tiny_reranker_path)
    try:
        kb = make_kb(embedding_base_url=fake_model_server.base_url, reranker_base_url=rerank_server.base_url,
                     model_server_max_retries=1, answer_budget_ms=0)
        rerank_server.fail(502, times=2)
        answer = kb.ask("How is data stored in Milvus?")
        assert answer.status == "answered" and answer.passages
        assert answer.rerank["strategy"] == "failed" and "reranker model server is unavailable" in answer.rerank["reason"]
        assert all(c.rerank_score is None for c in answer.passages)
        again = kb.ask("Where does Milvus keep its metadata?")  # the server is back: reranked again
        assert again.rerank["strategy"] == "whole" and all(c.rerank_score is not None for c in again.passages)
    finally:
        rerank_server.close()


_CLIENT_SCRIPT = textwrap.dedent("""
    import json, sys
    from bot.cli import main
    index = main(["index", "--json"])
    ask = main(["ask", "How is data stored in Milvus?", "--json"])
    heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)
    print("RESULT " + json.dumps({"index": index, "ask": ask, "heavy": heavy}))
""")


def test_supportbot_answers_through_model_servers_without_importing_torch(
    fake_model_server, fake_openai, small_corpus, tmp_path, tiny_embedder_path, tiny_reranker_path
):
    env = {
        **{k: v for k, v in os.environ.items() if not k.endswith(("_BASE_URL", "_API_KEY"))},
        "PYTHONPATH": str(ROOT),
        "KNOWLEDGE_SOURCES": str(small_corpus),
        "DATA_DIR": str(tmp_path / "data"),
        "MILVUS_URI": "",
        "EMBEDDING_MODEL": str(tiny_embedder_path),
        "EMBEDDING_BASE_URL": fake_model_server.base_url,
        "RERANKER_MODEL": str(tiny_reranker_path),
        "RERANKER_BASE_URL": fake_model_server.base_url,
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "DOCS_BASE_URL": "https://docs.example/{stem}#{anchor}",
    }
    result = subprocess.run([sys.executable, "-c", _CLIENT_SCRIPT], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    marker = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    outcome = json.loads(marker.removeprefix("RESULT "))
    assert outcome == {"index": 0, "ask": 0, "heavy": []}
    answer = json.loads(result.stdout[result.stdout.index("{\n  \"question\""):result.stdout.index("RESULT ")])
    assert answer["status"] == "answered" and answer["citations"]
    paths = fake_model_server.paths()
    assert "/v1/embeddings" in paths and "/v1/rerank" in paths


def test_bench_remote_row_measures_a_process_without_torch(fake_model_server, small_corpus, tmp_path,
                                                            tiny_embedder_path, tiny_reranker_path):
    from benchmarks.bench import format_remote_report, run_remote_bench
    from knowledge.errors import KnowledgeError
    from knowledge.settings import KnowledgeSettings

    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS), encoding="utf-8")
    settings = KnowledgeSettings(
        _env_file=None, embedding_model=str(tiny_embedder_path), reranker_model=str(tiny_reranker_path),
        embedding_base_url=fake_model_server.base_url, reranker_base_url=fake_model_server.base_url,
        data_dir=tmp_path / "data",
    )
    result = run_remote_bench(settings=settings, corpus=small_corpus, questions=questions)
    assert result["torch_imported"] is False
    assert result["corpus"]["chunks"] > 5 and result["answer_ready"]["questions"] == len(QUESTIONS) - 1
    assert 0 < result["answer_ready"]["p50_ms"] and 50 < result["peak_rss_mb"] < 800
    assert "/v1/rerank" in fake_model_server.paths()  # the child really went through the server
    assert "peak RSS" in format_remote_report(result)

    with pytest.raises(KnowledgeError, match="EMBEDDING_BASE_URL"):
        run_remote_bench(settings=settings.model_copy(update={"reranker_base_url": ""}), corpus=small_corpus,
                         questions=questions)


def test_a_server_that_keeps_failing_is_paused_then_probed(fake_model_server, tiny_reranker_path):
    from knowledge.breaker import CircuitBreaker

    breaker = CircuitBreaker(name="The reranker model server", failure_threshold=2, cooldown=0.5)
    reranker = remote_reranker(fake_model_server, tiny_reranker_path, max_retries=0, breaker=breaker)
    fake_model_server.fail(503, times=2)
    for question in ("one?", "two?"):
        with pytest.raises(ModelServerUnavailableError, match="answered HTTP 503"):
            reranker.score(question, ["d."])
    seen = len(fake_model_server.requests)
    with pytest.raises(ModelServerUnavailableError, match="paused after repeated failures"):
        reranker.score("three?", ["d."])
    assert len(fake_model_server.requests) == seen  # answered at once, the server left alone
    time.sleep(0.6)
    assert len(reranker.score("four?", ["d."])) == 1  # the probe succeeds and closes the breaker
    assert breaker.state == "closed"
    # A refusal (the server answered) does not count as the server failing.
    fake_model_server.fail(400, times=3)
    for question in ("five?", "six?", "seven?"):
        with pytest.raises(ModelServerError, match="refused the request"):
            reranker.score(question, ["d."])
    assert breaker.state == "closed"


def test_a_long_question_is_cut_to_its_head_and_tail_as_in_process(
    fake_model_server, tiny_embedder, tiny_reranker, tiny_embedder_path, tiny_reranker_path
):
    question = "Why does this fail? " + "Traceback line in module store.py " * 150 + "ValueError: dim mismatch"
    embedder = remote_embedder(fake_model_server, tiny_embedder_path)
    np.testing.assert_allclose(embedder.embed_query(question), tiny_embedder.embed_query(question), atol=1e-4)
    reranker = remote_reranker(fake_model_server, tiny_reranker_path)
    np.testing.assert_allclose(reranker.score(question, DOCUMENTS),
                               tiny_reranker.score(question, DOCUMENTS, use_cache=False), atol=1e-4)
