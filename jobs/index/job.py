"""The index stage: raw ratings or events -> an immutable, validated, indexed snapshot.

``run(cfg, store)`` is idempotent: the same input content and data config give
the same snapshot, and a rerun returns it without starting Spark. It reads files
only: the stage (jobs.stages) generates a synthetic input before calling it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jobs.common.files import atomic_write_text, publish_dir
from jobs.common.staging import owned_staging_dir, sweep
from jobs.common.hashing import file_sha256, stable_hash
from jobs.common.version import code_version
from jobs.index.config import IndexConfig
from jobs.index.probe import ProbedInput, probe
from jobs.index.snapshots import find_by_content, read_manifest, resolve_parent, set_latest
from schemas.errors import ConfigError
from schemas.snapshot import MANIFEST, SCHEMA_VERSION, InputFile, Manifest
from schemas.store import StoreLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexResult:
    snapshot_id: str
    path: Path
    manifest: Manifest
    reused: bool


def fingerprint(files: list[Path], mode: str) -> list[InputFile]:
    """Each file's path (relative to their common folder), size and sha256 or mtime."""
    common = Path(os.path.commonpath([str(p.parent) for p in files]))
    entries = []
    for path in files:
        stat = path.stat()
        entries.append(
            InputFile(
                path=path.relative_to(common).as_posix(),
                size=stat.st_size,
                sha256=file_sha256(path) if mode == "content" else None,
                mtime_ns=None if mode == "content" else stat.st_mtime_ns,
            )
        )
    return entries


def content_key(cfg: IndexConfig, probed: ProbedInput, files: list[InputFile]) -> tuple[str, str]:
    input_fp = stable_hash([f.model_dump() for f in files], 32)
    key = stable_hash(
        {"schema": SCHEMA_VERSION, "input": input_fp, "format": probed.format, "data": cfg.data_config()}, 32
    )
    return input_fp, key


@dataclass(frozen=True)
class Plan:
    """What identifies an index run before Spark starts: the input as probed and its content key."""

    cfg: IndexConfig
    probed: ProbedInput
    files: list[InputFile]
    input_fingerprint: str
    content_key: str  # the stage id: same input, format and data config -> same key


def plan(cfg: IndexConfig) -> Plan:
    """Probe and fingerprint ``cfg``'s input files (a synthetic input is generated first by the index stage,
    jobs.stages.resolve_input: the job reads files only)."""
    if cfg.input.synthetic is not None:
        raise ConfigError("the index job reads files: generate input.synthetic first (jobs.stages.resolve_input)")
    probed = probe(cfg)
    files = fingerprint(probed.files, cfg.input.fingerprint)
    input_fp, key = content_key(cfg, probed, files)
    return Plan(cfg, probed, files, input_fp, key)


def run(cfg: IndexConfig, store: StoreLayout, planned: Plan | None = None) -> IndexResult:
    """Index ``cfg``; ``planned`` is its plan when the caller already made it (the flow does, for its cache key)."""
    planned = planned or plan(cfg)
    cfg, probed, files, input_fp, key = (planned.cfg, planned.probed, planned.files, planned.input_fingerprint,
                                         planned.content_key)
    existing = find_by_content(store, cfg.dataset, key)
    if existing is not None:
        log.info("input unchanged: reusing snapshot %s (%d rows kept)", existing.snapshot_id, existing.counts.kept)
        return IndexResult(existing.snapshot_id, store.snapshot_dir(cfg.dataset, existing.snapshot_id), existing, True)

    parent = resolve_parent(store, cfg.dataset, cfg.parent)
    if parent is not None and parent.kind != cfg.kind:
        raise ConfigError(f"dataset {cfg.dataset!r} in {store.root} holds {parent.kind} snapshots, this config indexes "
                          f"{cfg.kind}: give it another name (or index.parent = \"none\" for new vocabularies)")
    snapshot_id = stable_hash({"content": key, "parent": parent.snapshot_id if parent else None}, 16)
    final = store.snapshot_dir(cfg.dataset, snapshot_id)
    if final.is_dir():
        return IndexResult(snapshot_id, final, read_manifest(final), True)

    sweep(store.tmp, "snapshot")  # what a killed index left
    with owned_staging_dir(store.tmp, f"snapshot-{snapshot_id}") as staging:
        manifest = _build(cfg, store, probed, files, input_fp, key, snapshot_id, parent, staging)
        created = publish_dir(staging, final)
    if created:
        set_latest(store, cfg.dataset, snapshot_id)
    log.info(
        "snapshot %s: read %d, kept %d, quarantined %d, duplicates %d, superseded %d",
        snapshot_id, manifest.counts.read, manifest.counts.kept, manifest.counts.quarantined,
        manifest.counts.duplicates, manifest.counts.superseded,
    )
    return IndexResult(snapshot_id, final, read_manifest(final), not created)


def _build(cfg: IndexConfig, store: StoreLayout, probed: ProbedInput, files, input_fp: str, key: str,
           snapshot_id: str, parent: Manifest | None, out: Path) -> Manifest:
    """Run the kind's Spark build into ``out`` and write its manifest (last)."""
    from jobs.index.spark import spark_session
    from jobs.index.steps import BuildContext

    spark = spark_session(cfg.spark)
    ctx = BuildContext(spark, store, cfg.dataset, cfg.min_count, parent, out)
    try:
        if cfg.kind == "events":
            from jobs.index.events import build
        else:
            from jobs.index.ratings import build
        indexed = build(cfg, probed, ctx)
    finally:
        ctx.release()
    manifest = Manifest(
        snapshot_id=snapshot_id,
        content_key=key,
        dataset=cfg.dataset,
        kind=cfg.kind,
        parent=parent.snapshot_id if parent else None,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        input_format=probed.format,
        input_files=files,
        input_fingerprint=input_fp,
        data_config=cfg.data_config(),
        counts=indexed.counts,
        vocab=indexed.vocab,
        rating_range=indexed.extra.get("rating_range"),
        split=indexed.split,
        sessions=indexed.extra.get("sessions"),
        code_version=code_version(),
        spark={"version": spark.version, "master": spark.sparkContext.master, "step_seconds": ctx.timings},
    )
    if not manifest.counts.balanced():
        raise RuntimeError(f"row accounting does not add up: {manifest.counts}")  # a bug, never bad input
    atomic_write_text(out / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
    return manifest
