"""Retention: keep the newest N versions of a model; remove older files nobody can be using.

A version file is removed only when all of these hold:

- it is not the current version, nor among the newest ``keep`` versions;
- it stopped being current at least ``grace_seconds`` ago (a reader that read the
  old current.sql may still be about to open it);
- no process has it open: a DuckDB reader holds a shared lock on its file, so an
  exclusive non-blocking ``lockf`` fails while one is open. The lock is held while
  the file is unlinked, so no reader can open it in between.

A file still open is kept and retried on the next publish. Its registry record
stays (the registry is append-only); a ``removed`` event records the removal.
Runs under the store's writer lock. The open-file test sees other processes only:
POSIX record locks belong to a process, so a process that both reads the store and
publishes does not protect its own open readers (and closing any descriptor of a
file drops the process's locks on it); the grace period covers such readers, and the
publish job itself holds no connection to a version file when retention runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from jobs.common.faults import pause_point
from jobs.publish.registry import append_event
from jobs.store.registry import POINTER_EVENTS, current_version, events, non_current_since, version_files
from schemas.store import StoreLayout, version_name

log = logging.getLogger(__name__)


@contextlib.contextmanager
def exclusive_if_unused(path: Path):
    """Yield True holding an exclusive lock on ``path`` when no other process has it open, else False."""
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def apply(store: StoreLayout, model: str, keep: int | None, grace_seconds: float,
          history: list[dict] | None = None) -> dict[str, list[int]]:
    """Remove what retention allows now; returns the versions removed, kept open, and within the grace period.
    ``history``: the model's events, when the caller has them (read once: not once per version)."""
    outcome: dict[str, list[int]] = {"removed": [], "open": [], "grace": []}
    if keep is None:
        return outcome
    current = current_version(store, model)
    moves = [e for e in (events(store, model) if history is None else history) if e["event"] in POINTER_EVENTS]
    ever_current = {e["to_version"] for e in moves}
    files = [v for v in version_files(store, model) if v in ever_current]  # the folder: not every version ever
    protected = set(sorted(files)[-keep:]) | {current}  # never-current orphans are recovery's, not counted
    now = datetime.now(UTC)
    for version in sorted(set(files) - protected):
        since = non_current_since(moves, version)
        if since is None:
            continue
        if (now - since).total_seconds() < grace_seconds:
            outcome["grace"].append(version)
            continue
        path = store.version_file(model, version)
        with exclusive_if_unused(path) as free:
            if not free:
                log.info("retention: %s %s is open in another process; kept until a later publish",
                         model, version_name(version))
                outcome["open"].append(version)
                continue
            pause_point("retention:locked")
            path.unlink()
            Path(f"{path}.wal").unlink(missing_ok=True)
        append_event(store, model, "removed", version=version, details={"keep_versions": keep})
        log.info("retention: removed %s %s", model, version_name(version))
        outcome["removed"].append(version)
    return outcome
