"""Atomic file operations: a reader sees the old artifact or the new one, never half."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, payload: object) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict:
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def publish_dir(staging: Path, final: Path) -> bool:
    """Move a finished staging directory into place with one rename.

    Returns False (and removes the staging copy) when ``final`` already exists:
    another process built the same immutable artifact first, which is fine.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staging, final)
    except OSError:
        if final.exists():
            shutil.rmtree(staging, ignore_errors=True)
            return False
        raise
    _fsync_dir(final.parent)
    return True


def staging_dir(tmp_root: Path, prefix: str) -> Path:
    """A fresh, empty directory under the store's tmp/ (same filesystem as the target)."""
    tmp_root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=tmp_root, prefix=f"{prefix}-"))
