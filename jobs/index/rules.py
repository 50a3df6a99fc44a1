"""Validation and deduplication as Spark column expressions (no I/O).

See schemas.ratings for the contract: every row gets exactly one Outcome, and
quarantined rows get the first failing Reason.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.index.read import POSITION
from schemas.ratings import Outcome, Reason


def parsed_rating() -> Column:
    return F.col("rating").try_cast("double")


def parsed_timestamp(unit: str) -> Column:
    """Unix seconds from a number (seconds or milliseconds) or an ISO-8601 string."""
    raw = F.col("timestamp")
    number = raw.try_cast("double")
    seconds = F.floor(number / 1000) if unit == "ms" else F.floor(number)
    from_number = F.when(~F.isnan(number), seconds.try_cast("long"))
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


def classify(raw: DataFrame, rating_range: tuple[float, float], has_timestamp: bool, unit: str) -> DataFrame:
    """Add ``reason``, typed ``rating_value``/``ts`` and the row's ``outcome``.

    Within one (user, item) the latest rating wins: ordered by timestamp, then
    rating, then input position, all descending. A row equal to its predecessor
    in that order on (rating, timestamp) is an exact duplicate; any other
    non-first row is superseded.
    """
    ts = parsed_timestamp(unit) if has_timestamp else F.lit(None).cast("long")
    frame = raw.withColumn("reason", reason(rating_range, has_timestamp, unit)).select(
        "*",
        F.when(F.col("reason").isNull(), parsed_rating()).alias("rating_value"),
        F.when(F.col("reason").isNull(), ts).alias("ts"),
    )
    ok = F.col("reason").isNull()
    order = Window.partitionBy(ok, "user", "item").orderBy(
        F.col("ts").desc_nulls_last(), F.col("rating_value").desc(), F.col(POSITION).desc()
    )
    same_as_previous = (F.lag("rating_value").over(order) == F.col("rating_value")) & F.lag("ts").over(
        order
    ).eqNullSafe(F.col("ts"))
    outcome = (
        F.when(~ok, F.lit(Outcome.QUARANTINED.value))
        .when(F.row_number().over(order) == 1, F.lit(Outcome.KEPT.value))
        .when(same_as_previous, F.lit(Outcome.DUPLICATE.value))
        .otherwise(F.lit(Outcome.SUPERSEDED.value))
    )
    return frame.withColumn("outcome", outcome)
