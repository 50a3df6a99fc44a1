"""Stable content hashes: ids are hashes of what determines an artifact."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path



def stable_hash(payload: object, length: int = 16) -> str:
    """Hex digest of ``payload`` serialised as canonical JSON (sorted keys)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
