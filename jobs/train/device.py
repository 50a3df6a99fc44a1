"""Device and thread selection: CUDA when present, else a bounded number of CPU threads."""

from __future__ import annotations

import os

import torch


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        from schemas.errors import ConfigError

        raise ConfigError(f"train.device = {requested!r} but no CUDA device is available")
    return device


def configure_threads(threads: int | None, processes: int = 1) -> int:
    """Set torch's intra-op threads. Runs are bitwise reproducible (and a resumed run equal to an
    uninterrupted one) with one thread; with more, row updates are summed in a thread-dependent order.

    By default each of the ``processes`` training on this machine gets its share of the cores (at most 8)."""
    count = threads or max(1, min((os.cpu_count() or 1) // max(processes, 1), 8))
    torch.set_num_threads(count)
    return count
