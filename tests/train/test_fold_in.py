"""Fold-in: a run warm-started from a finished one on a rebuilt snapshot (new users, items and tokens)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from jobs.synthetic import materialise
from jobs.synthetic.config import SyntheticEvents, SyntheticRatings
from jobs.train.config import GRUConfig, MFConfig, SkipgramConfig
from jobs.train.fold_in import WEIGHTS
from jobs.train.job import run
from schemas.errors import ConfigError
from schemas.snapshot import interactions_dir
from schemas.store import StoreLayout
from tests.helpers import SMALL_EVENTS, SMALL_SYNTHETIC, events_config, index_snapshot, pipeline_config

RATING_COLUMNS = {"user": "user", "item": "item", "rating": "rating", "timestamp": "timestamp"}
MF = {"dim": 8, "epochs": 4, "batch_size": 128, "lr": 0.02, "threads": 1, "device": "cpu"}
SEQUENCES = {"skipgram": (SkipgramConfig, {"epochs": 2, "threads": 1, "device": "cpu", "dim": 16}),
             "gru": (GRUConfig, {"epochs": 2, "threads": 1, "device": "cpu", "dim": 16, "hidden": 32})}


def _weights(result) -> dict[str, torch.Tensor]:
    return torch.load(result.path / WEIGHTS, weights_only=True)


def _vectors(result) -> dict:
    return {path.stem: pq.read_table(path).to_pydict() for path in sorted((result.path / "vectors").glob("*.parquet"))}


@pytest.fixture(scope="module")
def ratings(spark, tmp_path_factory):
    """A store with two ratings snapshots: the first without 40 of the 200 users and 10 of the 80 items, the
    second a rebuild with everything (their indices appended); and the first one's full run."""
    base = tmp_path_factory.mktemp("fold-in-ratings")
    table = pq.read_table(materialise(SyntheticRatings(**SMALL_SYNTHETIC), base / "generated"))
    users, items = sorted(set(table["user"].to_pylist())), sorted(set(table["item"].to_pylist()))
    old = pc.and_(pc.is_in(table["user"], pa.array(users[:160])), pc.is_in(table["item"], pa.array(items[:70])))
    (base / "old").mkdir()
    (base / "all").mkdir()
    pq.write_table(table.filter(old), base / "old" / "ratings.parquet")
    pq.write_table(table, base / "all" / "ratings.parquet")
    store = base / "store"
    first = index_snapshot(pipeline_config(base, input_path=str(base / "old"), columns=RATING_COLUMNS), store)
    second = index_snapshot(pipeline_config(base, input_path=str(base / "all"), columns=RATING_COLUMNS), store)
    assert second[1].parent == first[1].snapshot_id
    parent = run(MFConfig(**MF), StoreLayout(store), *first)
    return store, first, second, parent


def _fold_in(store, snapshot, parent, mode, **overrides):
    cfg = MFConfig(**{**MF, "epochs": 2, "warm_start": parent.run_id, "fold_in": mode, **overrides})
    return run(cfg, StoreLayout(store), *snapshot)


def _new_users_rmse(snapshot, result) -> tuple[float, float]:
    """RMSE on the validation ratings of users the first snapshot did not have, and the mean predictor's there."""
    directory, manifest = snapshot
    valid = pq.read_table(directory / interactions_dir("valid")).to_pandas()
    train = pq.read_table(directory / interactions_dir("train")).to_pandas()
    weights = _weights(result)
    first_new = manifest.vocab["user"].size - 40
    new = valid[valid.user >= first_new]
    assert len(new) > 20
    low, high = result.result["params"]["y_range"]
    items = weights["item.weight"][new.item.to_numpy()]
    # the published user vectors hold the implicit term: the model's own prediction, from its vectors
    vectors = _vectors(result)["user"]
    published = dict(zip(vectors["index"], vectors["vector"]))
    users = torch.tensor(np.array([published[u] for u in new.user]), dtype=torch.float32)
    raw = (users * items).sum(1) + weights["user_bias.weight"][new.user.to_numpy(), 0] \
        + weights["item_bias.weight"][new.item.to_numpy(), 0]
    predicted = low + (high - low) * torch.sigmoid(raw)
    rmse = float(torch.sqrt(torch.mean((predicted - torch.tensor(new.rating.to_numpy())) ** 2)))
    return rmse, float(np.sqrt(np.mean((new.rating - train.rating.mean()) ** 2)))


def test_new_mode_moves_only_the_appended_rows_and_learns_the_new_users(ratings):
    store, _, second, parent = ratings
    folded = _fold_in(store, second, parent, "new")
    before, after = _weights(parent), _weights(folded)
    for name, old in before.items():
        assert torch.equal(after[name][:old.shape[0]], old), name  # the parent's rows: bitwise the same
    for name in ("user.weight", "item.weight", "item_implicit.weight"):
        assert after[name].shape[0] > before[name].shape[0]
    record = folded.result["fold_in"]
    assert {k: record[k] for k in ("parent_run", "mode", "rows_folded_in")} == {
        "parent_run": parent.run_id, "mode": "new", "rows_folded_in": {"item": 10, "user": 40}}
    assert folded.result["metrics"]["valid_rmse"] < record["parent_metric"]  # the parent, scored on this snapshot
    rmse, mean_predictor = _new_users_rmse(second, folded)
    assert rmse < mean_predictor, (rmse, mean_predictor)
    untrained, _ = _new_users_rmse(second, _fold_in(store, second, parent, "new", lr=1e-9))
    assert rmse < untrained, (rmse, untrained)  # the steps, not the parent's rows, made the new users' vectors


def test_a_fold_in_under_bf16_autocast_keeps_the_parents_rows(ratings):
    """The CUDA path (bf16 autocast) on CPU: the weights stay float32 and the parent's rows bitwise its own."""
    store, _, second, parent = ratings
    folded = _fold_in(store, second, parent, "new", epochs=1, precision="bf16")
    before, after = _weights(parent), _weights(folded)
    for name, old in before.items():
        assert after[name].dtype == old.dtype and torch.equal(after[name][:old.shape[0]], old), name
    assert not torch.equal(after["user.weight"][-40:], _weights(_fold_in(store, second, parent, "new", epochs=1,
                                                                              lr=1e-9))["user.weight"][-40:])


def test_all_mode_moves_every_row_and_a_run_id_names_its_parent(ratings):
    store, _, second, parent = ratings
    folded = _fold_in(store, second, parent, "all")
    assert not torch.equal(_weights(folded)["user.weight"][:10], _weights(parent)["user.weight"][:10])
    assert folded.result["fold_in"]["mode"] == "all"
    scratch = run(MFConfig(**{**MF, "epochs": 2}), StoreLayout(store), *second)
    assert folded.run_id not in (scratch.run_id, _fold_in(store, second, parent, "new").run_id)


def test_a_warm_start_from_a_snapshot_of_other_keys_is_refused(ratings, tmp_path):
    store, _, _, parent = ratings
    unrelated = index_snapshot(pipeline_config(tmp_path, name="other"), store)  # another dataset, other indices
    with pytest.raises(ConfigError, match="is not an ancestor of snapshot"):
        run(MFConfig(**{**MF, "warm_start": parent.run_id}), StoreLayout(store), *unrelated)
    with pytest.raises(ConfigError, match="has dim = 8, this config 16"):
        run(MFConfig(**{**MF, "dim": 16, "warm_start": parent.run_id}), StoreLayout(store), *ratings[2])
    with pytest.raises(ConfigError, match="no finished run"):
        run(MFConfig(**{**MF, "warm_start": "abc123"}), StoreLayout(store), *ratings[2])


def test_a_killed_fold_in_resumes_to_the_same_vectors(ratings):
    store, _, second, parent = ratings
    straight = _fold_in(store, second, parent, "new", epochs=3)
    killed = StoreLayout(Path(store).parent / "killed")  # the parent run and the snapshots, no fold-in yet
    cfg = MFConfig(**{**MF, "epochs": 3, "warm_start": parent.run_id, "fold_in": "new"})
    shutil.copytree(StoreLayout(store).run_dir(parent.run_id), killed.run_dir(parent.run_id))
    shutil.copytree(Path(store) / "snapshots", killed.root / "snapshots")
    partial = run(cfg, killed, *second, stop_after_epochs=1)
    assert partial.result == {"partial": True, "epochs_done": 1}
    resumed = run(cfg, killed, *second)
    assert resumed.run_id == straight.run_id and _vectors(resumed) == _vectors(straight)


@pytest.fixture(scope="module")
def events(spark, tmp_path_factory):
    """Two event snapshots: the first without any search event (8 search tokens) nor 30 of the 300 users, the
    second a rebuild with the whole log."""
    base = tmp_path_factory.mktemp("fold-in-events")
    log = pq.read_table(materialise(SyntheticEvents(**SMALL_EVENTS), base / "generated"))
    users = sorted({u for u in log["user_id"].to_pylist() if u})
    old = pc.and_(pc.not_equal(log["event"], "search"), pc.is_in(log["user_id"], pa.array(users[:270])))
    (base / "old").mkdir()
    (base / "all").mkdir()
    pq.write_table(log.filter(old), base / "old" / "events.parquet")
    pq.write_table(log, base / "all" / "events.parquet")
    store = base / "store"
    first = index_snapshot(events_config(base, input_path=str(base / "old")), store)
    second = index_snapshot(events_config(base, input_path=str(base / "all")), store)
    assert second[1].vocab["token"].size > first[1].vocab["token"].size
    return store, first, second


@pytest.mark.parametrize("family", ["skipgram", "gru"])
def test_sequence_models_fold_in_new_tokens_and_recompute_every_user(events, family):
    store, first, second = events
    config, settings = SEQUENCES[family]
    parent = run(config(**settings), StoreLayout(store), *first)
    folded = run(config(**{**settings, "warm_start": parent.run_id, "fold_in": "new"}), StoreLayout(store), *second)
    before, after = _weights(parent), _weights(folded)
    for name, old in before.items():
        assert torch.equal(after[name][:old.shape[0]], old), name
    new_tokens = second[1].vocab["token"].size - first[1].vocab["token"].size
    assert folded.result["fold_in"]["rows_folded_in"]["token"] == new_tokens >= 8
    table = "input" if family == "skipgram" else "embedding"
    name = next(n for n in after if n.startswith(table))
    fresh = run(config(**{**settings, "warm_start": parent.run_id, "fold_in": "new", "epochs": 1, "lr": 1e-12}),
                StoreLayout(store), *second)
    assert not torch.equal(after[name][-new_tokens:], _weights(fresh)[name][-new_tokens:])  # the new rows trained
    users = _vectors(folded)["user"]
    assert len(users["index"]) == second[1].sessions.users_indexed > first[1].sessions.users_indexed
    assert folded.result["metrics"]["valid_hr_at_10"] > 0


def test_a_fold_in_version_names_its_parent_and_reports_its_drift(ratings):
    """In new mode the old keys' vectors are the parent's: their neighbours change only where new keys enter."""
    import json
    import subprocess
    import sys

    import latentstore
    from jobs.publish.config import PublishConfig
    from jobs.publish.job import run as publish

    store, first, second, parent = ratings
    layout, cfg = StoreLayout(store), PublishConfig(gate={"tolerance": 0.02}, hnsw_min_rows=100_000)
    publish(cfg, "rates", layout, parent.path, parent.result, *first)
    folded = run(MFConfig(**{**MF, "epochs": 2, "name": "rates", "warm_start": "current"}), layout, *second)
    assert folded.run_id == _fold_in(store, second, parent, "new").run_id  # "current" is v1's run
    published = publish(cfg, "rates", layout, folded.path, folded.result, *second)
    gate = published.record["gate"]  # v1 re-scored on the fold-in's validation set, the tolerance rule applied
    assert (gate["rule"], gate["compared_to"], gate["passed"]) == ("tolerance", 1, True)
    assert gate["limit"] == pytest.approx(folded.result["fold_in"]["parent_metric"] * 1.02)
    con = latentstore.connect(store)
    lineage, drift = con.execute("SELECT fold_in, drift FROM versions WHERE model = 'rates' AND version = ?",
                                 [published.version]).fetchone()
    keys = con.execute("SELECT count(*) FROM rates.item").fetchone()[0]
    con.close()
    assert json.loads(lineage) == folded.result["fold_in"]
    items = json.loads(drift)["tables"]["item"]
    assert items["new_keys"] == pytest.approx(10 / keys) and items["removed_keys"] == 0
    assert items["overlap_at_10"] < 1  # new items among the old ones' neighbours; nothing else moved
    shown = subprocess.run([sys.executable, "-m", "latentstore.cli", "versions", "--store", str(store), "-f", "csv"],
                           cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)
    assert "fold-in new from v1" in shown.stdout and ",full," in shown.stdout, shown.stdout + shown.stderr


def test_the_gate_refuses_a_fold_in_worse_than_its_parent_on_the_same_validation_set():
    from jobs.publish.config import GateConfig
    from jobs.publish.gate import decide

    current = {"version": 3, "run_id": "parent", "metric_name": "valid_rmse", "metric_value": 0.80,
               "validation_set": "old-snapshot"}
    metric = {"name": "valid_rmse", "value": 0.95, "direction": "minimize"}
    rescored = {"parent_run": "parent", "mode": "new", "parent_metric": 0.90}
    refused = decide(GateConfig(), "m", metric, "new-snapshot", current, rescored)
    assert (refused.passed, refused.rule, refused.compared_to) == (False, "tolerance", 3)
    assert refused.limit == pytest.approx(0.90 * 1.02)
    assert decide(GateConfig(), "m", {**metric, "value": 0.91}, "new-snapshot", current, rescored).passed
    other_parent = decide(GateConfig(), "m", metric, "new-snapshot", current, {**rescored, "parent_run": "x"})
    assert other_parent.rule == "no floor"  # not a fold-in of the current version: another validation set


def test_the_cli_folds_the_new_keys_in_from_the_current_version(ratings, tmp_path):
    import json
    import subprocess
    import sys

    from jobs.publish.config import PublishConfig
    from jobs.publish.job import run as publish

    store, first, second, parent = ratings
    publish(PublishConfig(gate={"enabled": False}), "demo", StoreLayout(store), parent.path, parent.result, *first)
    config = tmp_path / "demo.toml"
    config.write_text(f"""
name = "demo"
[index.input]
path = "{Path(store).parent / 'all'}"
columns = {{ user = "user", item = "item", rating = "rating", timestamp = "timestamp" }}
[train]
dim = 8
epochs = 2
batch_size = 128
lr = 0.02
threads = 1
device = "cpu"
""")
    done = subprocess.run([sys.executable, "-m", "latentstore.cli", "train", str(config), "--store", str(store),
                           "--fold-in", "new"], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    result = json.loads((StoreLayout(store).run_dir(summary["run_id"]) / "result.json").read_text())
    assert summary["snapshot_id"] == second[1].snapshot_id
    assert result["fold_in"]["parent_run"] == parent.run_id and result["fold_in"]["mode"] == "new"
