"""The registry: append-only JSON records of versions and pointer changes, and the pointers.

Records are one file each, written atomically and never rewritten, so readers
(``versions`` in SQL, ``latentstore versions``) need no lock.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

from jobs.common.files import atomic_write_json, atomic_write_text, read_json
from schemas.errors import StoreError
from schemas.store import FORMAT_LINE, StoreLayout, version_name

_VERSION_FILE = re.compile(r"^v(\d{6,})\.(duckdb|json)$")


def ensure_format(store: StoreLayout) -> None:
    """Create the FORMAT file of a new store, or check an existing one's layout version."""
    if store.format_file.is_file():
        line = store.format_file.read_text().strip()
        if line != FORMAT_LINE.strip():
            raise StoreError(f"{store.format_file} says {line!r}; this latentstore reads {FORMAT_LINE.strip()!r}")
        return
    store.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(store.format_file, FORMAT_LINE)


def known_versions(store: StoreLayout, model: str) -> list[int]:
    """Every version number used by a file or a record (orphans included)."""
    numbers = set()
    for directory in (store.model_dir(model), store.registry_versions / model):
        if directory.is_dir():
            for path in directory.iterdir():
                match = _VERSION_FILE.match(path.name)
                if match:
                    numbers.add(int(match.group(1)))
    return sorted(numbers)


def version_records(store: StoreLayout, model: str | None = None) -> list[dict]:
    root = store.registry_versions
    pattern = f"{model}/v*.json" if model else "*/v*.json"
    return sorted((read_json(p) for p in root.glob(pattern)), key=lambda r: (r["model"], r["version"]))


def find_run(store: StoreLayout, model: str, run_id: str) -> dict | None:
    for record in version_records(store, model):
        if record["run_id"] == run_id:
            return record
    return None


def write_version_record(store: StoreLayout, record: dict) -> None:
    path = store.version_record(record["model"], record["version"])
    if path.exists():
        raise StoreError(f"registry record {path} already exists; versions are never rewritten")
    atomic_write_json(path, record)


def current_version(store: StoreLayout, model: str) -> int | None:
    pointer = store.pointer_file(model)
    return int(pointer.read_text().strip()) if pointer.is_file() else None


def pointers(store: StoreLayout) -> dict[str, int]:
    if not store.models.is_dir():
        return {}
    return {
        d.name: current_version(store, d.name)
        for d in sorted(store.models.iterdir())
        if d.is_dir() and store.pointer_file(d.name).is_file()
    }


def switch_pointer(store: StoreLayout, model: str, version: int, event: str, run_id: str | None) -> dict:
    """Make ``version`` current (one os.replace) and append the pointer-change event."""
    if not store.version_file(model, version).is_file():
        raise StoreError(f"{model} {version_name(version)} has no file at {store.version_file(model, version)}")
    previous = current_version(store, model)
    atomic_write_text(store.pointer_file(model), f"{version}\n")
    now = datetime.now(UTC)
    record = {
        "at": now.isoformat(timespec="microseconds"),
        "model": model,
        "event": event,
        "from_version": previous,
        "to_version": version,
        "run_id": run_id,
    }
    name = f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{model}-{uuid.uuid4().hex[:8]}.json"
    atomic_write_json(store.registry_events / name, record)
    return record


def relative(store: StoreLayout, path: Path) -> str:
    return path.relative_to(store.root).as_posix()
