"""SIGINT and SIGTERM stop a run where it stands, except a publish past its commit point.

Python turns SIGINT into KeyboardInterrupt; ``install`` makes SIGTERM (what a
scheduler or ``kill`` sends) raise ``Terminated``, a KeyboardInterrupt, so both
unwind the same way: training stops at the next step, a publish before its
pointer switch removes its staging file and leaves the current version as it
was, ``finally`` blocks and atexit hooks run (children stop with them), and the
CLI exits 130 or 143. Inside ``deferred`` a signal waits until the block ends:
a publish that has switched its pointer writes its event and current.sql first.

Handlers can only be installed from the main thread; elsewhere both are no-ops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM was received: stop like Ctrl-C does."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[int] = []
_wakeup: list[int] = []  # the read end of the pipe the interpreter writes each signal's number to


def _stop(signum, frame) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> None:
    """SIGINT raises KeyboardInterrupt and SIGTERM Terminated in the main thread, and every signal is
    remembered: a flow engine may swap in its own SIGTERM handler (Prefect does), and an exception raised
    inside a Spark call can surface as another error, yet ``received`` still knows what stopped the run."""
    if not _main_thread():
        return
    for s in STOP_SIGNALS:
        signal.signal(s, _stop)
    if not _wakeup:
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        _wakeup.append(read)


def received() -> int | None:
    """The first stop signal this process received since ``install``, if any."""
    while _wakeup:
        try:
            numbers = os.read(_wakeup[0], 512)
        except BlockingIOError:
            break
        if not numbers:
            break
        _received.extend(n for n in numbers if n in STOP_SIGNALS)
    return _received[0] if _received else None


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


@contextlib.contextmanager
def deferred(what: str) -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver the first one to the previous handler."""
    if not _main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum, frame) -> None:
        if not received:
            log.warning("%s received: finishing %s first", signal.Signals(signum).name, what)
        received.append(signum)

    previous = {s: signal.signal(s, hold) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if received:
            signal.raise_signal(received[0])
