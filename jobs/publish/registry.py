"""The registry, written: version records and events appended, pointers switched (call under the writer lock).

Nothing here is ever rewritten: each record and event is a new file written
atomically and read-only, and a pointer moves by one ``os.replace``, the commit
point of a publish or rollback. What the files mean and how they are read is in
jobs.store.registry, which the read client shares.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jobs.common.faults import pause_point
from jobs.common.files import atomic_write_json, atomic_write_text, read_json
from jobs.store.registry import EVENT_TIME, SEGMENTS, check_format, current_version, newest_event_id
from schemas.errors import StoreError
from schemas.store import FORMAT_LINE, StoreLayout, version_name


def ensure_format(store: StoreLayout) -> None:
    """Create the FORMAT file of a new store, or check an existing one's layout version."""
    if check_format(store):
        return
    store.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(store.format_file, FORMAT_LINE)


def write_version_record(store: StoreLayout, record: dict) -> None:
    path = store.version_record(record["model"], record["version"])
    if path.exists():
        raise StoreError(f"registry record {path} already exists; versions are never rewritten")
    atomic_write_json(path, record, read_only=True)


def _next_event_time(store: StoreLayout) -> datetime:
    """Now, or just after the newest event if the clock went back: event times strictly increase."""
    now = datetime.now(UTC)
    newest = newest_event_id(store)
    if newest:
        last = datetime.strptime(newest[:22], EVENT_TIME).replace(tzinfo=UTC)
        if now <= last:
            now = last + timedelta(microseconds=1)
    return now


#: Event (or a model's record) files a store accumulates before a writer compacts them into a segment.
COMPACT_EVENTS_AT = 500


def compact_records(store: StoreLayout, model: str, settled: set[int], at_least: int | None = None) -> int:
    """Move the records of ``settled`` versions (removed or abandoned: no file, never read by path again) into
    one segment once ``model`` has ``at_least`` record files; returns how many (call under the writer lock)."""
    directory = store.registry_versions / model
    files = sorted(directory.glob("v*.json")) if directory.is_dir() else []
    done = [path for path in files
            if int(path.stem[1:]) in settled and not store.version_file(model, int(path.stem[1:])).exists()]
    if len(files) < (at_least or COMPACT_EVENTS_AT) or not done:
        return 0
    return _fold(done, directory / SEGMENTS, "compact:records", with_id=False)


def compact_events(store: StoreLayout, at_least: int | None = None) -> int:
    """Move the event files but the newest into one segment once there are ``at_least``; returns how many
    (call under the writer lock)."""
    files = sorted(store.registry_events.glob("*.json")) if store.registry_events.is_dir() else []
    older = files[:-1]  # the newest stays a file: the loose glob current.sql reads always matches something
    if len(files) < (at_least or COMPACT_EVENTS_AT) or not older:
        return 0
    return _fold(older, store.event_segments, "compact:segment", with_id=True)


def _fold(paths: list[Path], segments: Path, fault_point: str, with_id: bool) -> int:
    """Write the records of ``paths`` (sorted) as one read-only JSON lines segment named by the last, each with
    its file's name as ``id`` if ``with_id``, then delete the files. The segment is complete before any file
    goes, and readers keep the first copy of a record: a kill at any point leaves each readable exactly once."""
    lines = [json.dumps({**read_json(path), **({"id": path.stem} if with_id else {})}, sort_keys=True)
             for path in paths]
    atomic_write_text(segments / f"{paths[-1].stem}.jsonl", "\n".join(lines) + "\n", read_only=True)
    pause_point(fault_point)
    for path in paths:
        path.unlink()
    return len(paths)


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
    name = f"{at.strftime(EVENT_TIME)}-{model}-{event}-{uuid.uuid4().hex[:8]}.json"
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


def relative(store: StoreLayout, path: Path) -> str:
    """``path`` as a record names it: relative to the store root."""
    return path.relative_to(store.root).as_posix()
