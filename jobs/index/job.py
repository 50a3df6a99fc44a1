"""The index stage: raw ratings -> an immutable, validated, indexed snapshot.

``run(cfg, store)`` is idempotent: the same input content and data config give
the same snapshot, and a rerun returns it without starting Spark.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jobs.common.files import atomic_write_text, publish_dir, staging_dir
from jobs.common.hashing import file_sha256, stable_hash
from jobs.common.version import code_version
from jobs.index.config import IndexConfig
from jobs.index.probe import ProbedInput, probe
from jobs.index.snapshots import find_by_content, read_manifest, resolve_parent, set_latest
from schemas.errors import InputError
from schemas.ratings import ID_COLUMNS, QUARANTINE_COLUMNS, Outcome
from schemas.snapshot import (
    MANIFEST,
    QUARANTINE_DIR,
    SCHEMA_VERSION,
    SPLITS,
    Counts,
    InputFile,
    Manifest,
    VocabStats,
    interactions_dir,
    vocab_dir,
)
from schemas.store import StoreLayout

log = logging.getLogger(__name__)
# Vocabularies up to this many keys are broadcast to every task for the index join
# (no shuffle of the ratings); larger ones use a shuffle join.
BROADCAST_MAX_KEYS = 2_000_000


@dataclass(frozen=True)
class IndexResult:
    snapshot_id: str
    path: Path
    manifest: Manifest
    reused: bool


def resolve_input(cfg: IndexConfig, store: StoreLayout) -> IndexConfig:
    """Materialise a synthetic input into the store and point the config at it."""
    if cfg.input.synthetic is None:
        return cfg
    from jobs.synthetic.ratings import materialise

    path = materialise(cfg.input.synthetic, store.inputs)
    return cfg.model_copy(update={"input": cfg.input.model_copy(update={"path": str(path), "synthetic": None})})


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


def run(cfg: IndexConfig, store: StoreLayout) -> IndexResult:
    cfg = resolve_input(cfg, store)
    probed = probe(cfg)
    files = fingerprint(probed.files, cfg.input.fingerprint)
    input_fp, key = content_key(cfg, probed, files)
    existing = find_by_content(store, cfg.dataset, key)
    if existing is not None:
        log.info("input unchanged: reusing snapshot %s (%d rows kept)", existing.snapshot_id, existing.counts.kept)
        return IndexResult(existing.snapshot_id, store.snapshot_dir(cfg.dataset, existing.snapshot_id), existing, True)

    parent = resolve_parent(store, cfg.dataset, cfg.parent)
    snapshot_id = stable_hash({"content": key, "parent": parent.snapshot_id if parent else None}, 16)
    final = store.snapshot_dir(cfg.dataset, snapshot_id)
    if final.is_dir():
        return IndexResult(snapshot_id, final, read_manifest(final), True)

    staging = staging_dir(store.tmp, f"snapshot-{snapshot_id}")
    try:
        manifest = _build(cfg, store, probed, files, input_fp, key, snapshot_id, parent, staging)
        created = publish_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if created:
        set_latest(store, cfg.dataset, snapshot_id)
    log.info(
        "snapshot %s: read %d, kept %d, quarantined %d, duplicates %d, superseded %d",
        snapshot_id, manifest.counts.read, manifest.counts.kept, manifest.counts.quarantined,
        manifest.counts.duplicates, manifest.counts.superseded,
    )
    return IndexResult(snapshot_id, final, read_manifest(final), not created)


@contextlib.contextmanager
def _timed(step: str, timings: dict[str, float]):
    started = time.perf_counter()
    yield
    timings[step] = round(time.perf_counter() - started, 3)
    log.info("index step %s: %.1fs", step, timings[step])


def _build(cfg, store, probed, files, input_fp, key, snapshot_id, parent, out: Path) -> Manifest:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from jobs.index.read import read_raw
    from jobs.index.rules import RAW_COLUMNS, deduplicate, mixed_extra_versions, validate
    from jobs.index.spark import spark_session
    from jobs.index.split import split_column
    from jobs.index.vocab import apply_vocab

    spark = spark_session(cfg.spark)
    has_ts = cfg.input.columns.timestamp is not None
    raw = read_raw(spark, probed, cfg.input.columns)
    parsed = validate(raw, cfg.rating_range, has_ts, cfg.input.timestamp_unit)
    cached = []
    timings: dict[str, float] = {}
    try:
        # Pass 1: the (few) bad rows, with their raw text; the tally is read back from them.
        with _timed("quarantine", timings):
            parsed.filter(F.col("reason").isNotNull()).select(
                *[F.col(f"raw_{c}").alias(c) for c in RAW_COLUMNS], "reason"
            ).select(*QUARANTINE_COLUMNS).write.parquet(str(out / QUARANTINE_DIR))
            reasons = {
                row["reason"]: row["count"]
                for row in spark.read.parquet(str(out / QUARANTINE_DIR)).groupBy("reason").count().collect()
            }
        # Pass 2: valid rows, deduplicated per (user, item); kept pairs are reused four times.
        valid = parsed.filter(F.col("reason").isNull())
        pairs = deduplicate(valid).persist(StorageLevel.MEMORY_AND_DISK)
        cached.append(pairs)
        with _timed("deduplicate", timings):
            totals = pairs.agg(
                F.count(F.lit(1)).alias("kept"), F.sum("rows").alias("rows"), F.sum("times").alias("times"),
                F.sum("mixed").alias("mixed"),
            ).first()
            versions = (totals["times"] or 0) + (mixed_extra_versions(valid) if totals["mixed"] else 0)
        valid_rows = totals["rows"] or 0
        if valid_rows == 0:
            raise InputError(f"no valid rows in {cfg.input.path}: all {sum(reasons.values())} rows were "
                             f"quarantined ({', '.join(f'{k}: {v}' for k, v in sorted(reasons.items()))})")
        _check_read_count(probed, valid_rows + sum(reasons.values()))
        outcomes = {
            Outcome.KEPT.value: totals["kept"],
            Outcome.QUARANTINED.value: sum(reasons.values()),
            Outcome.DUPLICATE.value: valid_rows - versions,
            Outcome.SUPERSEDED.value: versions - totals["kept"],
        }
        kept = pairs.select("user", "item", "rating", "ts")
        split_expr, split_record = split_column(kept, cfg.split, has_ts)
        interactions = kept.withColumn("split", split_expr)  # split on keys, before they become indices
        vocab_stats = {}
        for column in ID_COLUMNS:
            with _timed(f"vocab_{column}", timings):
                vocab, vocab_stats[column] = _vocabulary(spark, kept, column, cfg, store, parent, out, cached)
            broadcast = vocab_stats[column].keys <= BROADCAST_MAX_KEYS
            interactions = apply_vocab(interactions, column, vocab, broadcast=broadcast)
        with _timed("write_interactions", timings):
            interactions.select(
                F.col("user").cast("int"), F.col("item").cast("int"), F.col("rating").cast("float"),
                F.col("ts").alias("timestamp").cast("long"), "split",
            ).write.partitionBy("split").parquet(str(out / "interactions"))
    finally:
        for frame in cached:
            frame.unpersist()
    split_rows = _ensure_splits(out)
    manifest = Manifest(
        snapshot_id=snapshot_id,
        content_key=key,
        dataset=cfg.dataset,
        parent=parent.snapshot_id if parent else None,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        input_format=probed.format,
        input_files=files,
        input_fingerprint=input_fp,
        data_config=cfg.data_config(),
        counts=Counts(
            read=sum(outcomes.values()),
            kept=outcomes[Outcome.KEPT],
            quarantined=outcomes[Outcome.QUARANTINED],
            duplicates=outcomes[Outcome.DUPLICATE],
            superseded=outcomes[Outcome.SUPERSEDED],
            quarantine_reasons=dict(sorted(reasons.items())),
            train=split_rows["train"],
            valid=split_rows["valid"],
        ),
        vocab=vocab_stats,
        rating_range=cfg.rating_range,
        split=split_record,
        code_version=code_version(),
        spark={"version": spark.version, "master": spark.sparkContext.master, "step_seconds": timings},
    )
    if not manifest.counts.balanced():
        raise RuntimeError(f"row accounting does not add up: {manifest.counts}")  # a bug, never bad input
    atomic_write_text(out / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
    return manifest


def _check_read_count(probed: ProbedInput, accounted: int) -> None:
    """For Parquet the footers say how many rows there are: every one must be accounted for."""
    if probed.format != "parquet":
        return
    import pyarrow.parquet as pq

    expected = sum(pq.ParquetFile(f).metadata.num_rows for f in probed.files)
    if expected != accounted:
        raise RuntimeError(f"read {accounted} rows but the Parquet footers say {expected}")  # a bug


def _vocabulary(spark, kept, column, cfg, store, parent, out: Path, cached: list):
    """Build, write and describe one column's vocabulary; returns (vocab frame, stats)."""
    from pyspark.sql import functions as F

    from jobs.index.vocab import build_vocab, key_counts

    parent_vocab, parent_size, parent_keys = None, 0, 0
    if parent is not None:
        parent_vocab = spark.read.parquet(str(store.snapshot_dir(cfg.dataset, parent.snapshot_id) / vocab_dir(column)))
        parent_size, parent_keys = parent.vocab[column].size, parent.vocab[column].keys
    counts = key_counts(kept, column).persist()
    built = build_vocab(counts, cfg.min_count, parent_vocab, parent_size)
    vocab = built.vocab.persist()
    cached.extend([counts, vocab])
    vocab.orderBy("index").coalesce(1).write.parquet(str(out / vocab_dir(column)))
    stats = vocab.agg(F.count(F.lit(1)).alias("keys"), F.max("index").alias("max_index")).first()
    return vocab, VocabStats(
        size=max(stats["max_index"] or 0, parent_size - 1) + 1,
        keys=stats["keys"],
        new_keys=stats["keys"] - parent_keys,
        rare_keys=built.rare.count(),
    )


def _ensure_splits(out: Path) -> dict[str, int]:
    """Row counts per split from Parquet footers; an empty split gets an empty file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.ratings import INTERACTION_COLUMNS

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in INTERACTION_COLUMNS.items()])
    rows = {}
    for split in SPLITS:
        directory = out / interactions_dir(split)
        files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
        if not files:
            directory.mkdir(parents=True, exist_ok=True)
            pq.write_table(schema.empty_table(), directory / "part-empty.parquet")
        rows[split] = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return rows
