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
from jobs.index.vocab import build_vocab, hash_is_injective, key_counts
from schemas.vocab import FIRST_INDEX
from schemas.snapshot import QUARANTINE_DIR, Counts, VocabStats, vocab_dir

log = logging.getLogger(__name__)
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
    checkpointed: list[DataFrame] = field(default_factory=list)

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

    def checkpoint(self, frame: DataFrame) -> DataFrame:
        """Compute ``frame`` now and keep its rows (memory, else local disk) for the later steps.

        For a large frame: a local checkpoint keeps the rows as they are (memory up to Spark's
        storage share of the heap, the rest on local disk), where ``persist`` first encodes
        them into compressed columns (on the 10M-row benchmark about 1.5 s of CPU against
        11 s). The price: a lost executor fails the job instead of recomputing the rows
        (the stage is retried as a whole)."""
        frame = frame.localCheckpoint(eager=True)
        self.checkpointed.append(frame)
        return frame

    def release(self) -> None:
        for frame in self.cached:
            frame.unpersist()
        self.cached.clear()
        for frame in self.checkpointed:
            # The checkpoint's blocks belong to the RDD under its plan; unpersisting the
            # DataFrame would not free them (only the JVM's garbage collector would, later).
            frame._jdf.queryExecution().analyzed().rdd().unpersist(False)
        self.checkpointed.clear()


@dataclass(frozen=True)
class Indexed:
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


@dataclass(frozen=True)
class Vocabulary:
    frame: DataFrame  # key, index, count
    stats: VocabStats
    hash_join: bool  # no two keys of the column share a 64-bit hash: apply_vocab(hashed=True) is exact


def vocabulary(ctx: BuildContext, kept: DataFrame, column: str) -> Vocabulary:
    """Build, write and describe one column's vocabulary."""
    parent_vocab, parent_size, parent_keys = None, 0, 0
    if ctx.parent is not None:
        parent_dir = ctx.store.snapshot_dir(ctx.dataset, ctx.parent.snapshot_id) / vocab_dir(column)
        parent_vocab = ctx.spark.read.parquet(str(parent_dir))
        parent_size, parent_keys = ctx.parent.vocab[column].size, ctx.parent.vocab[column].keys
    counts = ctx.persist(key_counts(kept, column))
    built = build_vocab(counts, ctx.min_count, parent_vocab, parent_size)
    vocab = ctx.persist(built.vocab)
    # One file in index order; a local sort (the numbering left a first build in order already).
    vocab.coalesce(1).sortWithinPartitions("index").write.parquet(str(ctx.out / vocab_dir(column)))
    if parent_vocab is None:
        # A first build holds exactly the keys counted min_count times or more, numbered from
        # FIRST_INDEX: one pass over the counts says it all.
        row = counts.agg(
            F.count_if(F.col("count") >= ctx.min_count).alias("keys"),
            F.count_if(F.col("count") < ctx.min_count).alias("rare"),
            F.count(F.lit(1)).alias("counted"),
            F.count_distinct(F.xxhash64("key")).alias("hashes"),
        ).first()
        keys, rare, max_index = row["keys"], row["rare"], row["keys"] + FIRST_INDEX - 1
        hash_join = row["counted"] == row["hashes"]
    else:
        stats = vocab.agg(F.count(F.lit(1)).alias("keys"), F.max("index").alias("max_index")).first()
        keys, rare, max_index = stats["keys"], built.rare.count(), stats["max_index"] or 0
        # Every key that can meet in the index join: the column's and the vocabulary's.
        hash_join = hash_is_injective(counts.select("key").unionByName(parent_vocab.select("key")))
    return Vocabulary(vocab, VocabStats(
        size=max(max_index, parent_size - 1) + 1,
        keys=keys,
        new_keys=keys - parent_keys,
        rare_keys=rare,
    ), hash_join)


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
