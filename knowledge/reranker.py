"""Qwen3-Reranker scoring: P("yes") that a passage answers the query, as the model card computes it.

The prompt, truncation and yes/no softmax follow the model card exactly
(`reference_scores` is its code, kept for tests and the benchmark). The fast
path differs only in how much it computes: the final hidden state of the last
position through the two LM-head rows for "no" and "yes" (not 151k-word logits
at every position), on length-sorted batches so little is spent on padding.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence

import torch

from knowledge.errors import ModelLoadError
# The prompt lives in a torch-free module: the model-server client formats the same text.
from knowledge.model_prompts import RERANK_PREFIX as PREFIX
from knowledge.model_prompts import RERANK_SUFFIX as SUFFIX
from knowledge.model_prompts import format_pair
from knowledge.prefix_cache import PrefixCache, last_hidden
from knowledge.score_cache import ScoreCache
from knowledge.token_cap import keep_head_and_tail
from knowledge.runtime import (
    choose_device,
    choose_dtype,
    first_line,
    limit_malloc_arenas,
    model_call,
    quantize_linear_int8,
    release_free_memory,
    resolve_model_source,
)

SCORE_CACHE_SIZE = 4096
MIN_SHARED_PREFIX = 8  # shorter shared prefixes are not worth a separate forward pass
# Of RERANK_MAX_TOKENS, at least this share is always left for the document: a long question
# (a pasted stack trace) is cut to its head and tail instead of crowding every document out.
MIN_DOCUMENT_SHARE = 0.5
MIN_QUERY_TOKENS = 16  # a query is never cut below this, even when max_tokens is tiny
_SEAM_SLACK = 4  # tokens re-tokenizing a head + " … " + tail may add


@torch.no_grad()
def reference_scores(model, tokenizer, query: str, docs: Sequence[str], instruction: str, max_length: int) -> list[float]:
    """The model card's scoring, unchanged: full logits for the whole batch, P(yes) at the last position."""
    prefix_tokens = tokenizer.encode(PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(SUFFIX, add_special_tokens=False)
    pairs = [format_pair(instruction, query, doc) for doc in docs]
    inputs = tokenizer(
        pairs,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
    )
    for i, ele in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
    with warnings.catch_warnings():  # the card passes max_length to pad(), which ignores it and says so
        warnings.simplefilter("ignore", UserWarning)
        inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
    for key in inputs:
        inputs[key] = inputs[key].to(model.device)
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    batch_scores = model(**inputs).logits[:, -1, :]
    true_vector = batch_scores[:, token_true_id]
    false_vector = batch_scores[:, token_false_id]
    batch_scores = torch.stack([false_vector, true_vector], dim=1)
    batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
    return batch_scores[:, 1].exp().tolist()


class Reranker:
    """Scores passages against a query with a Qwen3 reranker; safe to call from several threads."""

    def __init__(
        self,
        *,
        model: str,
        instruction: str,
        max_tokens: int,
        batch_size: int,
        device: str = "auto",
        dtype: str = "auto",
        cache_size: int = SCORE_CACHE_SIZE,
        int8: bool = False,
    ) -> None:
        """Load tokenizer and model once. `max_tokens` bounds the whole model input, as the model
        card's max_length does (the document, last in the prompt, is what gets cut); a query
        longer than leaves MIN_DOCUMENT_SHARE of it to the document keeps its head and tail.

        `int8` (CPU only) swaps the model's linear layers for int8 ones after loading it in float32.

        Raises ModelLoadError (one line) when the model is missing, broken or not a yes/no reranker,
        or int8 is asked for on another device or with a 16-bit DTYPE.
        """
        limit_malloc_arenas()  # before any worker thread calls the model (see runtime)
        self.model_id = model.strip()
        self.instruction = instruction
        self.max_tokens = max_tokens
        self.batch_size = max(1, batch_size)
        self.device = choose_device(device)
        if int8 and self.device.type != "cpu":
            raise ModelLoadError(f"RERANKER_INT8 runs on the CPU only; DEVICE is {self.device.type}.")
        # int8 weights are made from float32 ones (`auto` would pick bfloat16 on an AMX CPU).
        self.dtype = choose_dtype("float32" if int8 and dtype == "auto" else dtype, device=self.device)
        source = resolve_model_source(model, role="Reranker model", setting="RERANKER_MODEL")
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(source, padding_side="left", local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(source, dtype=self.dtype, local_files_only=True)
        except Exception as error:  # missing weights, bad config, unknown architecture
            raise ModelLoadError(f"Reranker model {self.model_id!r} could not be loaded: {first_line(error)}") from error
        self.model.to(self.device).eval()
        self._no_id, self._yes_id = self._answer_token_ids()
        # Only the transformer body runs (the answer rows below replace the LM head).
        self.int8 = bool(int8) and quantize_linear_int8(self.model.base_model) > 0
        if int8:
            release_free_memory()  # the float32 weights just replaced
        self._prefix_ids = self.tokenizer.encode(PREFIX, add_special_tokens=False)
        self._suffix_ids = self.tokenizer.encode(SUFFIX, add_special_tokens=False)
        self._body_budget = max_tokens - len(self._prefix_ids) - len(self._suffix_ids)
        if self._body_budget < 8:
            raise ModelLoadError(f"RERANK_MAX_TOKENS={max_tokens} leaves no room for the query and document.")
        pair_overhead = len(self.tokenizer.encode(format_pair(instruction, "", ""), add_special_tokens=False))
        self.query_max_tokens = max(
            MIN_QUERY_TOKENS,
            self._body_budget - pair_overhead - int(MIN_DOCUMENT_SHARE * max_tokens) - _SEAM_SLACK,
        )
        # The two LM-head rows that matter, as float32: logits for "no" and "yes" from the last hidden state.
        head = self.model.get_output_embeddings().weight
        self._answer_rows = head[[self._no_id, self._yes_id]].detach().float()
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._lock = threading.Lock()
        self._cache = ScoreCache(size=cache_size)
        # System prompt and instruction are the same tokens for every question: their keys/values are
        # computed once here, and each question runs only its own words after them.
        self._fixed = self._fixed_prefix()
        # What the latency budget (knowledge/rerank_budget) counts beside the texts it sends.
        self.question_overhead_tokens = 0 if self._fixed is not None else len(self._prefix_ids) + pair_overhead
        self.document_overhead_tokens = len(self._suffix_ids)
        self.forward_calls = 0  # model forward passes, the shared prefix included (tests read it)
        self.prefix_tokens_run = 0  # tokens run for questions' shared prompt starts (tests read it)

    def score(self, query: str, documents: Sequence[str], *, use_cache: bool = True) -> list[float]:
        """P("yes") for each document, in input order; repeated (query, document) pairs hit a cache
        (`use_cache=False` always runs the model and leaves the cache alone: tests compare
        batched and single scoring with it)."""
        if not documents:
            return []
        if not use_cache:
            return self._score_uncached(query, documents)
        return self._cache.scores(query, documents, self._score_uncached)

    def warm_up(self) -> None:
        """Score one short pair (bypassing the cache) so the first real question is not slow."""
        self._score_uncached("How do I get started?", ["Install the package, then run it."])

    def model_inputs(self, query: str, documents: Sequence[str]) -> list[list[int]]:
        """The token ids the model reads for each (query, document) pair: prompt, capped query,
        document cut to what is left of max_tokens."""
        with self._lock:
            return self._sequences(query, documents)

    def _sequences(self, query: str, documents: Sequence[str]) -> list[list[int]]:
        query = keep_head_and_tail(
            query,
            limit=self.query_max_tokens,
            encode=lambda text: self.tokenizer.encode(text, add_special_tokens=False),
            decode=self.tokenizer.decode,
        )
        encoded = self.tokenizer(
            [format_pair(self.instruction, query, doc) for doc in documents],
            add_special_tokens=False,
            truncation=True,
            max_length=self._body_budget,
        )["input_ids"]
        return [self._prefix_ids + ids + self._suffix_ids for ids in encoded]

    def _score_uncached(self, query: str, documents: Sequence[str]) -> list[float]:
        with self._lock:  # the tokenizer only: two questions' forward passes may run side by side
            sequences = self._sequences(query, documents)
        # System prompt, instruction and query are the same tokens in every sequence: run them once
        # (the fixed part of them once for all questions) and let each batch attend to their keys/values.
        shared = _common_prefix_length(sequences)
        prefix_cache = self._prefix_cache(sequences[0][:shared]) if shared >= MIN_SHARED_PREFIX else None
        if prefix_cache is None:
            shared = 0
        # Longest first, so each batch holds similar lengths and the first batch shows peak memory.
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
        scores = [0.0] * len(sequences)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            tails = [sequences[i][shared:] for i in batch]
            for index, value in zip(batch, self._score_batch(tails, prefix_cache)):
                scores[index] = value
        release_free_memory()  # the batches' activations, or the process keeps them as RSS
        return scores

    def _prefix_cache(self, prefix: list[int]) -> PrefixCache:
        """The keys/values of the prompt up to the documents: past the fixed part when it fits."""
        fixed = self._fixed
        after = fixed if fixed is not None and len(prefix) > fixed.length and prefix[: fixed.length] == fixed.ids else None
        self.forward_calls += 1
        with model_call():
            cache = PrefixCache(model=self.model.base_model, prefix=prefix, device=self.device, after=after)
        self.prefix_tokens_run += cache.ran
        return cache

    def _fixed_prefix(self) -> PrefixCache | None:
        """The tokens every question's prompt starts with (system prompt, instruction, query label),
        run once; None when too short to be worth it."""
        probes = [
            self._prefix_ids + self.tokenizer.encode(format_pair(self.instruction, query, "x"), add_special_tokens=False)
            for query in ("alpha", "Zulu 9?")
        ]
        # One token of slack: the label's last token may merge with a question's first word.
        length = _common_prefix_length(probes) - 1
        if length < MIN_SHARED_PREFIX:
            return None
        with model_call():
            return PrefixCache(model=self.model.base_model, prefix=probes[0][:length], device=self.device)

    def _score_batch(self, tails: list[list[int]], prefix_cache: PrefixCache | None) -> list[float]:
        """P(yes) for token sequences that continue the cached shared prefix (or stand alone)."""
        self.forward_calls += 1
        with model_call():  # per batch: another question's embedding can run between batches
            hidden = last_hidden(self.model.base_model, tails, pad_id=self._pad_id, device=self.device,
                                 prefix=prefix_cache)
        logits = hidden.float() @ self._answer_rows.T  # (rows, 2): [no, yes]
        return torch.softmax(logits, dim=-1)[:, 1].tolist()

    def _answer_token_ids(self) -> tuple[int, int]:
        ids = []
        for word in ("no", "yes"):
            token_id = self.tokenizer.convert_tokens_to_ids(word)
            if token_id is None or token_id == self.tokenizer.unk_token_id:
                raise ModelLoadError(f"Reranker model {self.model_id!r} has no single token for {word!r}.")
            ids.append(int(token_id))
        return ids[0], ids[1]


def _common_prefix_length(sequences: list[list[int]]) -> int:
    """Tokens all sequences begin with, leaving at least the last token of the shortest to run."""
    limit = min(len(ids) for ids in sequences) - 1
    first = sequences[0]
    length = 0
    while length < limit and all(ids[length] == first[length] for ids in sequences):
        length += 1
    return length

