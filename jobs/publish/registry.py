"""The registry: append-only JSON records of versions and events, and the pointers.

Records are one file each, written atomically and never rewritten, so readers
(``versions`` in SQL, ``latentstore versions``) need no lock. Events:

- ``publish`` / ``rollback`` / ``recovered``: the pointer moved (``from_version`` -> ``to_version``);
  ``recovered`` is written by the next writer when a crash lost the event of a switch;
- ``repaired``: ``latentstore repair`` rewrote a garbled or missing pointer (``details.found``);
- ``refused``: the quality gate refused a version (``details`` say why); nothing changed;
- ``removed``: retention deleted a version's file (``version``); its record stays;
- ``abandoned``: a publish killed before its switch; recovery deleted its file, its record (if
  written) stays, and its number is never used again.

A model's pointer history is its pointer events in time order: the version
current at a time is the ``to_version`` of the last one at or before it.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jobs.common.faults import pause_point
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
    """Every version number ever used: by a file, a record or an event (abandoned ones included)."""
    numbers = {e["version"] for e in events(store, model) if e.get("version") is not None}
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


def current_record_of_run(store: StoreLayout, model: str, run_id: str) -> dict | None:
    """The record of ``run_id``'s version when it is ``model``'s current one, else None."""
    current = current_version(store, model)
    if current is None:
        return None
    return next((r for r in version_records(store, model) if r["run_id"] == run_id and r["version"] == current), None)


def write_version_record(store: StoreLayout, record: dict) -> None:
    path = store.version_record(record["model"], record["version"])
    if path.exists():
        raise StoreError(f"registry record {path} already exists; versions are never rewritten")
    atomic_write_json(path, record, read_only=True)


def current_version(store: StoreLayout, model: str) -> int | None:
    """The version ``models/<model>/CURRENT`` points to; None before the model's first publish.

    Raises BrokenPointer when the pointer is garbled, points to a version without a file, or is
    missing although the model was published (``latentstore repair`` rebuilds it from the registry)."""
    pointer = store.pointer_file(model)
    try:
        text = pointer.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        if pointer_history(store, model):
            raise BrokenPointer(store, model, "is missing although the model was published") from None
        return None
    except IsADirectoryError:
        raise BrokenPointer(store, model, "is a directory") from None
    value = text.strip()
    if not value.isdigit() or int(value) < 1:
        raise BrokenPointer(store, model, f"holds {value[:40]!r}, not a version number")
    version = int(value)
    if not store.version_file(model, version).is_file():
        raise BrokenPointer(store, model, f"points to {version_name(version)}, which has no file")
    return version


class BrokenPointer(StoreError):
    """A model's CURRENT pointer cannot be trusted; readers keep the versions current.sql attached."""

    def __init__(self, store: StoreLayout, model: str, problem: str):
        self.model = model
        super().__init__(f"{store.pointer_file(model)} {problem}; readers still see the version current.sql "
                         f"attaches. `latentstore repair --store {store.root}` rebuilds it from the registry "
                         f"(or `latentstore rollback --model {model} --to N` picks a version)")


def published_models(store: StoreLayout) -> list[str]:
    """Models with a pointer or a pointer event (a deleted pointer is not a model that vanished)."""
    names = {d.name for d in store.models.iterdir() if d.is_dir()} if store.models.is_dir() else set()
    names |= {e["model"] for e in events(store) if e["event"] in POINTER_EVENTS}
    return sorted(names)


def pointers(store: StoreLayout) -> dict[str, int]:
    """Every published model's current version (BrokenPointer if one cannot be read)."""
    current = {model: current_version(store, model) for model in published_models(store)}
    return {model: version for model, version in current.items() if version is not None}


#: Events that move (or re-establish) a pointer: its history.
POINTER_EVENTS = ("publish", "rollback", "recovered", "repaired")


_EVENT_TIME = "%Y%m%dT%H%M%S%fZ"  # event file names start with their time: sorted names are time order


def _next_event_time(store: StoreLayout) -> datetime:
    """Now, or just after the newest event if the clock went back: event times strictly increase."""
    now = datetime.now(UTC)
    names = [p.name for p in store.registry_events.glob("*.json")] if store.registry_events.is_dir() else []
    if names:
        last = datetime.strptime(max(names)[:22], _EVENT_TIME).replace(tzinfo=UTC)
        if now <= last:
            now = last + timedelta(microseconds=1)
    return now


def append_event(store: StoreLayout, model: str, event: str, *, from_version: int | None = None,
                 to_version: int | None = None, version: int | None = None, run_id: str | None = None,
                 details: dict | None = None) -> dict:
    """Write one event record (a new file; never rewritten); call under the writer lock."""
    at = _next_event_time(store)
    record = {
        "at": at.isoformat(timespec="microseconds"),
        "model": model,
        "event": event,
        "from_version": from_version,
        "to_version": to_version,
        "version": version if version is not None else to_version,
        "run_id": run_id,
        "details": details or {},
    }
    name = f"{at.strftime(_EVENT_TIME)}-{model}-{event}-{uuid.uuid4().hex[:8]}.json"
    atomic_write_json(store.registry_events / name, record, read_only=True)
    return record


def switch_pointer(store: StoreLayout, model: str, version: int, event: str, run_id: str | None,
                   details: dict | None = None) -> dict:
    """Make ``version`` current (one os.replace: the commit point) and append the pointer event."""
    if not store.version_file(model, version).is_file():
        raise StoreError(f"{model} {version_name(version)} has no file at {store.version_file(model, version)}")
    previous = current_version(store, model)
    atomic_write_text(store.pointer_file(model), f"{version}\n", read_only=True)
    pause_point(f"{event}:switched")
    return append_event(store, model, event, from_version=previous, to_version=version, run_id=run_id,
                        details=details)


def events(store: StoreLayout, model: str | None = None) -> list[dict]:
    """Event records in time order (all models when ``model`` is None)."""
    if not store.registry_events.is_dir():
        return []
    records = [read_json(p) for p in sorted(store.registry_events.glob("*.json"))]  # names sort by time
    return [r for r in records if model is None or r["model"] == model]


def pointer_history(store: StoreLayout, model: str) -> list[dict]:
    return [e for e in events(store, model) if e["event"] in POINTER_EVENTS]


def version_at(store: StoreLayout, model: str, at: datetime) -> int | None:
    """The version of ``model`` that was current at ``at`` (rollbacks included), or None."""
    current = None
    for event in pointer_history(store, model):
        if datetime.fromisoformat(event["at"]) > at:
            break
        current = event["to_version"]
    return current


def non_current_since(store: StoreLayout, model: str, version: int) -> datetime | None:
    """When ``version`` last stopped being current (None: it is current, or it never was)."""
    since, was_current = None, False
    for event in pointer_history(store, model):
        if event["to_version"] == version:
            since, was_current = None, True
        elif was_current and since is None and event["from_version"] == version:
            since = datetime.fromisoformat(event["at"])
    return since


def relative(store: StoreLayout, path: Path) -> str:
    return path.relative_to(store.root).as_posix()
