"""Atomic file operations: a reader sees the old artifact or the new one, never half.

File modes honour the umask like any ``open()``: 0666 & ~umask for a file, 0777 & ~umask for a directory,
and 0444 & ~umask for a file that must never change in place (version files, pointers). A read-only file
can still be replaced (os.replace) or deleted: both need write permission on its directory, not on it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

FILE_MODE = 0o666
READ_ONLY_MODE = 0o444
DIR_MODE = 0o777


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """The process umask (read without changing it where /proc allows; os.umask has no getter)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)  # elsewhere: set and restore
    os.umask(current)
    return current


def honouring_umask(mode: int) -> int:
    return mode & ~umask()


def make_read_only(path: Path) -> None:
    """Drop every write bit of a finished file (0444 & ~umask): no accidental in-place change."""
    os.chmod(path, honouring_umask(READ_ONLY_MODE))


def atomic_write_text(path: Path, text: str, read_only: bool = False) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and os.replace; the file gets
    0666 & ~umask (``read_only``: 0444 & ~umask), not mkstemp's 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, honouring_umask(READ_ONLY_MODE if read_only else FILE_MODE))
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, payload: object, read_only: bool = False) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", read_only)


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
    """A fresh, empty directory under the store's tmp/ (same filesystem as the target), 0777 & ~umask
    (not mkdtemp's 0700): it becomes a published directory that other users read."""
    tmp_root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=tmp_root, prefix=f"{prefix}-"))
    os.chmod(path, honouring_umask(DIR_MODE))
    return path
