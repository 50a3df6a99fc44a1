"""Fault hooks for tests: named pause points (crash tests kill a writer at an exact step) and one-off I/O errors.

With ``LATENTSTORE_PAUSE_AT=<step>`` in its environment, a process reaching that
step prints ``latentstore: paused at <step>`` to stderr and sleeps until it is
killed. Without the variable (production) a pause point does nothing.
"""

from __future__ import annotations

import os
import sys
import time

ENV = "LATENTSTORE_PAUSE_AT"


def pause_point(step: str) -> None:
    if os.environ.get(ENV) != step:
        return
    sys.stderr.write(f"latentstore: paused at {step}\n")
    sys.stderr.flush()
    while True:
        time.sleep(3600)


FAIL_ONCE_ENV = "LATENTSTORE_FAIL_ONCE_AT"


def transient_fault_point(step: str) -> None:
    """With ``LATENTSTORE_FAIL_ONCE_AT=<step>=<marker file>``, raise one OSError at ``step``.

    The marker file makes it once across retries and processes: the first
    process to create it fails, every later pass goes through (retry tests)."""
    spec = os.environ.get(FAIL_ONCE_ENV, "")
    name, _, marker = spec.partition("=")
    if name != step or not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    raise OSError(f"injected transient I/O error at {step}")
