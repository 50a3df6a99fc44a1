"""The publish stage: a finished training run -> the next version of a model, made current.

Order of writes (each step atomic; a crash between steps leaves the previous
version current and every reader unaffected):

1. build ``tmp/<model>-<version>.duckdb`` and rename it to ``models/<model>/vNNNNNN.duckdb``;
2. write the registry record of the version;
3. switch ``models/<model>/CURRENT`` (os.replace) and append a pointer event;
4. regenerate ``current.sql`` (os.replace).

All of it runs under the store's writer lock.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jobs.common.files import atomic_write_text, read_json
from jobs.common.version import git_commit
from jobs.publish.config import PublishConfig
from jobs.publish.current_sql import render
from jobs.publish.lock import writer_lock
from jobs.publish.registry import (
    current_version,
    ensure_format,
    find_run,
    known_versions,
    pointers,
    relative,
    switch_pointer,
    write_version_record,
)
from latentstore.duck import install_vss
from schemas.snapshot import Manifest
from schemas.store import StoreLayout, check_name, version_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishResult:
    model: str
    version: int
    path: Path
    record: dict
    reused: bool


def refresh_current_sql(store: StoreLayout) -> None:
    """Rewrite current.sql from the pointers (call under the writer lock)."""
    current = {}
    for model, version in pointers(store).items():
        current[model] = read_json(store.version_record(model, version))
    atomic_write_text(store.current_sql, render(store, current))


def run(
    cfg: PublishConfig, model: str, store: StoreLayout, run_dir: Path, result: dict, snapshot_dir: Path,
    manifest: Manifest,
) -> PublishResult:
    """Publish the finished run in ``run_dir`` as the next version of ``model`` and make it current."""
    model = check_name(model, "model")
    ensure_format(store)
    with writer_lock(store.lock_file, cfg.lock_timeout_seconds):
        existing = find_run(store, model, result["run_id"])
        if existing is not None and current_version(store, model) == existing["version"]:
            log.info("run %s is already %s %s (current)", result["run_id"], model, version_name(existing["version"]))
            return PublishResult(model, existing["version"], store.root / existing["file"], existing, True)
        install_vss(store.extensions)
        version = max(known_versions(store, model), default=0) + 1
        record = _publish_version(cfg, model, store, run_dir, result, snapshot_dir, manifest, version)
        switch_pointer(store, model, version, "publish", result["run_id"])
        refresh_current_sql(store)
    log.info("published %s %s (%s)", model, version_name(version), _entity_summary(record))
    return PublishResult(model, version, store.version_file(model, version), record, False)


def _publish_version(cfg, model, store, run_dir, result, snapshot_dir, manifest, version) -> dict:
    from jobs.publish.build import build_version_file

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
    try:
        entities = build_version_file(staging, cfg, run_dir, snapshot_dir, result, meta)
        final = store.version_file(model, version)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final)
    finally:
        staging.unlink(missing_ok=True)
        Path(f"{staging}.wal").unlink(missing_ok=True)
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
        "snapshot_manifest": manifest.model_dump(mode="json"),
        "code_version": result["code_version"],
        "git_commit": git_commit(),
        "file": relative(store, final),
        "runtime": result["runtime"],
    }
    write_version_record(store, record)
    return record


def _entity_summary(record: dict) -> str:
    return ", ".join(
        f"{e}: {i['rows']} x {i['dim']}{' +hnsw' if i['hnsw'] else ''}" for e, i in sorted(record["entities"].items())
    )
