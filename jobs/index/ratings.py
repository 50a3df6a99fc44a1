"""Index ratings: validate, quarantine, deduplicate per (user, item), vocabularies, split (Spark)."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import functions as F

from jobs.index.config import IndexConfig
from jobs.index.probe import ProbedInput
from jobs.index.read import ratings_columns, read_raw
from jobs.index.rules import deduplicate, mixed_extra_versions, quarantined, validate
from jobs.index.split import split_column
from jobs.index.steps import (
    BROADCAST_MAX_KEYS,
    BuildContext,
    Indexed,
    check_read_count,
    no_valid_rows,
    vocabulary,
    write_quarantine,
)
from jobs.index.vocab import apply_vocab
from schemas.errors import InputError
from schemas.ratings import ID_COLUMNS, INTERACTION_COLUMNS, Outcome
from schemas.snapshot import SPLITS, Counts, interactions_dir


def build(cfg: IndexConfig, probed: ProbedInput, ctx: BuildContext) -> Indexed:
    has_ts = cfg.input.columns.timestamp is not None
    raw = read_raw(ctx.spark, probed, ratings_columns(cfg.input.columns))
    checked = validate(raw, cfg.rating_range, has_ts, cfg.input.timestamp_unit, cfg.max_key_length)
    # One pass over the input: valid rows deduplicated per (user, item) and the quarantined
    # rows share one shuffle; the result is reused for the quarantine, counts, vocabularies, writes.
    with ctx.timed("deduplicate"):
        grouped = ctx.checkpoint(deduplicate(checked))
        pairs = grouped.filter(F.col("bad").isNull())
        totals = pairs.agg(
            F.count(F.lit(1)).alias("kept"), F.sum("rows").alias("rows"), F.sum("times").alias("times"),
            F.sum("mixed").alias("mixed"),
        ).first()
    with ctx.timed("quarantine"):
        reasons = write_quarantine(ctx, quarantined(grouped))
    if totals["mixed"]:  # rare: another pass over the input for the exact count of versions
        versions = totals["times"] + mixed_extra_versions(checked.filter(F.col("bad").isNull()))
    else:
        versions = totals["times"] or 0
    valid_rows = totals["rows"] or 0
    if valid_rows == 0:
        raise InputError(no_valid_rows(cfg.input.path, reasons))
    check_read_count(probed, valid_rows + sum(reasons.values()))
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
        with ctx.timed(f"vocab_{column}"):
            vocab = vocabulary(ctx, kept, column)
        vocab_stats[column] = vocab.stats
        interactions = apply_vocab(interactions, column, vocab.frame, broadcast=vocab.stats.keys <= BROADCAST_MAX_KEYS,
                                   hashed=vocab.hash_join)
    with ctx.timed("write_interactions"):
        interactions.select(
            F.col("user").cast("int"), F.col("item").cast("int"), F.col("rating").cast("float"),
            F.col("ts").alias("timestamp").cast("long"), "split",
        ).write.partitionBy("split").parquet(str(ctx.out / "interactions"))
    split_rows = _ensure_splits(ctx.out)
    counts = Counts(
        read=sum(outcomes.values()),
        kept=outcomes[Outcome.KEPT],
        quarantined=outcomes[Outcome.QUARANTINED],
        duplicates=outcomes[Outcome.DUPLICATE],
        superseded=outcomes[Outcome.SUPERSEDED],
        quarantine_reasons=dict(sorted(reasons.items())),
        train=split_rows["train"],
        valid=split_rows["valid"],
    )
    return Indexed(counts, vocab_stats, split_record, {"rating_range": cfg.rating_range})


def _ensure_splits(out: Path) -> dict[str, int]:
    """Row counts per split from Parquet footers; an empty split gets an empty file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

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
