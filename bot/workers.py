"""A bounded worker pool: answers run off the Slack event thread, with a cap on waiting work."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

log = logging.getLogger(__name__)


class WorkerPool:
    """`workers` threads and at most `queue_size` waiting jobs; `submit` never blocks."""

    def __init__(self, *, workers: int, queue_size: int) -> None:
        if workers < 1 or queue_size < 0:
            raise ValueError("workers must be >= 1 and queue_size >= 0")
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="answer")
        # One permit per running or waiting job: a full pool refuses instead of queueing forever.
        self._slots = threading.BoundedSemaphore(workers + queue_size)
        self._lock = threading.Lock()
        self._pending: set[Future] = set()  # submitted and not yet done, for drain()
        self._draining = False

    def submit(self, fn: Callable[..., object], /, *args, **kwargs) -> Future | None:
        """Run fn(*args, **kwargs) on a worker; None when the pool is full (caller says "busy")."""
        with self._lock:
            if self._draining or not self._slots.acquire(blocking=False):
                return None
            try:
                future = self._executor.submit(self._run, fn, args, kwargs)
            except RuntimeError:  # shut down
                self._slots.release()
                return None
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)
        self._slots.release()

    def drain(self, timeout: float) -> bool:
        """Refuse new jobs and wait up to `timeout` s for the submitted ones; True when all finished."""
        with self._lock:
            self._draining = True
            pending = set(self._pending)
        done, not_done = wait(pending, timeout=timeout)
        if not_done:
            log.warning("%d answers still running after %.0f s; stopping anyway", len(not_done), timeout)
        return not not_done

    @staticmethod
    def _run(fn: Callable[..., object], args: tuple, kwargs: dict) -> object:
        try:
            return fn(*args, **kwargs)
        except Exception:
            # Jobs handle their own errors; this only keeps a bug from vanishing silently.
            log.exception("worker job failed")
            raise

    def shutdown(self, *, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=not wait)
