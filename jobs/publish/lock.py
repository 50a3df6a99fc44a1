"""One writer per store: an exclusive flock on <store>/.writer.lock (see jobs.common.locks)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from jobs.common.locks import exclusive


@contextlib.contextmanager
def writer_lock(path: Path, timeout: float | None) -> Iterator[None]:
    """Hold the store's writer lock; wait up to ``timeout`` seconds (None: as long as the holder works),
    saying who holds it, then fail naming the holder."""
    with exclusive(path, timeout, f"store {path.parent} (a publish, rollback or repair)"):
        yield
