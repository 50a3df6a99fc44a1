"""Spark steps both index kinds share: timings, quarantine, vocabularies, the Parquet row check."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.index.probe import ProbedInput
from jobs.index.vocab import build_vocab, key_counts
from schemas.snapshot import QUARANTINE_DIR, Counts, VocabStats, vocab_dir

log = logging.getLogger("jobs.index.job")
# Vocabularies up to this many keys are broadcast to every task for the index join
# (no shuffle of the rows); larger ones use a shuffle join.
BROADCAST_MAX_KEYS = 2_000_000


@dataclass
class BuildContext:
    """What a kind's build needs besides its config: the store, the parent, the output folder."""

    spark: object
    store: object  # schemas.store.StoreLayout
    dataset: str
    min_count: int
    parent: object | None  # the parent snapshot's Manifest
    out: Path
    timings: dict[str, float] = field(default_factory=dict)
    cached: list[DataFrame] = field(default_factory=list)

    @contextlib.contextmanager
    def timed(self, step: str):
        started = time.perf_counter()
        yield
        self.timings[step] = round(time.perf_counter() - started, 3)
        log.info("index step %s: %.1fs", step, self.timings[step])

    def persist(self, frame: DataFrame) -> DataFrame:
        from pyspark import StorageLevel

        frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
        self.cached.append(frame)
        return frame

    def release(self) -> None:
        for frame in self.cached:
            frame.unpersist()
        self.cached.clear()


@dataclass(frozen=True)
class Built:
    """What a kind's build adds to the manifest."""

    counts: Counts
    vocab: dict[str, VocabStats]
    split: dict
    extra: dict  # kind-specific manifest fields (rating_range, sessions)


def write_quarantine(ctx: BuildContext, bad: DataFrame) -> dict[str, int]:
    """Write the quarantined rows (already in their table's columns) and tally them by reason.

    The tally is read back from the written Parquet, so the count is of what was written."""
    bad.write.parquet(str(ctx.out / QUARANTINE_DIR))
    return {
        row["reason"]: row["count"]
        for row in ctx.spark.read.parquet(str(ctx.out / QUARANTINE_DIR)).groupBy("reason").count().collect()
    }


def vocabulary(ctx: BuildContext, kept: DataFrame, column: str) -> tuple[DataFrame, VocabStats]:
    """Build, write and describe one column's vocabulary; returns (vocab frame, stats)."""
    parent_vocab, parent_size, parent_keys = None, 0, 0
    if ctx.parent is not None:
        parent_dir = ctx.store.snapshot_dir(ctx.dataset, ctx.parent.snapshot_id) / vocab_dir(column)
        parent_vocab = ctx.spark.read.parquet(str(parent_dir))
        parent_size, parent_keys = ctx.parent.vocab[column].size, ctx.parent.vocab[column].keys
    counts = ctx.persist(key_counts(kept, column))
    built = build_vocab(counts, ctx.min_count, parent_vocab, parent_size)
    vocab = ctx.persist(built.vocab)
    vocab.orderBy("index").coalesce(1).write.parquet(str(ctx.out / vocab_dir(column)))
    stats = vocab.agg(F.count(F.lit(1)).alias("keys"), F.max("index").alias("max_index")).first()
    return vocab, VocabStats(
        size=max(stats["max_index"] or 0, parent_size - 1) + 1,
        keys=stats["keys"],
        new_keys=stats["keys"] - parent_keys,
        rare_keys=built.rare.count(),
    )


def check_read_count(probed: ProbedInput, accounted: int) -> None:
    """For Parquet the footers say how many rows there are: every one must be accounted for."""
    if probed.format != "parquet":
        return
    import pyarrow.parquet as pq

    expected = sum(pq.ParquetFile(f).metadata.num_rows for f in probed.files)
    if expected != accounted:
        raise RuntimeError(f"read {accounted} rows but the Parquet footers say {expected}")  # a bug


def no_valid_rows(path: str | None, reasons: dict[str, int]) -> str:
    return (f"no valid rows in {path}: all {sum(reasons.values())} rows were quarantined "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(reasons.items()))})")
