"""Versions a team can trust: the gate, drift, rollback, retention, as-of, several models side by side."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import latentstore
from jobs.store.registry import events
from schemas.errors import GateRefused, StoreError
from schemas.store import StoreLayout
from tests.helpers import publish_vectors

ROOT = Path(__file__).resolve().parents[2]
TWO_D = {"item": {"a": [1, 0], "b": [0.9, 0.1], "c": [0, 1], "d": [0.1, 0.9]}}


def _current(store: Path, model: str) -> int:
    con = latentstore.connect(store)
    try:
        return con.execute("SELECT version FROM models WHERE model = ?", [model]).fetchone()[0]
    finally:
        con.close()


# -- the quality gate ---------------------------------------------------------------------------------

def test_first_publish_passes_the_floor_only(tmp_path):
    store = tmp_path / "store"
    with pytest.raises(GateRefused, match=r"first publish; valid_rmse 1\.2 is worse than the floor 1 \(minimize\)"):
        publish_vectors(store, "m", TWO_D, metric=1.2, publish={"gate": {"floors": {"m": 1.0}}})
    assert not StoreLayout(store).pointer_file("m").exists()
    refused = [e for e in events(StoreLayout(store), "m") if e["event"] == "refused"]
    assert len(refused) == 1 and refused[0]["details"]["rule"] == "floor" and refused[0]["details"]["value"] == 1.2
    first = publish_vectors(store, "m", TWO_D, metric=0.9, publish={"gate": {"floors": {"m": 1.0}}})
    assert first.version == 1 and first.record["gate"]["rule"] == "floor" and first.record["gate"]["passed"]


def test_a_regression_on_the_same_validation_set_is_refused_and_can_be_forced(tmp_path):
    store = tmp_path / "store"
    publish_vectors(store, "m", TWO_D, metric=0.80)
    within = publish_vectors(store, "m", TWO_D, metric=0.81)  # 1.25% worse: within the 2% tolerance
    assert within.version == 2 and within.record["gate"]["rule"] == "tolerance"
    with pytest.raises(GateRefused, match=r"worse by 0\.042, more than the tolerance 0\.02.*same validation set.*--force"):
        publish_vectors(store, "m", TWO_D, metric=0.852)
    assert _current(store, "m") == 2  # the current version stays
    assert sorted(p.name for p in StoreLayout(store).model_dir("m").glob("*.duckdb")) == ["v000001.duckdb",
                                                                                          "v000002.duckdb"]
    forced = publish_vectors(store, "m", TWO_D, metric=0.852, force=True)
    assert forced.version == 3 and forced.record["gate"]["forced"] and not forced.record["gate"]["passed"]
    con = latentstore.connect(store)
    gates = con.execute("SELECT version, gate->>'rule', (gate->>'forced')::BOOLEAN FROM versions ORDER BY version").fetchall()
    kinds = [e for (e,) in con.execute("SELECT event FROM registry_events ORDER BY event_time").fetchall()]
    con.close()
    assert gates == [(1, "no floor", False), (2, "tolerance", False), (3, "tolerance", True)]
    assert kinds == ["publish", "publish", "refused", "publish"]


def test_the_gate_follows_the_metric_direction_and_the_validation_set(tmp_path):
    store = tmp_path / "store"
    hr = {"metric_name": "valid_hr_at_10", "direction": "maximize"}
    publish_vectors(store, "m", TWO_D, metric=0.50, **hr)
    assert publish_vectors(store, "m", TWO_D, metric=0.60, **hr).version == 2  # higher HR is better
    with pytest.raises(GateRefused):
        publish_vectors(store, "m", TWO_D, metric=0.50, **hr)  # 17% worse than 0.60
    # another validation set (new data) is not comparable: the floor applies instead (none set: passes)
    other = publish_vectors(store, "m", TWO_D, metric=0.50, validation_set="set-2", **hr)
    assert other.version == 3 and other.record["gate"]["rule"] == "no floor"


# -- drift --------------------------------------------------------------------------------------------

def test_drift_on_a_hand_made_pair_of_versions(tmp_path):
    store = tmp_path / "store"
    old = {"item": {"a": [1, 0, 0], "b": [0.9, 0.1, 0], "c": [0, 1, 0], "d": [0, 0.9, 0.1], "gone": [0, 0, 1]}}
    # in the new version a and b keep each other as nearest, c and d swap partners: each pairs with a or b
    new = {"item": {"a": [1, 0, 0], "b": [0.9, 0.1, 0], "c": [0.8, 0, 0.2], "d": [0, 0.5, 0.5], "new": [0, 1, 0]}}
    publish_vectors(store, "m", old, publish={"drift_sample": 100})
    second = publish_vectors(store, "m", new, publish={"drift_sample": 100})
    drift = second.record["drift"]
    assert drift["compared_to"] == 1
    item = drift["tables"]["item"]
    # 4 common keys, k = min(10, 5 - 1) = 4: every key's neighbours are the other 4 keys of its version,
    # so the overlap is (common neighbours among the 4) / 4 for each sampled key
    assert (item["k"], item["sample"]) == (4, 4)
    assert item["new_keys"] == pytest.approx(1 / 5) and item["removed_keys"] == pytest.approx(1 / 5)
    # each key's 4 neighbours: old = the other 3 common keys + "gone", new = the other 3 + "new": 3 of 4 shared
    assert item["overlap_at_10"] == pytest.approx(3 / 4)


def test_drift_of_an_unchanged_model_is_full_overlap(tmp_path):
    store = tmp_path / "store"
    rng = np.random.default_rng(0)
    table = {"item": {f"k{i}": rng.normal(size=8).tolist() for i in range(60)}}
    publish_vectors(store, "m", table)
    second = publish_vectors(store, "m", table, publish={"drift_sample": 25, "drift_seed": 7})
    item = second.record["drift"]["tables"]["item"]
    assert item == {"overlap_at_10": 1.0, "k": 10, "sample": 25, "new_keys": 0.0, "removed_keys": 0.0}


# -- rollback, as-of, several models --------------------------------------------------------------------

def test_rollback_is_atomic_recorded_and_as_of_follows_it(tmp_path):
    store = tmp_path / "store"
    layout = StoreLayout(store)
    publish_vectors(store, "m", TWO_D)
    publish_vectors(store, "other", TWO_D)
    second = publish_vectors(store, "m", {"item": {**TWO_D["item"], "e": [1, 1]}})
    before_rollback = time.time()
    time.sleep(0.01)
    result = subprocess.run([sys.executable, "-m", "latentstore.cli", "rollback", "--store", str(store), "--model",
                             "m", "--to", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "m: v2 -> v1 (rollback at" in result.stdout
    assert _current(store, "m") == 1 and _current(store, "other") == 1
    con = latentstore.connect(store)
    assert con.execute("SELECT count(*) FROM m.item").fetchone()[0] == 4  # v1's rows
    moves = con.execute("SELECT event, from_version, to_version FROM pointer_events WHERE model = 'm' "
                        "ORDER BY event_time").fetchall()
    assert moves == [("publish", None, 1), ("publish", 1, 2), ("rollback", 2, 1)]
    from datetime import UTC, datetime

    at = datetime.fromtimestamp(before_rollback, UTC).isoformat()
    assert con.execute("SELECT version_at('m', ?)", [at]).fetchone()[0] == 2
    naive = datetime.fromtimestamp(before_rollback, UTC).replace(tzinfo=None).isoformat(sep=" ")  # no zone: UTC
    assert con.execute("SELECT version_at('m', ?)", [naive]).fetchone()[0] == 2
    assert con.execute("SELECT version_at('m', now())").fetchone()[0] == 1
    con.close()
    with latentstore.open_store(store, as_of=at) as past:
        assert past.table("m", "item").version == 2 and past.table("other", "item").version == 1
        assert {k for k, _, _ in past.similar("m", "item", "e", k=4)} == {"a", "b", "c", "d"}
    with pytest.raises(StoreError, match="already current"):
        from jobs.publish.job import rollback

        rollback(layout, "m", 1)
    with pytest.raises(StoreError, match="has no version 9"):
        rollback(layout, "m", 9)
    assert second.version == 2


def test_publishing_one_model_leaves_the_others_and_their_readers_alone(tmp_path):
    store = tmp_path / "store"
    publish_vectors(store, "ratings_model", TWO_D)
    publish_vectors(store, "events_model", {"token": {"x": [1, 0], "y": [0, 1], "z": [1, 1]}})
    reader = latentstore.connect(store)
    before = reader.execute("SELECT key, vector FROM events_model.token ORDER BY key").fetchall()
    publish_vectors(store, "ratings_model", TWO_D)
    assert reader.execute("SELECT key, vector FROM events_model.token ORDER BY key").fetchall() == before
    reader.close()
    con = latentstore.connect(store)
    assert dict(con.execute("SELECT model, version FROM models").fetchall()) == {"ratings_model": 2, "events_model": 1}
    con.close()


# -- retention ----------------------------------------------------------------------------------------

HOLD_OPEN = r"""
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print(con.execute("SELECT version FROM meta").fetchone()[0], flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def test_retention_keeps_the_newest_and_never_a_file_a_reader_has_open(tmp_path):
    store = tmp_path / "store"
    layout = StoreLayout(store)
    keep = {"keep_versions": 2}
    publish_vectors(store, "m", TWO_D, publish=keep)
    reader = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(layout.version_file("m", 1)), "60"],
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "1"  # v1 is open in another process
    try:
        publish_vectors(store, "m", TWO_D, publish=keep)
        third = publish_vectors(store, "m", TWO_D, publish=keep)
        assert third.retention == {"removed": [], "open": [1], "grace": []}
        assert layout.version_file("m", 1).is_file()
    finally:
        reader.kill()
        reader.wait()
    fourth = publish_vectors(store, "m", TWO_D, publish=keep)
    assert fourth.retention["removed"] == [1, 2]
    assert sorted(p.name for p in layout.model_dir("m").glob("*.duckdb")) == ["v000003.duckdb", "v000004.duckdb"]
    con = latentstore.connect(store)
    rows = con.execute("SELECT version, retained, is_current FROM versions ORDER BY version").fetchall()
    removed = [v for (v,) in con.execute("SELECT version FROM registry_events WHERE event = 'removed' ORDER BY version")
               .fetchall()]
    con.close()
    assert rows == [(1, False, False), (2, False, False), (3, True, False), (4, True, True)]
    assert removed == [1, 2]  # records stay: lineage is kept even when the file goes
    from jobs.publish.job import rollback

    with pytest.raises(StoreError, match="was removed by retention"):
        rollback(layout, "m", 1)
    with pytest.raises(StoreError, match="version 1 was removed by retention"):
        latentstore.open_store(store, versions={"m": 1})


def test_retention_waits_out_the_grace_period_and_never_removes_the_current_version(tmp_path):
    store = tmp_path / "store"
    slow = {"keep_versions": 1, "retention_grace_seconds": 3600}
    publish_vectors(store, "m", TWO_D, publish=slow)
    second = publish_vectors(store, "m", TWO_D, publish=slow)
    assert second.retention == {"removed": [], "open": [], "grace": [1]}
    from jobs.publish import retention
    from jobs.publish.job import rollback

    rollback(StoreLayout(store), "m", 1)  # v1 current again: the newest (v2) and the current one (v1) stay
    assert retention.apply(StoreLayout(store), "m", keep=1, grace_seconds=0) == {"removed": [], "open": [],
                                                                                 "grace": []}
    third = publish_vectors(store, "m", TWO_D, publish={"keep_versions": 1})  # no grace: both may go now
    assert third.retention["removed"] == [1, 2] and third.version == 3



def test_without_keep_versions_every_version_stays(tmp_path):
    store = tmp_path / "store"
    keep_all = {"keep_versions": None}
    results = [publish_vectors(store, "m", TWO_D, publish=keep_all) for _ in range(4)]
    assert [r.retention for r in results] == [{"removed": [], "open": [], "grace": []}] * 4
    files = sorted(p.name for p in StoreLayout(store).model_dir("m").glob("*.duckdb"))
    assert files == [f"v{n:06d}.duckdb" for n in range(1, 5)]
    assert publish_vectors(store, "m", TWO_D, publish={"keep_versions": 2}).retention["removed"] == [1, 2, 3]



def _registry_views(store: Path) -> tuple[list, list]:
    con = latentstore.connect(store)
    try:
        return (con.execute("SELECT * FROM registry_events ORDER BY event_time").fetchall(),
                con.execute("SELECT * FROM versions ORDER BY model, version").fetchall())
    finally:
        con.close()


def test_a_compacted_registry_reads_the_same_and_publishing_goes_on(tmp_path, monkeypatch):
    """Old event files and the records of removed versions fold into segments: every reader (the registry in
    Python, the views through the client and through current.sql) sees the same rows, each once, even when a
    writer was killed between writing a segment and deleting the files it holds."""
    from jobs.publish import registry
    from jobs.publish.recovery import recover_store
    from jobs.store.registry import version_records

    store, layout = tmp_path / "store", StoreLayout(tmp_path / "store")
    keep = {"keep_versions": 2}
    for _ in range(6):
        publish_vectors(store, "m", TWO_D, publish=keep)
    before_events, before_records = events(layout), version_records(layout)
    before_views = _registry_views(store)
    assert len(before_events) == 6 + 4 and len(before_records) == 6  # 6 publishes, 4 removals

    monkeypatch.setattr(registry, "COMPACT_EVENTS_AT", 3)
    leftovers = {p: p.read_bytes() for p in layout.registry_events.glob("*.json")}
    recover_store(layout)  # what a writer does first: compaction included
    assert len(list(layout.registry_events.glob("*.json"))) == 1 and len(list(layout.event_segments.glob("*.jsonl"))) == 1
    assert sorted(p.name for p in (layout.registry_versions / "m").glob("*.json")) == ["v000005.json", "v000006.json"]
    assert events(layout) == before_events and version_records(layout) == before_records
    assert _registry_views(store) == before_views

    for path, content in leftovers.items():  # a writer killed after its segment, before the deletes
        if not path.exists():
            path.write_bytes(content)
    assert events(layout) == before_events and _registry_views(store) == before_views
    plain = subprocess.run([str(Path(sys.executable).parent / "duckdb"), "-init", "current.sql", "-csv", "-noheader",
                            "-c", "SELECT count(*), count(DISTINCT event_time) FROM registry_events"],
                           cwd=store, capture_output=True, text=True, timeout=60)
    assert plain.stdout.strip() == "10,10", plain.stderr

    with pytest.raises(StoreError, match="was removed by retention"):  # a compacted record is still a version
        latentstore.open_store(store, versions={"m": 1})
    seventh = publish_vectors(store, "m", TWO_D, publish=keep)
    assert seventh.version == 7 and seventh.retention["removed"] == [5]
    assert [e["event"] for e in events(layout)][-2:] == ["publish", "removed"]


# -- the CLI --------------------------------------------------------------------------------------------

def test_versions_lists_metrics_drift_gate_and_retention(tmp_path):
    store = tmp_path / "store"
    publish_vectors(store, "m", TWO_D, metric=0.8)
    publish_vectors(store, "m", TWO_D, metric=0.79)
    result = subprocess.run([sys.executable, "-m", "latentstore.cli", "versions", "--store", str(store), "-f", "json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["model"], r["version"], r["metric"], r["gate"], r["status"]) for r in rows] == [
        ("m", 1, "valid_rmse 0.8000", "no floor", "retained"), ("m", 2, "valid_rmse 0.7900", "tolerance", "current")]
    assert rows[0]["drift: overlap@10 +new -removed"] is None
    assert rows[1]["drift: overlap@10 +new -removed"] == "item 1.00 +0% -0%"


# -- review fixes: names, macros, unknown metrics, event order ------------------------------------------------

def test_sql_keywords_and_colliding_macro_names_are_refused_before_anything_is_written(tmp_path):
    from schemas.errors import ConfigError
    from schemas.store import check_name

    for name in ("order", "group", "table", "information_schema"):
        with pytest.raises(ValueError, match="keyword|reserved"):
            check_name(name, "model")
    store = tmp_path / "store"
    publish_vectors(store, "shop", {"next_token": TWO_D["item"]})
    with pytest.raises(ConfigError, match=r"shop_next_token_nearest \(shop_next\.token and shop\.next_token\)"):
        publish_vectors(store, "shop_next", {"token": TWO_D["item"]})
    assert not StoreLayout(store).model_dir("shop_next").exists()


def test_an_unknown_metric_never_passes_the_gate(tmp_path):
    store = tmp_path / "store"
    publish_vectors(store, "m", TWO_D, metric=0.8)
    for unknown in (None, float("nan")):
        with pytest.raises(GateRefused, match=r"valid_rmse of the new version is unknown"):
            publish_vectors(store, "m", TWO_D, metric=unknown)
    with pytest.raises(GateRefused, match=r"first publish; valid_rmse is unknown \(nan\), floor 1"):
        publish_vectors(store, "n", TWO_D, metric=float("nan"), publish={"gate": {"floors": {"n": 1.0}}})


def test_vectors_with_nan_are_refused_at_build(tmp_path):
    store = tmp_path / "store"
    with pytest.raises(StoreError, match="item: 1 of 4 vectors have NaN or infinite values; nothing published"):
        publish_vectors(store, "m", {"item": {**TWO_D["item"], "d": [float("nan"), 1.0]}})
    assert not StoreLayout(store).pointer_file("m").exists()


def test_event_times_strictly_increase_even_if_the_clock_goes_back(tmp_path):
    from datetime import UTC, datetime

    from jobs.publish.registry import append_event

    layout = StoreLayout(tmp_path / "store")
    layout.registry_events.mkdir(parents=True)
    (layout.registry_events / "29991231T235959999999Z-m-publish-0.json").write_text(
        json.dumps({"at": "2999-12-31T23:59:59.999999+00:00", "model": "m", "event": "publish", "from_version": None,
                    "to_version": 1, "version": 1, "run_id": None, "details": {}}))
    record = append_event(layout, "m", "rollback", from_version=1, to_version=1)
    assert datetime.fromisoformat(record["at"]) > datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert [e["event"] for e in events(layout, "m")] == ["publish", "rollback"]


@pytest.mark.spark
def test_a_rollback_is_never_undone_by_republishing_the_run_it_replaced(spark, tmp_path):
    from jobs import stages
    from jobs.publish.job import rollback
    from tests.helpers import pipeline_config

    store = StoreLayout(tmp_path / "store")
    no_gate = {"gate": {"enabled": False}}
    first, second = (pipeline_config(tmp_path, name="kept", train={"seed": s}, publish=no_gate) for s in (1, 2))
    for cfg in (first, second):
        stages.index(cfg, store)
        stages.train(cfg, store)
        stages.publish(cfg, store)
    rollback(store, "kept", 1)
    again = stages.publish(second, store)  # the hourly refresh asking to publish the run rolled away from
    assert again["reused"] and again["version"] == 2
    assert _current(tmp_path / "store", "kept") == 1 and len(list(store.model_dir("kept").glob("*.duckdb"))) == 2
    forced = stages.publish(second, store, force=True)
    assert forced["version"] == 3 and _current(tmp_path / "store", "kept") == 3
