"""A bounded worker pool: answers run off the Slack event thread, with a cap on waiting work."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

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
        self._idle = threading.Condition(self._lock)  # notified when the last pending job is done
        self._pending: set[Future] = set()  # submitted and not yet done, for drain() and wait_idle()
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
        # Runs after the future is marked done (waiters on the future may already be awake):
        # the slot is released under the lock, so wait_idle() never returns before submit() can succeed.
        with self._idle:
            self._pending.discard(future)
            self._slots.release()
            if not self._pending:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` s until no job runs or waits (every slot free again); True when idle."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout=timeout)

    def drain(self, timeout: float) -> bool:
        """Refuse new jobs and wait up to `timeout` s for the submitted ones; True when all finished."""
        with self._lock:
            self._draining = True
        if self.wait_idle(timeout):
            return True
        with self._lock:
            running = len(self._pending)
        log.warning("%d answers still running after %.0f s; stopping anyway", running, timeout)
        return False

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
