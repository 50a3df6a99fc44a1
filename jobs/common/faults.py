"""Named pause points, so that crash tests can kill a writer at an exact step.

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
