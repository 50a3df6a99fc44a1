"""The publish stage: a finished training run -> the next version of a model, made current.

Under the store's writer lock, in this order (each write atomic; the named
pause points are where crash tests kill a writer):

1. recovery: repair what a killed writer left (jobs.publish.recovery);
2. the quality gate: a refused version is recorded as an event and nothing else is written;
3. build ``tmp/<model>-vNNNNNN-<pid>.duckdb`` and rename it to ``models/<model>/vNNNNNN.duckdb``
   (``publish:built``, ``publish:renamed``);
4. drift against the current version, then the registry record (``publish:recorded``);
5. switch ``models/<model>/CURRENT`` (os.replace): **the commit point** (``publish:switched``),
   then the pointer event;
6. regenerate ``current.sql`` (os.replace; ``publish:sql``); retention of old versions.

SIGINT or SIGTERM before 5 stops the publish (nothing changes); from 5 to the end of
6 they wait (jobs.common.signals.deferred), so a committed publish finishes.

A crash before 5 leaves the previous version current everywhere, and recovery
removes the leftovers; a crash after 5 leaves the new version committed, and
recovery completes its event and current.sql. Readers only ever attach complete,
immutable files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jobs.common import signals
from jobs.common.faults import pause_point
from jobs.common.files import read_json
from jobs.common.version import git_commit
from jobs.publish import gate, retention
from jobs.publish.config import DEFAULT_LOCK_TIMEOUT_SECONDS, PublishConfig
from jobs.publish.lock import writer_lock
from jobs.publish.recovery import recover_store, refresh_current_sql
from jobs.publish.repair import repair_pointer
from jobs.publish.registry import append_event, ensure_format, relative, switch_pointer, write_version_record
from jobs.store.current_sql import macro_clashes
from jobs.store.duck import install_vss
from jobs.store.registry import (
    POINTER_EVENTS,
    current_record_of_run,
    current_version,
    events,
    has_record,
    known_versions,
    pointer_history,
    pointers,
)
from schemas.errors import ConfigError, GateRefused, StoreError
from schemas.snapshot import Manifest
from schemas.store import StoreLayout, require_name, version_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishResult:
    model: str
    version: int
    path: Path
    record: dict
    reused: bool
    retention: dict | None = None


def run(
    cfg: PublishConfig, model: str, store: StoreLayout, run_dir: Path, result: dict, snapshot_dir: Path,
    manifest: Manifest, force: bool = False,
) -> PublishResult:
    """Publish the finished run in ``run_dir`` as the next version of ``model`` and make it current.

    Raises GateRefused when the quality gate refuses it (unless ``force``)."""
    model = require_name(model, "model")
    ensure_format(store)
    with writer_lock(store.lock_file, cfg.lock_timeout_seconds):
        recover_store(store)
        current = current_version(store, model)
        existing = current_record_of_run(store, model, result["run_id"])
        if existing is not None:
            log.info("run %s is already %s %s (current)", result["run_id"], model, version_name(existing["version"]))
            return PublishResult(model, existing["version"], store.root / existing["file"], existing, True)
        history = events(store, model)  # read once, used through retention
        moves = [e for e in history if e["event"] in POINTER_EVENTS]  # not a killed run's abandoned version
        published = [read_json(store.version_record(model, v)) for v in
                     sorted({e["to_version"] for e in moves if e["run_id"] == result["run_id"]})]
        if published and not force:
            # Published before and replaced since (a rollback or a newer run): republishing it automatically would
            # undo that decision every hour. `rollback --to` brings it back; --force republishes it.
            existing = published[-1]
            log.warning("run %s was published as %s %s and is no longer current: not republished (rollback --to "
                        "%d, or --force)", result["run_id"], model, version_name(existing["version"]),
                        existing["version"])
            return PublishResult(model, existing["version"], store.root / existing["file"], existing, True)
        current_record = read_json(store.version_record(model, current)) if current is not None else None
        _check_macro_names(store, model, list(result["entities"]))
        decision = gate.decide(cfg.gate, model, result["primary_metric"], manifest.content_key, current_record,
                               result.get("fold_in"))
        if not decision.passed and not force:
            append_event(store, model, "refused", from_version=current, run_id=result["run_id"],
                         details={**decision.record(), "snapshot_id": manifest.snapshot_id})
            raise GateRefused(f"quality gate refused {model}: {decision.reason}. The current version stays; "
                              "--force publishes anyway")
        if not decision.passed:
            log.warning("quality gate overridden by --force: %s", decision.reason)
        install_vss(store.extensions)
        version = max(known_versions(store, model, history), default=0) + 1
        record = _publish_version(cfg, model, store, run_dir, result, snapshot_dir, manifest, version,
                                  decision.record(forced=force), current_record)
        with signals.deferred(f"the publish of {model} {version_name(version)}"):
            switched = switch_pointer(store, model, version, "publish", result["run_id"],
                                      details={"forced": record["gate"]["forced"]})
            refresh_current_sql(store)
        pause_point("publish:sql")
        kept = retention.apply(store, model, cfg.keep_versions, cfg.retention_grace_seconds, [*history, switched])
    log.info("published %s %s (%s)", model, version_name(version), _entity_summary(record))
    return PublishResult(model, version, store.version_file(model, version), record, False, kept)


def rollback(store: StoreLayout, model: str, version: int,
             lock_timeout_seconds: float | None = DEFAULT_LOCK_TIMEOUT_SECONDS) -> dict:
    """Make an older (retained) ``version`` of ``model`` current again; recorded as a ``rollback`` event."""
    model = require_name(model, "model")
    with writer_lock(store.lock_file, lock_timeout_seconds):
        if not has_record(store, model, version):
            raise StoreError(f"{model} has no version {version} in {store.root}")
        if not store.version_file(model, version).is_file():
            raise StoreError(f"{model} {version_name(version)} was removed by retention; "
                             "it can no longer be made current")
        repaired = repair_pointer(store, model, to=version)  # rolling back is also how a broken pointer is fixed
        recover_store(store)
        if repaired:
            log.info("%s", repaired)
            return pointer_history(store, model)[-1]
        if current_version(store, model) == version:
            raise StoreError(f"{model} {version_name(version)} is already current")
        with signals.deferred(f"the rollback of {model} to {version_name(version)}"):
            event = switch_pointer(store, model, version, "rollback",
                                   read_json(store.version_record(model, version))["run_id"])
            refresh_current_sql(store)
    previous = event["from_version"]
    log.info("rolled %s back from %s to %s", model, version_name(previous) if previous else "none", version_name(version))
    return event


def _publish_version(cfg, model, store, run_dir, result, snapshot_dir, manifest, version, decision, current) -> dict:
    from jobs.publish.build import build_version_file
    from jobs.publish.drift import compare

    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    store.tmp.mkdir(parents=True, exist_ok=True)
    staging = store.tmp / f"{model}-{version_name(version)}-{os.getpid()}.duckdb"
    staging.unlink(missing_ok=True)
    meta = {
        "model": model,
        "version": version,
        "run_id": result["run_id"],
        "snapshot_id": manifest.snapshot_id,
        "model_kind": result["model"],
        "created_at": created_at,
    }
    final = store.version_file(model, version)
    try:
        entities = build_version_file(staging, cfg, run_dir, snapshot_dir, result, meta)
        pause_point("publish:built")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final)
    finally:
        staging.unlink(missing_ok=True)
        Path(f"{staging}.wal").unlink(missing_ok=True)
    pause_point("publish:renamed")
    drift = None
    if current is not None and store.version_file(model, current["version"]).is_file():
        tables = sorted(set(entities) & set(current["entities"]))
        drift = {"compared_to": current["version"], "sample_seed": cfg.drift_seed,
                 "tables": compare(store.version_file(model, current["version"]), final, tables, cfg.drift_sample,
                                   cfg.drift_seed)}
    metric = result["primary_metric"]
    record = {
        **meta,
        "dataset": manifest.dataset,
        "dim": result["params"]["dim"],
        "metric_name": metric["name"],
        "metric_value": metric["value"],
        "metric_direction": metric["direction"],
        "metrics": result["metrics"],
        "params": {**result["params"], "train": result["config"], "publish": cfg.model_dump(mode="json")},
        "entities": entities,
        "validation_set": manifest.content_key,
        "gate": decision,
        "fold_in": result.get("fold_in"),  # the parent run, mode and rows of a warm-started run
        "drift": drift,
        "snapshot_manifest": manifest.model_dump(mode="json"),
        "code_version": result["code_version"],
        "git_commit": git_commit(),
        "file": relative(store, final),
        "runtime": result["runtime"],
    }
    write_version_record(store, record)
    pause_point("publish:recorded")
    return record


def _check_macro_names(store: StoreLayout, model: str, entities: list[str]) -> None:
    """Refuse, before anything is written, a model whose tables' SQL macros would replace another model's."""
    records = {m: read_json(store.version_record(m, v)) for m, v in pointers(store).items()}
    clashes = macro_clashes(records, model, entities)
    if clashes:
        raise ConfigError(f"model {model!r} cannot be published next to the store's models: its SQL macro names "
                          f"would collide ({'; '.join(clashes)}); rename the model")


def _entity_summary(record: dict) -> str:
    return ", ".join(
        f"{e}: {i['rows']} x {i['dim']}{' +hnsw' if i['hnsw'] else ''}" for e, i in sorted(record["entities"].items())
    )
