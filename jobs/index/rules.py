"""Validation and deduplication as Spark transformations (no I/O).

See schemas.ratings for the contract: every row is kept, quarantined (first
failing Reason), an exact duplicate, or superseded by a later rating of the
same (user, item).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.index.text import any_field, has_line_break, is_invalid_utf8, is_too_long
from schemas.ratings import CANONICAL_COLUMNS, ID_COLUMNS, QUARANTINE_COLUMNS, Reason

#: Timestamps must lie within +-(year 10000) seconds of the epoch.
MAX_ABS_SECONDS = 253_402_300_800
#: Raw text kept for quarantined rows only (NULL on valid rows keeps the shuffled data narrow).
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


def reason(rating_range: tuple[float, float], has_timestamp: bool, max_key_length: int, rating: Column,
           ts: Column) -> Column:
    """The first failing rule, or NULL for a valid row; ``rating`` and ``ts`` are the parsed values
    (``parsed_rating``, ``parsed_timestamp``), computed once by the caller."""
    low, high = rating_range
    text = list(CANONICAL_COLUMNS)  # an unmapped timestamp is a NULL column: it passes the text checks
    rule = (
        F.when(F.col("raw_record").isNotNull(), F.lit(Reason.MALFORMED_LINE.value))
        .when(any_field(text, has_line_break), F.lit(Reason.EMBEDDED_NEWLINE.value))
        .when(any_field(text, is_invalid_utf8), F.lit(Reason.INVALID_UTF8.value))
        .when(F.col("user").isNull(), F.lit(Reason.MISSING_USER.value))
        .when(F.col("item").isNull(), F.lit(Reason.MISSING_ITEM.value))
        .when(any_field(list(ID_COLUMNS), lambda key: is_too_long(key, max_key_length)),
              F.lit(Reason.KEY_TOO_LONG.value))
        .when(F.col("rating").isNull(), F.lit(Reason.MISSING_RATING.value))
        .when(rating.isNull() | F.isnan(rating), F.lit(Reason.NON_NUMERIC_RATING.value))
        .when((rating < low) | (rating > high), F.lit(Reason.RATING_OUT_OF_RANGE.value))
    )
    if has_timestamp:
        rule = (
            rule.when(F.col("timestamp").isNull(), F.lit(Reason.MISSING_TIMESTAMP.value))
            .when(ts.isNull(), F.lit(Reason.UNPARSABLE_TIMESTAMP.value))
            .when(ts < 0, F.lit(Reason.NEGATIVE_TIMESTAMP.value))
        )
    return rule


def validate(raw: DataFrame, rating_range: tuple[float, float], has_timestamp: bool, unit: str,
             max_key_length: int) -> DataFrame:
    """Columns ``user``, ``item``, ``rating_value``, ``ts`` (NULL on quarantined rows) and ``bad``:
    NULL on valid rows, else a struct of the raw text (RAW_COLUMNS) and the ``reason``.

    Each parser runs once per row: the parsed values are columns of their own before the
    rules read them (inlined, the rules and the outputs would parse the text again), and
    no filter follows (the optimizer would copy the whole rule set into it).
    """
    parsed = raw.select(
        "*",
        parsed_rating().alias("rating_value"),
        (parsed_timestamp(unit) if has_timestamp else F.lit(None).cast("long")).alias("ts"),
    )
    checked = parsed.withColumn(
        "reason", reason(rating_range, has_timestamp, max_key_length, F.col("rating_value"), F.col("ts"))
    )
    ok = F.col("reason").isNull()
    return checked.select(
        *[F.when(ok, F.col(c)).alias(c) for c in ("user", "item", "rating_value", "ts")],
        F.when(~ok, F.struct(*RAW_COLUMNS, "reason")).alias("bad"),
    )


def deduplicate(checked: DataFrame) -> DataFrame:
    """One row per (user, item): the latest rating wins (highest timestamp, then highest rating).

    Per pair also ``rows`` (input rows), ``times`` (distinct timestamps) and ``mixed``
    (timestamps at which the pair has more than one distinct rating). When no pair is
    mixed, as in practice, ``versions`` (distinct (rating, timestamp)) = ``times``; see
    ``mixed_extra_versions`` for the exact correction otherwise. Then
    duplicates = rows - versions and superseded = versions - 1 per pair.

    Quarantined rows (``bad`` not NULL, from ``validate``) ride along: one row per distinct
    ``bad`` value, ``rows`` copies of it, so the quarantine needs no second pass over the input.

    Two aggregations on one hash partitioning by user: a single shuffle of narrow rows,
    and fixed-width buffers only, so Spark runs hash aggregates rather than sorts.
    """
    if "bad" not in checked.columns:  # valid rows only
        checked = checked.withColumn("bad", F.lit(None).cast("struct<reason:string>"))
    per_time = (
        # bad is NULL on valid rows; hashing on it too spreads the quarantined rows
        checked.repartition("user", "bad")
        .groupBy("user", "item", "ts", "bad")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.max("rating_value").alias("rating"),
            F.min("rating_value").alias("lowest"),
        )
    )
    # ts is unique within (user, item) here, so max_by is deterministic; NULL ts only when
    # the input has no timestamp column, and then each pair has one row at this level.
    return per_time.groupBy("user", "item", "bad").agg(
        F.max_by("rating", F.coalesce("ts", F.lit(-(2**62)))).alias("rating"),
        F.max("ts").alias("ts"),
        F.sum("rows").alias("rows"),
        F.count(F.lit(1)).alias("times"),
        F.sum((F.col("lowest") != F.col("rating")).cast("long")).alias("mixed"),
    )


def quarantined(grouped: DataFrame) -> DataFrame:
    """The quarantined rows of ``deduplicate``'s output, each copy of a repeated bad row again,
    in the quarantine table's columns."""
    copies = F.explode(F.array_repeat("bad", F.col("rows").cast("int"))).alias("row")
    return grouped.filter(F.col("bad").isNotNull()).select(copies).select("row.*").select(*QUARANTINE_COLUMNS)


def mixed_extra_versions(valid: DataFrame) -> int:
    """Distinct (rating, timestamp) versions beyond one per (user, item, timestamp).

    Only needed when some pair has two different ratings at the same timestamp (rare:
    ``deduplicate`` reports them as ``mixed``); this costs another pass over the input.
    """
    per_rating = valid.groupBy("user", "item", "ts", "rating_value").agg(F.lit(1).alias("one"))
    per_time = per_rating.groupBy("user", "item", "ts").agg(F.count(F.lit(1)).alias("ratings"))
    return per_time.agg(F.sum(F.col("ratings") - 1)).first()[0] or 0
