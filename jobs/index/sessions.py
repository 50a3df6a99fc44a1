"""Kept events -> ordered per user, cut into sessions and chunks, last events held out (Spark, no I/O).

The rules are schemas.events'. One window specification per user (ordered by
time, then the token's numeric value, then its text) gives every event its
position, its session and its chunk in one sort.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from schemas.vocab import UNKNOWN_INDEX

ORDER = "timestamp (ms), then the token's numeric value when it is a number (numbers first), then the token's UTF-8 text"


def _order():
    return Window.partitionBy("user").orderBy(
        "ts", F.col("token").try_cast("double").asc_nulls_last(), F.col("token").asc()
    )


def sessionize(events: DataFrame, gap_ms: int, max_length: int, holdout: int, history_length: int) -> DataFrame:
    """Per event (columns ``user`` key, ``user_index``, ``ts``, ``token``, ``token_index``) add:

    ``pos`` (1-based position in the user's order), ``session`` (1-based), ``chunk`` (0-based
    within the session), ``held`` (a validation event) and ``recent`` (among the user's last
    ``history_length`` events). Users at the unknown index are never held out and have no history.
    """
    order = _order()
    running = order.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    previous = F.lag("ts").over(order)
    starts = previous.isNull()
    if gap_ms > 0:
        starts = starts | (F.col("ts") - previous > F.lit(gap_ms))  # exactly the gap stays in the session
    staged = events.select(
        "*",
        F.row_number().over(order).alias("pos"),
        starts.alias("starts"),
        F.count(F.lit(1)).over(Window.partitionBy("user")).alias("events"),
    )
    session_start = F.max(F.when(F.col("starts"), F.col("pos"))).over(running)
    indexed = F.col("user_index") != F.lit(UNKNOWN_INDEX)
    return staged.select(
        "user", "user_index", "ts", "token_index", "pos", "events",
        F.sum(F.col("starts").cast("int")).over(running).alias("session"),
        F.floor((F.col("pos") - session_start) / F.lit(max_length)).cast("int").alias("chunk"),
        (indexed & (F.col("events") > holdout) & (F.col("pos") > F.col("events") - holdout)).alias("held"),
        (indexed & (F.col("pos") > F.col("events") - history_length)).alias("recent"),
    )


def _in_order(value: str) -> Column:
    """The ``value`` column of a group's rows as a list in ``pos`` order."""
    return F.transform(F.array_sort(F.collect_list(F.struct("pos", value))), lambda row: row[value])


def training_sessions(ordered: DataFrame) -> DataFrame:
    """schemas.events.SESSION_COLUMNS rows: the training events of each session chunk, in order.

    Grouped by the user's key (not only the index) so that users at the unknown index keep
    their own sessions."""
    train = ordered.filter(~F.col("held"))
    return train.groupBy("user", "user_index", "session", "chunk").agg(
        F.min("ts").alias("start_ms"),
        F.max("ts").alias("end_ms"),
        F.count(F.lit(1)).cast("int").alias("length"),
        _in_order("token_index").alias("tokens"),
    ).select(
        F.col("user_index").cast("int").alias("user"), F.col("session").cast("int"), "chunk",
        F.col("start_ms").cast("long"), F.col("end_ms").cast("long"), "length",
        F.col("tokens").cast("array<int>"),
    )


def histories(ordered: DataFrame) -> DataFrame:
    """schemas.events.HISTORY_COLUMNS rows: each indexed user's last events, held-out ones last."""
    return ordered.filter(F.col("recent")).groupBy("user_index").agg(
        F.max("events").alias("events"),
        _in_order("token_index").alias("recent"),
        F.sum(F.col("held").cast("int")).alias("held_out"),
    ).select(
        F.col("user_index").cast("int").alias("user"), F.col("events").cast("long"),
        F.col("recent").cast("array<int>"), F.col("held_out").cast("int"),
    )


def session_stats(ordered: DataFrame, max_length: int) -> dict[str, int]:
    """Counts for the manifest, from the events (not the chunks): sessions, chunks, the longest."""
    per_session = ordered.filter(~F.col("held")).groupBy("user", "session").agg(F.count(F.lit(1)).alias("n"))
    row = per_session.agg(
        F.count(F.lit(1)).alias("sessions"),
        F.sum(F.ceil(F.col("n") / F.lit(max_length))).alias("chunks"),
        F.sum((F.col("n") > max_length).cast("int")).alias("chunked_sessions"),
        F.max("n").alias("longest_session"),
    ).first()
    users = ordered.groupBy("user").agg(
        F.max((F.col("user_index") != F.lit(UNKNOWN_INDEX)).cast("int")).alias("indexed"),
        F.max(F.col("held").cast("int")).alias("held"),
    ).agg(
        F.count(F.lit(1)).alias("users"), F.sum("indexed").alias("users_indexed"), F.sum("held").alias("users_held_out")
    ).first()
    return {**{k: int(row[k] or 0) for k in ("sessions", "chunks", "chunked_sessions", "longest_session")},
            **{k: int(users[k] or 0) for k in ("users", "users_indexed", "users_held_out")}}
