"""Events indexing: tokens and buckets, quarantine, sessions at their edges, the whole job."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.index.config import BucketConfig, EventsConfig
from jobs.index.job import run
from jobs.index.sessions import histories, sessionize, training_sessions
from jobs.index.tokens import bucket_label as spark_bucket_label
from jobs.stages import resolve_input
from schemas.events import Reason, bucket_label, template_fields
from schemas.snapshot import HISTORIES_DIR, SESSIONS_DIR, vocab_dir
from schemas.store import StoreLayout
from tests.helpers import events_config, read_parquet_dir, write_csv

MINUTE = 60_000


# -- tokens and buckets -------------------------------------------------------------------------

def test_bucket_labels_at_their_edges():
    log = BucketConfig(log_start=250, log_base=2, unit="px").bucket_edges()
    got = [bucket_label(v, log, "px") for v in (0, 249.9, 250, 999, 1000, 1999, 2000)]
    assert got == ["0-250px", "0-250px", "250-500px", "500-1000px", "1000-2000px", "1000-2000px", "2000-4000px"]
    edges = [0, 0.5, 1000]
    assert [bucket_label(v, edges, "") for v in (-1, 0, 0.25, 0.5, 999.5, 1000, 1e9)] == \
        ["<0", "0-0.5", "0-0.5", "0.5-1000", "0.5-1000", "1000+", "1000+"]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edges=st.lists(st.integers(-1000, 5000), min_size=1, max_size=6, unique=True).map(sorted),
       values=st.lists(st.floats(-2000, 9000, allow_nan=False), min_size=1, max_size=20))
def test_spark_bucketing_agrees_with_the_reference(spark, edges, values):
    from pyspark.sql import functions as F

    bucket = BucketConfig(edges=[float(e) for e in edges], unit="u")
    frame = spark.createDataFrame([(v,) for v in values], "v double")
    got = [r[0] for r in frame.select(spark_bucket_label(F.col("v"), bucket)).collect()]
    assert got == [bucket_label(v, bucket.bucket_edges(), "u") for v in values]


def test_bucket_and_session_settings_are_checked():
    for edges in ([0, float("nan"), 10], [0, float("inf")], [5, 5], []):
        with pytest.raises(ValueError):
            BucketConfig(edges=edges)
    assert BucketConfig(log_start=1, log_base=1e5).bucket_edges()[-1] <= 1e300  # no overflow, fewer edges
    with pytest.raises(ValueError, match="history_length .* must exceed holdout"):
        EventsConfig(templates={"*": "{type}"}, holdout=3, history_length=3)


@pytest.mark.parametrize("template", ["{x:>3}", "{x!r}", "{}", "{0}"])
def test_templates_take_plain_fields_only(template):
    with pytest.raises(ValueError, match="plain"):
        template_fields(template)
    with pytest.raises(ValueError):
        EventsConfig(templates={"*": template})


EVENT_HEADER = ["user_id", "ts", "event", "page_type", "portal", "pixels", "item"]
EVENT_TEMPLATES = {"page_view": "{type}:{page_type}:{portal}", "scroll": "{type}:{pixels}", "purchase": "buy-{item}"}
EVENT_BUCKETS = {"pixels": {"log_start": 250, "unit": "px"}}


def _index_events(tmp_path, rows, templates=EVENT_TEMPLATES, **events):
    path = write_csv(tmp_path / "events.csv", EVENT_HEADER, rows)
    cfg = events_config(tmp_path, str(path), templates=templates,
                        events={"buckets": EVENT_BUCKETS, **events})
    return run(cfg.index, StoreLayout(tmp_path / "store"))


def _tokens_by_index(result) -> dict[int, str]:
    vocab = read_parquet_dir(result.path / vocab_dir("token"))
    return dict(zip(vocab["index"], vocab["key"]))


def test_rows_become_tokens_and_each_bad_row_is_quarantined_with_its_reason(spark, tmp_path):
    rows = [
        ["a", "2024-01-01T00:00:00Z", "page_view", "home", "de", "", ""],
        ["a", "2024-01-01T00:01:00Z", "scroll", "home", "", "1500", ""],
        ["a", "2024-01-01T00:02:00Z", "purchase", "", "", "", "sku1"],
        ["a", "2024-01-01T00:02:00Z", "purchase", "", "", "", "sku1"],  # exact duplicate
        ["b", "1704067200", "scroll", "", "", "0", ""],  # Unix seconds are fine
        ["", "2024-01-01T00:00:00Z", "page_view", "home", "de", "", ""],  # missing_user
        ["c", "", "page_view", "home", "de", "", ""],  # missing_timestamp
        ["c", "soon", "page_view", "home", "de", "", ""],  # unparsable_timestamp
        ["c", "1e20", "page_view", "home", "de", "", ""],  # unparsable_timestamp (beyond year 10000)
        ["c", "-Infinity", "page_view", "home", "de", "", ""],  # unparsable_timestamp
        ["c", "2024-01-01T00:00:00Z", "", "home", "de", "", ""],  # missing_type
        ["c", "2024-01-01T00:00:00Z", "heartbeat", "", "", "", ""],  # unknown_type
        ["c", "2024-01-01T00:00:00Z", "page_view", "home", "", "", ""],  # missing_field portal
        ["c", "2024-01-01T00:00:00Z", "scroll", "", "", "lots", ""],  # non_numeric_field
        ["c", "2024-01-01T00:00:00Z", "scroll", "", "", "-5", ""],  # negative_field (log scale)
        ["c", "2024-01-01T00:00:00Z", "page_view", "home", "de", "", "", "extra"],  # malformed_line
    ]
    result = _index_events(tmp_path, rows)
    counts = result.manifest.counts
    assert (counts.read, counts.kept, counts.duplicates, counts.superseded) == (16, 4, 1, 0)
    assert counts.quarantine_reasons == {
        Reason.MALFORMED_LINE: 1, Reason.MISSING_USER: 1, Reason.MISSING_TIMESTAMP: 1,
        Reason.UNPARSABLE_TIMESTAMP: 3, Reason.MISSING_TYPE: 1, Reason.UNKNOWN_TYPE: 1, Reason.MISSING_FIELD: 1,
        Reason.NON_NUMERIC_FIELD: 1, Reason.NEGATIVE_FIELD: 1,
    }
    assert counts.balanced()
    quarantine = read_parquet_dir(result.path / "quarantine")
    assert set(quarantine.loc[quarantine.reason == "unparsable_timestamp", "detail"]) == {"soon", "1e20", "-Infinity"}
    quarantine = quarantine.drop_duplicates("reason").set_index("reason")
    assert quarantine.loc["missing_field", "detail"] == "portal"
    assert quarantine.loc["non_numeric_field", "detail"] == "pixels"
    assert quarantine.loc["unknown_type", "detail"] == "heartbeat"
    assert quarantine.loc["malformed_line", "raw_record"].endswith(",extra")
    tokens = set(_tokens_by_index(result).values())
    assert tokens == {"page_view:home:de", "scroll:1000-2000px", "buy-sku1", "scroll:0-250px"}


def test_a_template_for_any_other_type_replaces_quarantine(spark, tmp_path):
    rows = [["a", "2024-01-01T00:00:00Z", "heartbeat", "", "", "", ""],
            ["a", "2024-01-01T00:00:01Z", "page_view", "home", "de", "", ""]]
    result = _index_events(tmp_path, rows, templates={**EVENT_TEMPLATES, "*": "other:{type}"})
    assert result.manifest.counts.quarantined == 0
    assert set(_tokens_by_index(result).values()) == {"other:heartbeat", "page_view:home:de"}


# -- sessions at their edges --------------------------------------------------------------------

def _ordered(spark, events, gap_minutes=30, max_length=3, holdout=1, history_length=10, unknown_users=()):
    """events: (user, minute or ms, token) rows in any order; token indices follow sorted tokens."""
    tokens = {t: i + 1 for i, t in enumerate(sorted({t for _, _, t in events}))}
    users = {u: (0 if u in unknown_users else i + 1) for i, u in enumerate(sorted({u for u, _, _ in events}))}
    rows = [(u, users[u], int(t), tok, tokens[tok]) for u, t, tok in events]
    frame = spark.createDataFrame(rows, "user string, user_index int, ts long, token string, token_index int")
    ordered = sessionize(frame, gap_minutes * MINUTE, max_length, holdout, history_length)
    names = {i: t for t, i in tokens.items()}
    return ordered, names, users


def _sessions(spark, events, **kw) -> list[tuple]:
    ordered, names, users = _ordered(spark, events, **kw)
    by_index = {i: u for u, i in users.items()}
    rows = training_sessions(ordered).collect()
    return sorted((by_index.get(r["user"], "?"), r["session"], r["chunk"], [names[t] for t in r["tokens"]]) for r in rows)


def test_a_gap_of_exactly_the_limit_stays_in_the_session(spark):
    gap = 30 * MINUTE
    events = [("u", 0, "a"), ("u", gap, "b"), ("u", 2 * gap + 1, "c"), ("u", 2 * gap + 2, "d")]
    assert _sessions(spark, events, holdout=1) == [("u", 1, 0, ["a", "b"]), ("u", 2, 0, ["c"])]


def test_order_is_time_then_numeric_tokens_then_text_whatever_the_input_order(spark):
    events = [("u", 5, "b"), ("u", 5, "10"), ("u", 1, "z"), ("u", 5, "9"), ("u", 5, "a"), ("u", 9, "end")]
    got = _sessions(spark, events, max_length=50)
    assert got == [("u", 1, 0, ["z", "9", "10", "a", "b"])]  # "end" is held out


def test_one_event_sessions_and_users(spark):
    hour = 60 * MINUTE
    events = [("u", 0, "a"), ("u", hour, "b"), ("u", 2 * hour, "c"), ("solo", 0, "a")]
    got = _sessions(spark, events)
    # the single-event user keeps its event for training (nothing held out); u's last event is held out
    assert got == [("solo", 1, 0, ["a"]), ("u", 1, 0, ["a"]), ("u", 2, 0, ["b"])]


def test_a_long_session_is_chunked_never_truncated(spark):
    events = [("u", i, f"t{i}") for i in range(8)]  # 7 train events + 1 held out, max_length 3
    got = _sessions(spark, events, max_length=3)
    assert got == [("u", 1, 0, ["t0", "t1", "t2"]), ("u", 1, 1, ["t3", "t4", "t5"]), ("u", 1, 2, ["t6"])]


def test_no_gap_split_gives_one_sequence_per_user(spark):
    day = 24 * 60 * MINUTE
    got = _sessions(spark, [("u", 0, "a"), ("u", day, "b"), ("u", 9 * day, "c"), ("u", 10 * day, "d")],
                    gap_minutes=0, max_length=50)
    assert got == [("u", 1, 0, ["a", "b", "c"])]


def test_histories_hold_the_last_events_with_the_held_out_ones_last(spark):
    events = [("u", i, f"t{i}") for i in range(6)] + [("rare", 0, "t0"), ("rare", 1, "t1")]
    ordered, names, users = _ordered(spark, events, holdout=2, history_length=4, max_length=10,
                                     unknown_users={"rare"})
    rows = histories(ordered).collect()
    assert len(rows) == 1  # users at the unknown index get no history
    row = rows[0]
    assert (row["events"], row["held_out"]) == (6, 2)
    assert [names[t] for t in row["recent"]] == ["t2", "t3", "t4", "t5"]
    # the unknown user's events stay training sessions, under index 0
    sessions = training_sessions(ordered).collect()
    assert sorted((r["user"], r["length"]) for r in sessions) == [(0, 2), (users["u"], 4)]


# -- the whole job ------------------------------------------------------------------------------

def test_synthetic_log_recovers_the_planted_sessions_and_tokens(tmp_path, spark):
    from tests.helpers import SMALL_EVENTS

    cfg = events_config(tmp_path, synthetic={**SMALL_EVENTS, "dirty": 0.0})
    store = StoreLayout(tmp_path / "store")
    result = run(resolve_input(cfg.index, store), store)  # the stage generates the log, the job reads it
    manifest = result.manifest
    assert manifest.kind == "events" and manifest.counts.balanced()
    assert manifest.counts.quarantined == 0 and manifest.counts.duplicates == 0
    stats = manifest.sessions
    assert stats.users == stats.users_indexed == SMALL_EVENTS["users"]
    assert stats.chunks == stats.sessions + sum(  # every chunked session adds its extra chunks
        len(range(0, n, stats.max_length)) - 1 for n in _session_lengths(result))
    sessions = read_parquet_dir(result.path / SESSIONS_DIR)
    assert (sessions.tokens.map(len) == sessions.length).all() and sessions.length.max() <= stats.max_length
    assert sessions.length.sum() == manifest.counts.train
    hist = read_parquet_dir(result.path / HISTORIES_DIR)
    assert hist.held_out.sum() == manifest.counts.valid == stats.users_held_out
    # the generator's sessions are >= 31 minutes apart with events <= 20 minutes apart: all recovered
    from jobs.synthetic.config import SyntheticEvents
    from jobs.synthetic.events import generate_columns

    generated, _, _ = generate_columns(SyntheticEvents(**{**SMALL_EVENTS, "dirty": 0.0}))
    frame = pd.DataFrame({"user": generated["user"], "ms": generated["ms"]})  # a user's sessions, in order
    breaks = (frame.user.diff() != 0) | (frame.ms.diff() > 30 * MINUTE)
    sizes = frame.assign(session=breaks.cumsum()).groupby(["user", "session"]).size()
    # a user's last session disappears from training when it is one event and that event is held out
    lost = ((sizes.groupby(level=0).last() == 1) & (frame.groupby("user").size() > stats.holdout)).sum()
    assert stats.sessions == len(sizes) - lost
    planted = pd.read_csv(next((tmp_path / "store" / "inputs").glob("*.tokens.csv")))
    assert set(read_parquet_dir(result.path / vocab_dir("token")).key) <= set(planted.token)


def _session_lengths(result) -> list[int]:
    sessions = read_parquet_dir(result.path / SESSIONS_DIR)
    return sessions.groupby(["user", "session"]).length.sum().tolist()


def test_json_lines_events_with_numbers_and_a_rebuild_that_keeps_token_indices(spark, tmp_path):
    import json

    def write(rows):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / "events.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")

    def index(parent="latest"):
        cfg = events_config(tmp_path, str(tmp_path / "in" / "events.jsonl"), templates=EVENT_TEMPLATES,
                            events={"buckets": EVENT_BUCKETS})
        cfg = cfg.model_copy(update={"index": cfg.index.model_copy(update={"parent": parent})})
        return run(cfg.index, StoreLayout(tmp_path / "store"))

    write([{"user_id": "a", "ts": 1000, "event": "scroll", "pixels": 1500},  # JSON numbers are read as text
           {"user_id": "a", "ts": 2000, "event": "purchase", "item": "x"},
           {"user_id": "b", "ts": 3000, "event": "purchase", "item": "x"}])
    first = index()
    assert first.manifest.input_format == "jsonl"
    assert first.manifest.counts.quarantine_reasons == {Reason.MALFORMED_LINE: 1}
    assert set(_tokens_by_index(first).values()) == {"scroll:1000-2000px", "buy-x"}
    before = {t: i for i, t in _tokens_by_index(first).items()}
    write([{"user_id": "c", "ts": 10, "event": "purchase", "item": "y"},
           {"user_id": "c", "ts": 20, "event": "purchase", "item": "y"},
           {"user_id": "c", "ts": 30, "event": "scroll", "pixels": 90}])
    second = index()
    after = {t: i for i, t in _tokens_by_index(second).items()}
    assert second.manifest.parent == first.snapshot_id
    # existing tokens keep their index (even absent now); new ones are appended by count, then text
    assert after == {**before, "buy-y": 3, "scroll:0-250px": 4}


def test_a_dataset_of_ratings_cannot_become_a_dataset_of_events(spark, tmp_path):
    from schemas.errors import ConfigError
    from tests.helpers import pipeline_config

    ratings = write_csv(tmp_path / "r.csv", ["user", "item", "rating", "timestamp"], [["a", "x", 4, 1]])
    run(pipeline_config(tmp_path, name="shared", input_path=str(ratings)).index, StoreLayout(tmp_path / "store"))
    events = write_csv(tmp_path / "e.csv", EVENT_HEADER, [["a", "2024-01-01T00:00:00Z", "purchase", "", "", "", "x"]])
    cfg = events_config(tmp_path, str(events), name="shared", templates=EVENT_TEMPLATES, events={"buckets": EVENT_BUCKETS})
    with pytest.raises(ConfigError, match="dataset 'shared' in .* holds ratings snapshots, this config indexes events"):
        run(cfg.index, StoreLayout(tmp_path / "store"))
