"""Index an event log: validate, quarantine, drop exact duplicates, tokens, vocabularies, sessions (Spark)."""

from __future__ import annotations

from pyspark.sql import functions as F

from jobs.index.config import IndexConfig
from jobs.index.probe import ProbedInput
from jobs.index.read import read_raw
from jobs.index.sessions import ORDER, histories, session_stats, sessionize, training_sessions
from jobs.index.steps import (
    BROADCAST_MAX_KEYS,
    BuildContext,
    Indexed,
    check_read_count,
    no_valid_rows,
    vocabulary,
    write_quarantine,
)
from jobs.index.tokens import RAW_EVENT_COLUMNS, EventRules, event_columns, validate_events
from jobs.index.vocab import apply_vocab
from schemas.errors import InputError
from schemas.events import QUARANTINE_COLUMNS
from schemas.snapshot import HISTORIES_DIR, SESSIONS_DIR, Counts, SessionStats

#: Entity vocabularies of an events snapshot.
ENTITIES = ("user", "token")


def build(cfg: IndexConfig, probed: ProbedInput, ctx: BuildContext) -> Indexed:
    events, columns = cfg.events, cfg.input.columns
    rules = EventRules(events, has_type=columns.type is not None, unit=cfg.input.timestamp_unit,
                       max_key_length=cfg.max_key_length)
    raw = read_raw(ctx.spark, probed, event_columns(columns.user, columns.timestamp, columns.type, events))
    parsed = validate_events(raw, rules)
    with ctx.timed("quarantine"):
        reasons = write_quarantine(ctx, parsed.filter(F.col("reason").isNotNull()).select(
            *[F.col(f"raw_{c}").alias(c) for c in RAW_EVENT_COLUMNS], F.col("raw_fields").alias("fields"),
            "reason", "detail",
        ).select(*QUARANTINE_COLUMNS))
    valid = parsed.filter(F.col("reason").isNull())
    with ctx.timed("deduplicate"):
        if events.drop_duplicates:
            kept = valid.groupBy(*rules.identity()).agg(F.first("token").alias("token"), F.count(F.lit(1)).alias("rows"))
        else:
            kept = valid.select(*rules.identity(), "token", F.lit(1).alias("rows"))
        kept = ctx.persist(kept.select("user", "ts", "token", "rows"))
        totals = kept.agg(F.count(F.lit(1)).alias("kept"), F.sum("rows").alias("rows")).first()
    valid_rows = totals["rows"] or 0
    if valid_rows == 0:
        raise InputError(no_valid_rows(cfg.input.path, reasons))
    check_read_count(probed, valid_rows + sum(reasons.values()))

    vocab_stats, indexed = {}, kept
    for entity in ENTITIES:  # keep the keys (sessions are per user key; ties break on the token's text)
        with ctx.timed(f"vocab_{entity}"):
            vocab = vocabulary(ctx, kept, entity)
        vocab_stats[entity] = vocab.stats
        indexed = apply_vocab(indexed.withColumn(f"{entity}_index", F.col(entity)), f"{entity}_index", vocab.frame,
                              broadcast=vocab.stats.keys <= BROADCAST_MAX_KEYS, hashed=vocab.hash_join)
    ordered = ctx.persist(sessionize(indexed, events.session_gap_seconds * 1000, events.max_length, events.holdout,
                                     events.history_length))
    with ctx.timed("write_sessions"):
        training_sessions(ordered).repartition("user").sortWithinPartitions("user", "session", "chunk") \
            .write.parquet(str(ctx.out / SESSIONS_DIR))
    with ctx.timed("write_histories"):
        histories(ordered).repartition("user").sortWithinPartitions("user").write.parquet(str(ctx.out / HISTORIES_DIR))
    with ctx.timed("session_stats"):
        stats = session_stats(ordered, events.max_length)
        held = ordered.filter(F.col("held")).count()
    counts = Counts(
        read=valid_rows + sum(reasons.values()),
        kept=totals["kept"],
        quarantined=sum(reasons.values()),
        duplicates=valid_rows - totals["kept"],
        superseded=0,
        quarantine_reasons=dict(sorted(reasons.items())),
        train=totals["kept"] - held,
        valid=held,
    )
    sessions = SessionStats(
        **stats, session_gap_seconds=events.session_gap_seconds, max_length=events.max_length,
        holdout=events.holdout, history_length=events.history_length, order=ORDER,
    )
    split = {"kind": "last", "holdout": events.holdout}
    return Indexed(counts, vocab_stats, split, {"sessions": sessions})
