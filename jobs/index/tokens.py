"""Event rows -> validated tokens, as Spark expressions (no I/O). The contract is schemas.events.

Canonical columns after ``read_raw``: ``user``, ``timestamp``, ``type`` and one
column per template field (see ``field_column``), all trimmed text or NULL.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.index.config import BucketConfig, EventsConfig
from jobs.index.text import first_failing_field, has_line_break, is_invalid_utf8, is_too_long
from schemas.events import ANY_TYPE, TYPE, Reason, bucket_labels, template_parts

#: Timestamps must lie within +-(year 10000): 253,402,300,800 s after the epoch.
MAX_ABS_MILLIS = 253_402_300_800_000
#: Raw text kept for quarantined rows (NULL on valid rows keeps the data narrow).
RAW_EVENT_COLUMNS = ("user", "timestamp", "type", "raw_record", "source_file")


def field_column(index: int) -> str:
    """Canonical name of the template field at ``index`` of ``EventsConfig.fields()``."""
    return f"field_{index}"


def event_columns(user: str, timestamp: str, type_column: str | None, events: EventsConfig) -> dict[str, str | None]:
    """Canonical column -> raw column, for ``read_raw``."""
    columns = {"user": user, "timestamp": timestamp, "type": type_column}
    columns.update({field_column(i): name for i, name in enumerate(events.fields())})
    return columns


def parsed_time_ms(unit: str) -> Column:
    """Unix milliseconds from a number (seconds or milliseconds) or an ISO-8601 string; NULL if unparsable.

    A number beyond year 10000 (or infinite) is unparsable: Spark's floor would saturate it to the
    largest long, a time that sorts last and overflows the gap arithmetic."""
    raw = F.col("timestamp")
    number = raw.try_cast("double")
    millis = number * 1000 if unit == "s" else number
    from_number = F.when(~F.isnan(number) & (F.abs(millis) < F.lit(MAX_ABS_MILLIS)), F.floor(millis).cast("long"))
    from_text = F.unix_millis(F.try_to_timestamp(raw))
    return F.when(number.isNotNull(), from_number).otherwise(from_text)


def bucket_label(value: Column, bucket: BucketConfig) -> Column:
    """The bucket label of a number: see schemas.events.bucket_label, its reference."""
    edges = bucket.bucket_edges()
    below = F.size(F.filter(F.array(*[F.lit(float(e)) for e in edges]), lambda edge: edge <= value))
    return F.element_at(F.array(*[F.lit(label) for label in bucket_labels(edges, bucket.unit)]), below + 1)


@dataclass(frozen=True)
class Check:
    condition: Column
    reason: Reason
    detail: Column


class EventRules:
    """The ordered checks, the token of a valid row, and the key that makes rows exact duplicates."""

    def __init__(self, events: EventsConfig, has_type: bool, unit: str, max_key_length: int):
        self.events, self.has_type, self.unit, self.max_key_length = events, has_type, unit, max_key_length
        self.fields = {name: field_column(i) for i, name in enumerate(events.fields())}
        listed = [t for t in events.templates if t != ANY_TYPE]
        self.types: list[tuple[str, Column]] = []  # (template key, condition that a row has that type)
        for event_type in listed:
            self.types.append((event_type, F.col("type") == F.lit(event_type)))
        if ANY_TYPE in events.templates:
            other = ~F.col("type").isin(listed) if (has_type and listed) else F.lit(True)
            self.types.append((ANY_TYPE, other))

    def _value(self, name: str) -> Column:
        return F.col("type") if name == TYPE else F.col(self.fields[name])

    def _number(self, name: str) -> Column:
        return F.col(self.fields[name]).try_cast("double")

    def _field_check(self, fields: dict[str, str], test, reason: Reason) -> Check:
        """Fails when ``test`` holds for any of ``fields`` (name -> column); the detail names the first."""
        failing = first_failing_field(fields, test)
        return Check(failing.isNotNull(), reason, failing)

    def checks(self) -> list[Check]:
        """In Reason's order. The last reads the ``token`` column (``validate_events`` adds it first)."""
        none = F.lit(None).cast("string")
        # An unmapped type is a NULL column: it passes the text checks.
        text = {"user": "user", "timestamp": "timestamp", "type": "type", **self.fields}
        time_ms = parsed_time_ms(self.unit)
        checks = [
            Check(F.col("raw_record").isNotNull(), Reason.MALFORMED_LINE, none),
            self._field_check(text, has_line_break, Reason.EMBEDDED_NEWLINE),
            self._field_check(text, is_invalid_utf8, Reason.INVALID_UTF8),
            Check(F.col("user").isNull(), Reason.MISSING_USER, none),
            Check(F.col("timestamp").isNull(), Reason.MISSING_TIMESTAMP, none),
            Check(time_ms.isNull(), Reason.UNPARSABLE_TIMESTAMP, F.col("timestamp")),
            Check(time_ms < 0, Reason.NEGATIVE_TIMESTAMP, F.col("timestamp")),
        ]
        if self.has_type:
            checks.append(Check(F.col("type").isNull(), Reason.MISSING_TYPE, none))
        if ANY_TYPE not in self.events.templates:
            checks.append(Check(~F.col("type").isin(list(self.events.templates)), Reason.UNKNOWN_TYPE, F.col("type")))
        templates = dict(self.events.templates)
        for event_type, is_type in self.types:
            for name in self._used(templates[event_type]):
                checks.append(Check(is_type & self._value(name).isNull(), Reason.MISSING_FIELD, F.lit(name)))
        for event_type, is_type in self.types:
            for name in self._bucketed(templates[event_type]):
                number = self._number(name)
                checks.append(Check(is_type & (number.isNull() | F.isnan(number)), Reason.NON_NUMERIC_FIELD,
                                    F.lit(name)))
        for event_type, is_type in self.types:
            for name in self._bucketed(templates[event_type]):
                if self.events.buckets[name].is_log:
                    checks.append(Check(is_type & (self._number(name) < 0), Reason.NEGATIVE_FIELD, F.lit(name)))
        keys = {"user": "user", "token": "token"}  # the two vocabularies' keys
        checks.append(self._field_check(keys, lambda key: is_too_long(key, self.max_key_length), Reason.KEY_TOO_LONG))
        return checks

    def _used(self, template: str) -> list[str]:
        return list(dict.fromkeys(name for _, name in template_parts(template) if name))

    def _bucketed(self, template: str) -> list[str]:
        return [name for name in self._used(template) if name in self.events.buckets]

    def reason_and_detail(self) -> tuple[Column, Column]:
        """The first failing check's reason and the field (or value) at fault; NULL for a valid row."""
        reason = detail = None
        for check in self.checks():
            if reason is None:
                reason = F.when(check.condition, F.lit(check.reason.value))
                detail = F.when(check.condition, check.detail)
            else:
                reason = reason.when(check.condition, F.lit(check.reason.value))
                detail = detail.when(check.condition, check.detail)
        return reason, detail

    def token(self) -> Column:
        """The token of a valid row: its type's template with fields (and bucket labels) filled in."""
        token = None
        for event_type, is_type in self.types:
            parts = []
            for literal, name in template_parts(self.events.templates[event_type]):
                if literal:
                    parts.append(F.lit(literal))
                if name is None:
                    continue
                if name in self.events.buckets:
                    parts.append(bucket_label(self._number(name), self.events.buckets[name]))
                else:
                    parts.append(self._value(name))
            value = F.concat(*parts) if parts else F.lit("")
            token = F.when(is_type, value) if token is None else token.when(is_type, value)
        return token

    def identity(self) -> list[str]:
        """Columns that make two valid rows exact duplicates: user, time, type and every template field."""
        return ["user", "ts", "type", *self.fields.values()]


def validate_events(raw: DataFrame, rules: EventRules) -> DataFrame:
    """Columns: ``user``, ``ts`` (ms), ``type``, the fields and ``token`` on valid rows; ``reason``
    and ``detail`` (NULL when valid); the raw text and a JSON of the fields on quarantined rows."""
    reason, detail = rules.reason_and_detail()
    # The token first, as a column of its own: the key length check and the output read it once.
    checked = raw.withColumn("token", rules.token()).withColumn("reason", reason).withColumn("detail", detail)
    bad = F.col("reason").isNotNull()
    field_json = F.to_json(F.struct(*[F.col(column).alias(name) for name, column in rules.fields.items()])) \
        if rules.fields else F.lit("{}")
    return checked.select(
        F.when(~bad, F.col("user")).alias("user"),
        F.when(~bad, parsed_time_ms(rules.unit)).alias("ts"),
        F.when(~bad, F.col("type")).alias("type"),
        *[F.when(~bad, F.col(column)).alias(column) for column in rules.fields.values()],
        F.when(~bad, F.col("token")).alias("token"),
        "reason",
        "detail",
        *[F.when(bad, F.col(c)).alias(f"raw_{c}") for c in RAW_EVENT_COLUMNS],
        F.when(bad, field_json).alias("raw_fields"),
    )
