"""The registry, read: JSON records of versions and events, and the pointers (jobs.publish.registry writes them).

Records are one file each, written atomically and never rewritten, so readers
(``versions`` in SQL, ``latentstore versions``, the publish job) need no lock. Events:

- ``publish`` / ``rollback`` / ``recovered``: the pointer moved (``from_version`` -> ``to_version``);
  ``recovered`` is written by the next writer when a crash lost the event of a switch;
- ``repaired``: ``latentstore repair`` rewrote a garbled or missing pointer (``details.found``);
- ``refused``: the quality gate refused a version (``details`` say why); nothing changed;
- ``removed``: retention deleted a version's file (``version``); its record stays;
- ``abandoned``: a publish killed before its switch; recovery deleted its file, its record (if
  written) stays, and its number is never used again.

A model's pointer history is its pointer events in time order: the version
current at a time is the ``to_version`` of the last one at or before it.

Each event is first a file of its own in ``registry/events/`` (its name, time first, is its id). A writer
compacts them (jobs.publish.registry.compact_events): once enough accumulate, all but the newest go into one
JSON lines segment in ``registry/events/segments/``, each line the event plus its ``id``, written before the
files are deleted. Readers take the segments, then the files, and keep the first copy of an id, so a store
with years of hourly events is read from a few dozen files, and a compaction between a reader's listing and
its reads only makes it read again.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

from jobs.common.files import read_json
from schemas.errors import StoreError
from schemas.store import FORMAT_LINE, StoreLayout, version_name

_VERSION_FILE = re.compile(r"^v(\d{6,})\.(duckdb|json)$")
#: Event file names start with their time in this format: sorted names are time order.
EVENT_TIME = "%Y%m%dT%H%M%S%fZ"


def check_format(store: StoreLayout) -> bool:
    """True when the store has a FORMAT file this code reads, False when it has none; a StoreError when the
    file names another layout version."""
    if not store.format_file.is_file():
        return False
    line = store.format_file.read_text().strip()
    if line != FORMAT_LINE.strip():
        raise StoreError(f"{store.format_file} says {line!r}; this latentstore reads {FORMAT_LINE.strip()!r}")
    return True


def known_versions(store: StoreLayout, model: str, history: list[dict] | None = None) -> list[int]:
    """Every version number ever used: by a file, a record or an event (abandoned ones included);
    ``history``: the model's events when the caller has read them already."""
    history = events(store, model) if history is None else history
    numbers = {e["version"] for e in history if e.get("version") is not None}
    for directory in (store.model_dir(model), store.registry_versions / model):
        if directory.is_dir():
            for path in directory.iterdir():
                match = _VERSION_FILE.match(path.name)
                if match:
                    numbers.add(int(match.group(1)))
    return sorted(numbers)


def version_files(store: StoreLayout, model: str) -> list[int]:
    """The versions of ``model`` whose DuckDB file is in the store (retention keeps a few)."""
    directory = store.model_dir(model)
    names = (_VERSION_FILE.match(p.name) for p in directory.glob("v*.duckdb")) if directory.is_dir() else ()
    return sorted(int(match.group(1)) for match in names if match)


def version_records(store: StoreLayout, model: str | None = None) -> list[dict]:
    """Every version record (of ``model``), files and compacted ones, by model and version."""
    found = {}
    for name in [model] if model else published_models(store):
        directory = store.registry_versions / name
        records = _read_compacted(directory / SEGMENTS, directory, "v*.json", lambda r: (r["version"], r),
                                  lambda path: int(_VERSION_FILE.match(path.name).group(1)))
        found.update({(name, version): record for version, record in records.items()})
    return [found[key] for key in sorted(found)]


def has_record(store: StoreLayout, model: str, version: int) -> bool:
    """Whether ``version`` of ``model`` has a record, as a file or compacted (read only for a version
    without a file: records of retained versions are never compacted)."""
    if store.version_record(model, version).is_file():
        return True
    return any(r["version"] == version for r in segment_lines(store.registry_versions / model / SEGMENTS))


#: Where compacted records live, beside the files they replace.
SEGMENTS = "segments"

#: Segments are immutable: parsed once per process (path, size and mtime identify one).
_parsed: dict[tuple[str, int, int], list[dict]] = {}


def segment_lines(directory: Path) -> list[dict]:
    """The records of every JSON lines segment in ``directory``, segment by segment in name order."""
    if not directory.is_dir():
        return []
    records = []
    for segment in sorted(directory.glob("*.jsonl")):
        stat = segment.stat()
        key = (str(segment), stat.st_size, stat.st_mtime_ns)
        if key not in _parsed:
            with segment.open(encoding="utf-8") as fh:
                _parsed[key] = [json.loads(line) for line in fh]
        records += _parsed[key]
    return records


def current_record_of_run(store: StoreLayout, model: str, run_id: str) -> dict | None:
    """The record of ``run_id``'s version when it is ``model``'s current one, else None."""
    current = current_version(store, model)
    if current is None:
        return None
    record = read_json(store.version_record(model, current))
    return record if record["run_id"] == run_id else None


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
    """Models with a folder of versions or of registry records (kept forever): a model whose pointer was
    deleted is still one, and listing two folders reads no event file."""
    names = set()
    for root in (store.models, store.registry_versions):
        if root.is_dir():
            names.update(p.name for p in root.iterdir() if p.is_dir())
    return sorted(names)


def pointers(store: StoreLayout) -> dict[str, int]:
    """Every published model's current version (BrokenPointer if one cannot be read)."""
    current = {model: current_version(store, model) for model in published_models(store)}
    return {model: version for model, version in current.items() if version is not None}


#: Events that move (or re-establish) a pointer: its history.
POINTER_EVENTS = ("publish", "rollback", "recovered", "repaired")


def events(store: StoreLayout, model: str | None = None) -> list[dict]:
    """Event records in time order (all models when ``model`` is None)."""
    return [record for _, record in _events_by_id(store) if model is None or record["model"] == model]


def events_by_model(store: StoreLayout) -> dict[str, list[dict]]:
    """Every model's events in time order, from one read of the registry."""
    grouped: dict[str, list[dict]] = {}
    for _, record in _events_by_id(store):
        grouped.setdefault(record["model"], []).append(record)
    return grouped


#: A reader re-lists this many times when a compaction deletes the files it listed.
_READ_ATTEMPTS = 5


def _events_by_id(store: StoreLayout) -> list[tuple[str, dict]]:
    """(id, record) of every event, in time order (ids start with the event's time)."""
    found = _read_compacted(store.event_segments, store.registry_events, "*.json",
                            lambda line: (line["id"], {k: v for k, v in line.items() if k != "id"}),
                            lambda path: path.stem)
    return sorted(found.items())


def _read_compacted(segments: Path, directory: Path, pattern: str, line_key, file_key) -> dict:
    """key -> record, from the JSON lines ``segments`` first (``line_key(line)`` is (key, record)), then from
    the files of ``directory`` matching ``pattern`` not compacted yet (``file_key(path)``). A compaction that
    deletes a listed file before it is read means the segment holds it now: the read starts again."""
    for attempt in range(_READ_ATTEMPTS):
        try:
            found = dict(line_key(line) for line in segment_lines(segments))
            for path in sorted(directory.glob(pattern)) if directory.is_dir() else []:
                key = file_key(path)
                if key not in found:
                    found[key] = read_json(path)
            return found
        except FileNotFoundError:
            if attempt == _READ_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def newest_event_id(store: StoreLayout) -> str | None:
    """The id of the newest event (file or segment), from names only."""
    names = [p.stem for p in store.registry_events.glob("*.json")] if store.registry_events.is_dir() else []
    names += [p.stem for p in store.event_segments.glob("*.jsonl")] if store.event_segments.is_dir() else []
    return max(names, default=None)  # a segment is named by its newest event's id


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


def non_current_since(history: list[dict], version: int) -> datetime | None:
    """When ``version`` last stopped being current (None: it is current, or it never was), from a model's
    pointer ``history``."""
    since, was_current = None, False
    for event in history:
        if event["to_version"] == version:
            since, was_current = None, True
        elif was_current and since is None and event["from_version"] == version:
            since = datetime.fromisoformat(event["at"])
    return since
