"""Micro-batching: items queued while a batch runs go through together, each caller gets its own result."""

import threading
import time

import pytest

from knowledge.coalescing import Coalescer


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_one_caller_alone_is_a_batch_of_one():
    seen: list[list[int]] = []
    coalescer = Coalescer(run=lambda items: seen.append(items) or [i * 10 for i in items], max_batch=4)
    assert coalescer.submit(3) == 30
    assert seen == [[3]]


def test_callers_that_queue_behind_a_running_batch_share_the_next_one():
    started, release = threading.Event(), threading.Event()
    seen: list[list[int]] = []

    def run(items):
        seen.append(list(items))
        if items == [0]:  # the first batch holds the turn until released
            started.set()
            release.wait(10)
        return [i * 10 for i in items]

    coalescer = Coalescer(run=run, max_batch=3)
    results: dict[int, int] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, coalescer.submit(i))) for i in range(5)]
    threads[0].start()
    assert started.wait(10)
    for thread in threads[1:]:
        thread.start()
    _wait_for(lambda: coalescer.waiting == 4)
    release.set()
    for thread in threads:
        thread.join(10)
    assert results == {i: i * 10 for i in range(5)}
    assert seen[0] == [0]
    assert sorted(len(batch) for batch in seen[1:]) == [1, 3]  # max_batch caps a batch
    assert coalescer.batches == 3


def test_a_failing_batch_raises_in_every_caller_of_it_and_the_next_batch_still_runs():
    gate = threading.Lock()
    calls = []

    def run(items):
        calls.append(list(items))
        if -1 in items:
            raise ValueError("bad item")
        return list(items)

    coalescer = Coalescer(run=run, max_batch=8, gate=lambda: gate)
    errors: list[BaseException] = []

    def submit(item):
        try:
            coalescer.submit(item)
        except ValueError as error:
            errors.append(error)

    with gate:  # the gate is busy: both callers queue
        threads = [threading.Thread(target=submit, args=(item,)) for item in (-1, 2)]
        for thread in threads:
            thread.start()
        _wait_for(lambda: coalescer.waiting == 2)
    for thread in threads:
        thread.join(10)
    assert len(errors) == 2 and calls and sorted(calls[0]) == [-1, 2]
    assert coalescer.submit(5) == 5


def test_a_wrong_result_count_is_an_error_not_a_mismatch():
    coalescer = Coalescer(run=lambda items: [], max_batch=2)
    with pytest.raises(RuntimeError, match="returned 0 results"):
        coalescer.submit(1)
