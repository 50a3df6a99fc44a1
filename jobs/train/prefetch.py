"""Build the next batches on a host thread while the current step runs.

Batch preparation (shuffling, finding a batch's rows, cutting implicit-feedback
bags) is numpy work that releases the GIL, so it overlaps the step: fully on a
GPU, and partly on CPU cores torch leaves idle. Order is kept (one producer),
so training stays deterministic.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")
_DONE = object()


def prefetched(items: Iterable[T], prepare: Callable[[T], U], depth: int = 2) -> Iterator[U]:
    """``prepare(item)`` for each item, computed up to ``depth`` items ahead on a daemon thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                ready.put(prepare(item))
            ready.put(_DONE)
        except BaseException as error:  # re-raised in the consumer
            ready.put(error)

    worker = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    worker.start()
    try:
        while (value := ready.get()) is not _DONE:
            if isinstance(value, BaseException):
                raise value
            yield value
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()
