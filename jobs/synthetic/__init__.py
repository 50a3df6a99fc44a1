"""Deterministic synthetic inputs with planted structure, for the demo, tests and benchmarks.

The generators own their settings (jobs.synthetic.config). The index stage
(jobs.stages) calls ``materialise`` to write the input file before the index job
reads it, so the index job only ever reads files.
"""

from __future__ import annotations

from pathlib import Path


def materialise(settings, inputs_dir: Path) -> Path:
    """The input file ``settings`` (a SyntheticRatings or SyntheticEvents) describe, written under ``inputs_dir``
    once (named by the settings' hash) with its planted truth beside it."""
    if settings.kind == "events":
        from jobs.synthetic.events import materialise as write
    else:
        from jobs.synthetic.ratings import materialise as write
    return write(settings, inputs_dir)
