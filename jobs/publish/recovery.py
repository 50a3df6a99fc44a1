"""Recovery: make the store consistent after a writer was killed, before the next writer works.

Runs first under the writer lock (publish, rollback). The commit point of a
publish is the switch of ``models/<m>/CURRENT``; every other write is either
before it (and then garbage if the switch never happened) or derived from it:

- publish staging files in ``tmp/``: removed (one writer at a time, so any left is orphaned);
- versions never current (no pointer event to them, not the pointer): a publish killed
  before its switch; its file is removed (unless a process has it open), its record (if
  written) stays, and an ``abandoned`` event keeps its number from being used again;
- a current version whose switch lost its event: a ``recovered`` event is appended;
- a version whose file is gone without a ``removed`` event (killed mid-retention): the event is appended;
- ``current.sql`` is regenerated from the pointers (``recover_store``), after the event files are
  compacted once there are enough of them (jobs.store.registry).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from jobs.common.files import atomic_write_text, read_json
from jobs.publish.registry import append_event, compact_events, compact_records
from jobs.publish.retention import exclusive_if_unused
from jobs.store.current_sql import render
from jobs.store.registry import current_version, events_by_model, known_versions, pointers, published_models
from schemas.store import StoreLayout, version_name

log = logging.getLogger(__name__)


def recover(store: StoreLayout, every_history: dict[str, list[dict]] | None = None) -> list[str]:
    """Repair what a killed writer left; returns what was done (for the log). ``every_history``: every
    model's events, when the caller has read them."""
    done = []
    if store.tmp.is_dir():
        for staging in list(store.tmp.glob("*.duckdb")) + list(store.tmp.glob("*.duckdb.wal")):
            staging.unlink(missing_ok=True)
            done.append(f"removed staging file {staging.name}")
    every_history = events_by_model(store) if every_history is None else every_history  # one read, not one per model
    for model in published_models(store):
        history = every_history.get(model, [])
        moves = [e for e in history if e["to_version"] is not None]
        current = current_version(store, model)
        if current is not None and (not moves or moves[-1]["to_version"] != current):
            # stamped now: readers saw the previous version until this recovery rewrites current.sql
            switched = datetime.fromtimestamp(store.pointer_file(model).stat().st_mtime, UTC)
            record = store.version_record(model, current)
            append_event(store, model, "recovered", from_version=moves[-1]["to_version"] if moves else None,
                         to_version=current, run_id=read_json(record)["run_id"] if record.is_file() else None,
                         details={"reason": "a switch whose event was lost", "switched_at": switched.isoformat()})
            moves.append({"to_version": current})
            done.append(f"{model}: recorded the switch to {version_name(current)}")
        ever_current = {e["to_version"] for e in moves}
        removed = {e["version"] for e in history if e["event"] == "removed"}
        abandoned = {e["version"] for e in history if e["event"] == "abandoned"}
        settled = removed | abandoned  # their files are gone and recorded: nothing left to check
        for version in sorted(set(known_versions(store, model, history)) - settled):
            path, record = store.version_file(model, version), store.version_record(model, version)
            if version not in ever_current:
                if path.is_file():
                    with exclusive_if_unused(path) as free:
                        if not free:
                            continue  # someone opened the orphan file: retried next time
                        path.unlink()
                        Path(f"{path}.wal").unlink(missing_ok=True)
                if version not in abandoned:
                    append_event(store, model, "abandoned", version=version,
                                 details={"reason": "a publish killed before its switch"})
                    done.append(f"{model}: abandoned {version_name(version)}, a publish that never became current")
            elif not path.is_file() and record.is_file() and version not in removed:
                append_event(store, model, "removed", version=version, details={"reason": "recovered"})
                done.append(f"{model}: recorded the removal of {version_name(version)}")
    for line in done:
        log.info("recovery: %s", line)
    return done


def compact_registry(store: StoreLayout, histories: dict[str, list[dict]]) -> None:
    """Fold old event files, and the records of versions whose files are gone, into segments once there are
    enough (``histories`` may predate events recovery just appended: those only settle more versions)."""
    compacted = compact_events(store)
    for model, history in histories.items():
        settled = {e["version"] for e in history if e["event"] in ("removed", "abandoned")}
        compacted += compact_records(store, model, settled)
    if compacted:
        log.info("registry: compacted %d files into segments", compacted)


def refresh_current_sql(store: StoreLayout) -> None:
    """Rewrite current.sql from the pointers (call under the writer lock)."""
    current = {}
    for model, version in pointers(store).items():
        current[model] = read_json(store.version_record(model, version))
    atomic_write_text(store.current_sql, render(store, current))


def recover_store(store: StoreLayout) -> list[str]:
    """Repair a killed writer's leftovers (call under the writer lock); a switch it committed becomes
    visible in current.sql. Returns what was done."""
    histories = events_by_model(store)
    done = recover(store, histories)
    compact_registry(store, histories)
    if pointers(store):
        refresh_current_sql(store)
    return done
