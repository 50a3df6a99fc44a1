"""Exclusive file locks that say who holds them: the store's writer lock, one trainer per run.

A lock is an ``flock`` on a small file that also records its holder (pid, host,
since, what). The kernel drops a flock when its process dies, so a killed
holder never leaves anything locked. A waiter logs, once and then every
``NOTICE_SECONDS``, who it is waiting for, and gives up after ``timeout``
seconds (None: waits as long as the holder works) with an error naming the
holder and the option that changes the wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from schemas.errors import StoreLockedError

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
NOTICE_SECONDS = 60.0
#: Named in every timeout message: the command-line option that changes the wait.
TIMEOUT_OPTION = "--lock-timeout"


@contextlib.contextmanager
def exclusive(path: Path, timeout: float | None, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` while the block runs; ``what`` says what it guards (for messages)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
    try:
        _acquire(fd, path, timeout, what)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(UTC).isoformat(),
                "what": what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _acquire(fd: int, path: Path, timeout: float | None, what: str) -> None:
    start = time.monotonic()
    next_notice = start
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            waited = time.monotonic() - start
            if timeout is not None and waited >= timeout:
                raise StoreLockedError(f"{what} is locked by {holder(path)}; gave up after {waited:.0f}s "
                                       f"({TIMEOUT_OPTION} SECONDS waits longer)") from None
            if time.monotonic() >= next_notice:
                limit = "as long as it runs" if timeout is None else f"up to {timeout:.0f}s"
                log.info("waiting for %s: locked by %s (waiting %s; %s changes this)", what, holder(path), limit,
                         TIMEOUT_OPTION)
                next_notice += NOTICE_SECONDS
            time.sleep(POLL_SECONDS)


def holder(path: Path) -> str:
    """Who holds the lock on ``path``, as its holder recorded it."""
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "another process (holder unknown)"


def is_held(path: Path) -> bool:
    """Whether a live process holds the lock on ``path`` (False when the file is absent)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
