"""Forward passes that continue a shared token prefix, reading its cached keys and values.

A causal model's output after a prefix does not depend on what follows it, so the
tokens every input starts with (the reranker's system prompt and question, the
embedder's query instruction) can run once and be attended to from a KV cache.
Results equal full-sequence passes to float rounding (tests compare both).
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Sequence

import torch


class PrefixCache:
    """The keys and values of one token prefix, computed once by a transformers base model."""

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        prefix: Sequence[int],
        device: torch.device,
        after: PrefixCache | None = None,
    ) -> None:
        """Run `prefix` through `model` (the caller holds the model-call slot); with `after`, a
        cached beginning of `prefix`, only the tokens past it run.

        Raises ValueError when `after` is not a proper beginning of `prefix`.
        """
        self.ids = list(prefix)
        self.length = len(self.ids)
        start = 0
        cache_kwargs: dict = {}
        if after is not None:
            if self.ids[: after.length] != after.ids or self.length <= after.length:
                raise ValueError("`after` must be a proper beginning of the prefix")
            start = after.length
            cache_kwargs = {_cache_argument(model): after.for_rows(1)}
        self.ran = self.length - start  # tokens this cache's forward pass ran
        with torch.inference_mode():
            output = model(
                input_ids=torch.tensor([self.ids[start:]], dtype=torch.long, device=device),
                position_ids=torch.arange(start, self.length, device=device)[None],
                use_cache=True,
                **cache_kwargs,
            )
        self._cache = output.cache if hasattr(output, "cache") else output.past_key_values

    def for_rows(self, rows: int):
        """A copy for a batch of `rows` (each forward appends to the cache it is given)."""
        cache = copy.deepcopy(self._cache)
        cache.batch_repeat_interleave(rows)
        return cache


@torch.inference_mode()
def last_hidden(
    model: torch.nn.Module,
    tails: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device: torch.device,
    prefix: PrefixCache | None = None,
) -> torch.Tensor:
    """The final hidden state (rows, hidden) at each sequence's last token.

    `tails` continue `prefix` (or stand alone without one). Rows are right-padded, so every
    real token keeps the position it has unpadded. The caller holds the model-call slot.
    Raises ValueError for an empty sequence.
    """
    if any(len(ids) == 0 for ids in tails):
        raise ValueError("every sequence needs at least one token after the prefix")
    shared = prefix.length if prefix is not None else 0
    rows, width = len(tails), max(len(ids) for ids in tails)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, shared + width), dtype=torch.long)
    attention_mask[:, :shared] = 1
    for row, ids in enumerate(tails):
        input_ids[row, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[row, shared : shared + len(ids)] = 1
    cache = {}
    if prefix is not None:
        cache = {_cache_argument(model): prefix.for_rows(rows), "use_cache": True}
    hidden = model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=(torch.arange(width) + shared).expand(rows, -1).to(device),
        **(cache or {"use_cache": False}),
    ).last_hidden_state
    last = torch.tensor([len(ids) - 1 for ids in tails], device=hidden.device)
    return hidden[torch.arange(rows, device=hidden.device), last]


def _cache_argument(model: torch.nn.Module) -> str:
    return _cache_argument_of(type(model))


@functools.cache
def _cache_argument_of(model_class: type) -> str:
    # transformers 5 calls the KV cache argument `cache` (and warns on the old name); 4.x `past_key_values`.
    # Read once per model class: every batch of every question asks.
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"
