"""Deduplication rules (schemas.ratings) against a plain-Python reference."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


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


# Raw rows as text: "x" is a non-numeric rating and "" a missing user; both must be quarantined.
_RAW_ROW = st.tuples(st.sampled_from(["a", "b", ""]), st.sampled_from("xy"), st.sampled_from(["1", "2.5", "x"]),
                     st.sampled_from(["1", "2", "3"]))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_RAW_ROW, min_size=1, max_size=30))
def test_one_pass_validation_dedup_and_quarantine_match_a_plain_python_reference(spark, rows):
    """validate -> deduplicate -> quarantined: bad rows ride through the dedup's shuffle, each
    comes out once per input copy with its reason; valid rows dedup as in the reference."""
    from pyspark.sql import functions as F

    from jobs.index.rules import deduplicate, mixed_extra_versions, quarantined, validate

    raw = spark.createDataFrame(
        [(u or None, i, r, t, None, "f.csv") for u, i, r, t in rows],
        "user string, item string, rating string, timestamp string, raw_record string, source_file string",
    )
    checked = validate(raw, (0.5, 5.0), True, "s", max_key_length=256)
    grouped = deduplicate(checked)
    pairs = grouped.filter(F.col("bad").isNull())
    totals = pairs.agg(F.count(F.lit(1)), F.sum("rows"), F.sum("times"), F.sum("mixed")).first()
    valid = checked.filter(F.col("bad").isNull())
    versions = (totals[2] or 0) + (mixed_extra_versions(valid) if totals[3] else 0)

    def why(user, rating):
        return "missing_user" if not user else "non_numeric_rating" if rating == "x" else None

    good = [(u, i, int(t), float(r)) for u, i, r, t in rows if why(u, r) is None]
    latest = {}
    for user, item, ts, rating in good:
        latest[(user, item)] = max(latest.get((user, item), (ts, rating)), (ts, rating))
    def in_order(quarantine_rows):
        return sorted(quarantine_rows, key=lambda row: [(v is None, v or "") for v in row])

    expected_bad = in_order((u or None, i, r, t, None, why(u, r), "f.csv") for u, i, r, t in rows if why(u, r))

    assert (totals[0] or 0, totals[1] or 0, versions) == (len(latest), len(good), len(set(good)))
    assert {(r["user"], r["item"]): (r["ts"], r["rating"]) for r in pairs.collect()} == latest
    assert in_order(tuple(r) for r in quarantined(grouped).collect()) == expected_bad
