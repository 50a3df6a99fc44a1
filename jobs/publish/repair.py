"""Repair: rebuild garbled or missing pointers from the registry, then current.sql.

A pointer (``models/<m>/CURRENT``) is derived data: the registry's pointer events
say which version was made current last. When a pointer is garbled, points to a
version without a file, or was deleted, ``repair`` writes the version of the
last pointer event whose file still exists (retention never removes the current
version, so normally the last one), records a ``repaired`` event naming what it
found, runs the usual recovery and regenerates ``current.sql``. Sound pointers
are left alone, so repairing a healthy store changes nothing.
"""

from __future__ import annotations

import logging

from jobs.common import signals
from jobs.common.files import atomic_write_text
from jobs.publish.config import DEFAULT_LOCK_TIMEOUT_SECONDS
from jobs.publish.lock import writer_lock
from jobs.publish.recovery import recover_store
from jobs.publish.registry import append_event
from jobs.store.registry import BrokenPointer, current_version, pointer_history, published_models
from schemas.errors import StoreError
from schemas.store import StoreLayout, version_name

log = logging.getLogger(__name__)


def repair(store: StoreLayout, lock_timeout_seconds: float | None = DEFAULT_LOCK_TIMEOUT_SECONDS) -> list[str]:
    """Repair every model's pointer that needs it, then recover and rewrite current.sql; returns what was done."""
    if not store.format_file.is_file():
        raise StoreError(f"no latentstore store at {store.root} (no FORMAT file)")
    with writer_lock(store.lock_file, lock_timeout_seconds):
        done = [line for model in published_models(store) if (line := repair_pointer(store, model))]
        done += recover_store(store)
    for line in done:
        log.info("repair: %s", line)
    return done


def repair_pointer(store: StoreLayout, model: str, to: int | None = None) -> str | None:
    """Rewrite ``model``'s pointer if it is broken (to ``to``, else the registry's last current version);
    call under the writer lock. Returns what was done, None when the pointer was sound."""
    try:
        current_version(store, model)
        return None
    except BrokenPointer as broken:
        found = _found(store, model)
        target = to if to is not None else _last_current(store, model)
        if not store.version_file(model, target).is_file():
            raise StoreError(f"{model} {version_name(target)} has no file in {store.root}; cannot repair "
                             f"{store.pointer_file(model)} with it") from None
        with signals.deferred(f"the repair of {model}'s pointer"):
            atomic_write_text(store.pointer_file(model), f"{target}\n", read_only=True)
            append_event(store, model, "repaired", to_version=target,
                         details={"found": found, "problem": str(broken).split(";")[0]})
        return f"{model}: pointer rebuilt to {version_name(target)} (it {'was missing' if found is None else f'held {found!r}'})"


def _found(store: StoreLayout, model: str) -> str | None:
    try:
        return store.pointer_file(model).read_text(encoding="utf-8", errors="replace").strip()[:40]
    except OSError:
        return None


def _last_current(store: StoreLayout, model: str) -> int:
    """The version the registry made current last and whose file still exists."""
    for event in reversed(pointer_history(store, model)):
        version = event["to_version"]
        if version is not None and store.version_file(model, version).is_file():
            return version
    raise StoreError(f"{model}: no version the registry made current still has a file in {store.model_dir(model)}; "
                     f"nothing to repair {store.pointer_file(model)} with")
