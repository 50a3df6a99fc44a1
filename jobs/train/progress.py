"""Progress within an epoch: a log line every few seconds with the share done and the throughput.

Log lines (not a terminal bar) so that the same progress shows in a terminal,
in a Prefect run's logs and in a scheduled deployment's logs.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("jobs.train")


class Progress:
    def __init__(self, label: str, total: int, unit: str, every_seconds: float = 10.0):
        self.label, self.total, self.unit, self.every = label, max(total, 1), unit, every_seconds
        self.done = 0
        self.started = self.last = time.perf_counter()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            log.info("%s: %3.0f%%  %s %s/s", self.label, 100 * min(self.done / self.total, 1.0), _si(rate), self.unit)

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.started, 1e-9)


def _si(value: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.2f}{suffix}"
    return f"{value:.0f}"
