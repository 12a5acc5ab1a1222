"""One model call for the questions that arrive together (leader/follower micro-batching).

On a CPU a question's embedding is a short forward pass that mostly streams the
model's weights from memory: two questions in one pass cost little more than one.
`Coalescer.submit` queues an item; whichever waiting thread gets the next turn takes
everything queued by then (up to `max_batch`) through one `run` call and hands each
caller its own result. Nobody waits for a timer: with one question in flight the
batch is that question, with several they share the passes they would have queued for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Slot(Generic[Item, Result]):
    __slots__ = ("item", "result", "error", "done")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.done = False


class Coalescer(Generic[Item, Result]):
    """Runs `run(items) -> results` (same length, same order) for items submitted from many threads."""

    def __init__(
        self,
        *,
        run: Callable[[list[Item]], Sequence[Result]],
        max_batch: int,
        gate: Callable[[], AbstractContextManager] | None = None,
    ) -> None:
        """`gate` (e.g. the process's model-call slot) is entered before the batch is taken,
        so whatever queues while the gate is busy rides along."""
        self._run = run
        self.max_batch = max(1, max_batch)
        self._gate = gate or nullcontext
        self._pending: list[_Slot[Item, Result]] = []
        self._pending_lock = threading.Lock()
        self._turn = threading.Lock()  # one batch at a time
        self.batches = 0  # `run` calls so far (tests and metrics read it)

    @property
    def waiting(self) -> int:
        """Items queued and not yet taken into a batch."""
        with self._pending_lock:
            return len(self._pending)

    def submit(self, item: Item) -> Result:
        """`run`'s result for `item`; raises what `run` raised for the batch that held it."""
        slot: _Slot[Item, Result] = _Slot(item)
        with self._pending_lock:
            self._pending.append(slot)
        while True:
            with self._turn:  # the lock orders the leader's writes before this read
                if slot.done:
                    break
                with self._gate():
                    with self._pending_lock:
                        batch = self._pending[: self.max_batch]
                        del self._pending[: self.max_batch]
                    self._run_batch(batch)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _run_batch(self, batch: list[_Slot[Item, Result]]) -> None:
        self.batches += 1
        try:
            results = list(self._run([slot.item for slot in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} returned {len(results)} results")
        except BaseException as error:  # noqa: BLE001 - handed to every caller of the batch
            for slot in batch:
                slot.error, slot.done = error, True
            return
        for slot, result in zip(batch, results):
            slot.result, slot.done = result, True
