"""Run test callables in threads of their own and hand back what they raised."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence


def run_concurrently(targets: Sequence[Callable[[], object]], *, timeout: float = 120) -> list[BaseException]:
    """Start one thread per target, wait for all (at most `timeout` each); the errors raised."""
    errors: list[BaseException] = []

    def run(target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as error:  # returned to the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    return errors
