"""Validation and deduplication as Spark transformations (no I/O).

See schemas.ratings for the contract: every row is kept, quarantined (first
failing Reason), an exact duplicate, or superseded by a later rating of the
same (user, item).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from schemas.ratings import CANONICAL_COLUMNS, Reason

#: Timestamps must lie within +-(year 10000) seconds of the epoch.
MAX_ABS_SECONDS = 253_402_300_800
#: Raw text kept for quarantined rows only (NULL on valid rows keeps the cached data narrow).
RAW_COLUMNS = (*CANONICAL_COLUMNS, "raw_record", "source_file")


def parsed_rating() -> Column:
    return F.col("rating").try_cast("double")


def parsed_timestamp(unit: str) -> Column:
    """Unix seconds from a number (seconds or milliseconds) or an ISO-8601 string; NULL if unparsable
    (a number beyond year 10000 or infinite: Spark's floor would saturate it to the largest long)."""
    raw = F.col("timestamp")
    number = raw.try_cast("double")
    seconds = number / 1000 if unit == "ms" else number
    in_range = ~F.isnan(number) & (F.abs(seconds) < F.lit(MAX_ABS_SECONDS))
    from_number = F.when(in_range, F.floor(seconds).cast("long"))
    from_text = F.unix_seconds(F.try_to_timestamp(raw))
    return F.when(number.isNotNull(), from_number).otherwise(from_text)


def reason(rating_range: tuple[float, float], has_timestamp: bool, unit: str) -> Column:
    """The first failing rule, or NULL for a valid row."""
    low, high = rating_range
    rating = parsed_rating()
    rule = (
        F.when(F.col("raw_record").isNotNull(), F.lit(Reason.MALFORMED_LINE.value))
        .when(F.col("user").isNull(), F.lit(Reason.MISSING_USER.value))
        .when(F.col("item").isNull(), F.lit(Reason.MISSING_ITEM.value))
        .when(F.col("rating").isNull(), F.lit(Reason.MISSING_RATING.value))
        .when(rating.isNull() | F.isnan(rating), F.lit(Reason.NON_NUMERIC_RATING.value))
        .when((rating < low) | (rating > high), F.lit(Reason.RATING_OUT_OF_RANGE.value))
    )
    if has_timestamp:
        rule = rule.when(F.col("timestamp").isNull(), F.lit(Reason.MISSING_TIMESTAMP.value)).when(
            parsed_timestamp(unit).isNull(), F.lit(Reason.UNPARSABLE_TIMESTAMP.value)
        )
    return rule


def validate(raw: DataFrame, rating_range: tuple[float, float], has_timestamp: bool, unit: str) -> DataFrame:
    """Columns: ``user``, ``item``, ``rating_value``, ``ts`` (valid rows), ``reason`` (NULL when
    valid) and, on quarantined rows only, the raw text in ``raw_<column>``."""
    checked = raw.withColumn("reason", reason(rating_range, has_timestamp, unit))
    bad = F.col("reason").isNotNull()
    ts = parsed_timestamp(unit) if has_timestamp else F.lit(None).cast("long")
    return checked.select(
        F.when(~bad, F.col("user")).alias("user"),
        F.when(~bad, F.col("item")).alias("item"),
        F.when(~bad, parsed_rating()).alias("rating_value"),
        F.when(~bad, ts).alias("ts"),
        "reason",
        *[F.when(bad, F.col(c)).alias(f"raw_{c}") for c in RAW_COLUMNS],
    )


def deduplicate(valid: DataFrame) -> DataFrame:
    """One row per (user, item): the latest rating wins (highest timestamp, then highest rating).

    Per pair also ``rows`` (input rows), ``times`` (distinct timestamps) and ``mixed``
    (timestamps at which the pair has more than one distinct rating). When no pair is
    mixed, as in practice, ``versions`` (distinct (rating, timestamp)) = ``times``; see
    ``mixed_extra_versions`` for the exact correction otherwise. Then
    duplicates = rows - versions and superseded = versions - 1 per pair.

    Two aggregations on one hash partitioning by user: a single shuffle of narrow rows,
    and fixed-width buffers only, so Spark runs hash aggregates rather than sorts.
    """
    per_time = (
        valid.repartition("user")
        .groupBy("user", "item", "ts")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.max("rating_value").alias("rating"),
            F.min("rating_value").alias("lowest"),
        )
    )
    # ts is unique within (user, item) here, so max_by is deterministic; NULL ts only when
    # the input has no timestamp column, and then each pair has one row at this level.
    return per_time.groupBy("user", "item").agg(
        F.max_by("rating", F.coalesce("ts", F.lit(-(2**62)))).alias("rating"),
        F.max("ts").alias("ts"),
        F.sum("rows").alias("rows"),
        F.count(F.lit(1)).alias("times"),
        F.sum((F.col("lowest") != F.col("rating")).cast("long")).alias("mixed"),
    )


def mixed_extra_versions(valid: DataFrame) -> int:
    """Distinct (rating, timestamp) versions beyond one per (user, item, timestamp).

    Only needed when some pair has two different ratings at the same timestamp (rare:
    ``deduplicate`` reports them as ``mixed``); this costs another pass over the input.
    """
    per_rating = valid.groupBy("user", "item", "ts", "rating_value").agg(F.lit(1).alias("one"))
    per_time = per_rating.groupBy("user", "item", "ts").agg(F.count(F.lit(1)).alias("ratings"))
    return per_time.agg(F.sum(F.col("ratings") - 1)).first()[0] or 0
