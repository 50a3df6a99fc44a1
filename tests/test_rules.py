"""Deduplication rules (schemas.ratings) against a plain-Python reference."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.spark


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from("xy"), st.integers(1, 3),
                               st.sampled_from([1.0, 2.5, 4.0])), min_size=1, max_size=30))
def test_dedup_accounting_matches_a_plain_python_reference(spark, rows):
    from pyspark.sql import functions as F

    from jobs.index.rules import deduplicate, mixed_extra_versions

    valid = spark.createDataFrame(rows, "user string, item string, ts long, rating_value double")
    pairs = deduplicate(valid)
    totals = pairs.agg(F.count(F.lit(1)), F.sum("rows"), F.sum("times"), F.sum("mixed")).first()
    versions = totals[2] + (mixed_extra_versions(valid) if totals[3] else 0)
    distinct = set(rows)
    latest = {}
    for user, item, ts, rating in rows:
        latest[(user, item)] = max(latest.get((user, item), (ts, rating)), (ts, rating))
    assert totals[0] == len(latest) and totals[1] == len(rows)
    assert versions == len(distinct)  # duplicates = rows - versions, superseded = versions - kept
    got = {(r["user"], r["item"]): (r["ts"], r["rating"]) for r in pairs.collect()}
    assert got == latest
