"""The code version recorded in every artifact and hashed into run ids."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
# The packages whose source decides what a run produces.
_SOURCE_PACKAGES = ("jobs", "schemas")


@functools.cache
def code_version() -> str:
    """``<package version>+<hash of the jobs/ and schemas/ sources>``.

    Hashing the sources (not a git sha) makes the id exact for uncommitted
    work too, and identical for two checkouts of the same code.
    """
    try:
        release = metadata.version("latentstore")
    except metadata.PackageNotFoundError:
        release = "0+unknown"
    digest = hashlib.sha256()
    for package in _SOURCE_PACKAGES:
        for path in sorted((_ROOT / package).rglob("*.py")):
            digest.update(path.relative_to(_ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return f"{release}+{digest.hexdigest()[:12]}"


@functools.cache
def git_commit() -> str | None:
    """The checkout's commit, for humans reading the registry; None outside git."""
    try:
        out = subprocess.run(
            ["git", "-C", str(_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
