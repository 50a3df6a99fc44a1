"""Staging directories under the store's tmp/ that a later run can tell are abandoned.

A stage builds its output in ``tmp/<prefix>-XXXX/`` and renames it into place.
The builder holds an flock on ``tmp/<prefix>-XXXX.owner`` while it works; a
process killed with SIGKILL cannot clean up, but the kernel drops its lock, so
the next run's ``sweep`` removes every staging directory nobody holds. A live
builder's directory (another process indexing right now) is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from jobs.common.files import staging_dir
from jobs.common.locks import exclusive, is_held

log = logging.getLogger(__name__)
_OWNER = ".owner"


@contextlib.contextmanager
def owned_staging_dir(tmp_root: Path, prefix: str) -> Iterator[Path]:
    """A fresh directory under ``tmp_root`` (the target's filesystem), owned while the block runs;
    removed when the block raises (the caller renames it away on success)."""
    staging = staging_dir(tmp_root, prefix)
    owner = staging.with_name(staging.name + _OWNER)
    try:
        with exclusive(owner, 0, f"staging directory {staging}"):
            yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        owner.unlink(missing_ok=True)


def sweep(tmp_root: Path, prefix: str) -> list[str]:
    """Remove ``prefix-*`` staging directories whose builder is gone; returns their names."""
    removed = []
    for staging in sorted(tmp_root.glob(f"{prefix}-*")) if tmp_root.is_dir() else []:
        if not staging.is_dir():
            continue
        owner = staging.with_name(staging.name + _OWNER)
        if is_held(owner):
            continue
        shutil.rmtree(staging, ignore_errors=True)
        owner.unlink(missing_ok=True)
        removed.append(staging.name)
        log.info("removed %s, left by a run that was killed", staging)
    return removed
