"""Checks on the raw text of fields that both input kinds share (Spark expressions, no I/O)."""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce

from pyspark.sql import Column
from pyspark.sql import functions as F

#: What Spark's decoder puts in place of bytes that are not UTF-8 (CSV and JSON are decoded on read).
REPLACEMENT_CHARACTER = "\ufffd"


def has_line_break(field: Column) -> Column:
    """A line break inside a field: a quoted CSV field that spans lines (or an escaped ``\\n`` in JSON)."""
    return field.contains("\n") | field.contains("\r")


def is_invalid_utf8(field: Column) -> Column:
    """Bytes that were not UTF-8. The CSV and JSON readers have already replaced them with U+FFFD, so a
    literal U+FFFD in the input counts as invalid too; Parquet strings keep their bytes: the byte check."""
    return field.contains(REPLACEMENT_CHARACTER) | ~F.is_valid_utf8(field)


def is_too_long(field: Column, max_length: int) -> Column:
    return F.length(field) > F.lit(max_length)


def any_field(fields: list[str], test: Callable[[Column], Column]) -> Column:
    """Whether ``test`` holds for any of the columns ``fields`` (a NULL field passes)."""
    return reduce(lambda a, b: a | b, [F.coalesce(test(F.col(name)), F.lit(False)) for name in fields])


def first_failing_field(fields: dict[str, str], test: Callable[[Column], Column]) -> Column:
    """The name (a key of ``fields``: name -> column) of the first field ``test`` holds for, else NULL."""
    named = None
    for name, column in fields.items():
        hit = F.coalesce(test(F.col(column)), F.lit(False))
        named = F.when(hit, F.lit(name)) if named is None else named.when(hit, F.lit(name))
    return named
