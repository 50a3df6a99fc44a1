"""Fold-in against a full retrain: MovieLens 100K by time, and a synthetic set 10x larger.

The ratings before a cut-off (the 80th percentile of timestamps) are what the
old version trained on. Then the later ratings arrive: new users, new items and
more ratings of known ones. Half of them (a seeded random half) arrive for
training; the other half are held out, the same for every contender:

- ``old``: the old version as is (keys it does not know get the training mean);
- ``fold_in_new``: warm start from the old run on the rebuilt snapshot, only the new rows trained;
- ``fold_in_all``: warm start, every row trained for ``--all-epochs`` epochs;
- ``full``: a full retrain on the rebuilt snapshot (the config's epochs).

The same for the sequence models (``skipgram``, ``gru``) on MovieLens as one
sequence per user: HR@10 on each user's held-out last event of the rebuilt
snapshot; the old version is scored there with its own weights (a new token
keeps its fresh, untrained row), and both fold-ins train
``--sequence-fold-in-epochs`` epochs.

Each is the real pipeline: the index job (Spark) builds the first snapshot and
then the rebuild (indices kept, new keys appended), the train job trains. RMSE
on the held-out ratings comes from the published vectors (the model's own
prediction: squashed user . item + biases), ``known_share`` is the share of the
held-out ratings whose user and item the model knows, ``train_seconds`` the
train job's own time.

    .venv/bin/python benchmarks/fold_in.py     # MovieLens 100K (mf, then skipgram and gru), synthetic 12x (mf)
    .venv/bin/python benchmarks/fold_in.py --only sequences    # one part; the others' results stay in the file

Writes benchmarks/results/fold_in.json: per data set ``{"mf": {"old", "fold_in_new",
"fold_in_all", "full"}}`` each ``{metric, train_seconds, known_share}``, and the
ratios to the full retrain.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, SHARED, write_result  # noqa: E402

RATINGS = SHARED / "movielens-100k" / "ratings.csv"
CUT_QUANTILE, ARRIVED_SHARE, SEED = 0.8, 0.5, 42
COLUMNS = {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}


def _split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(before the cut, arrived after it, held out after it)."""
    cut = frame.timestamp.quantile(CUT_QUANTILE)
    before, after = frame[frame.timestamp <= cut], frame[frame.timestamp > cut]
    arrived = np.random.default_rng(SEED).random(len(after)) < ARRIVED_SHARE
    return before, after[arrived], after[~arrived]


def _config(base: Path, name: str, data: Path, epochs: int):
    from jobs.common.config import validate
    from jobs.config import PipelineConfig

    return validate(PipelineConfig, {
        "name": name,
        "index": {"input": {"path": str(data), "columns": COLUMNS}, "min_count": 1, "rating_range": [0.5, 5.0],
                  "split": {"kind": "random", "fraction": 0.1, "seed": SEED}, "spark": {"master": "local[2]"}},
        "train": {"model": "mf", "epochs": epochs, "seed": SEED, "threads": 2},
        "publish": {},
    }, "benchmark", base_dir=base)


def _predict(result, snapshot: Path, held: pd.DataFrame, fallback: float) -> tuple[float, float]:
    """(RMSE on ``held``, share of it the model knows), from the run's published vectors."""
    vectors = {name: pq.read_table(result.path / "vectors" / f"{name}.parquet").to_pandas().set_index("index")
               for name in ("user", "item")}
    vocab = {name: pq.read_table(snapshot / "vocab" / name).to_pandas().set_index("key")["index"]
             for name in ("user", "item")}
    low, high = result.result["params"]["y_range"]
    users = held[COLUMNS["user"]].astype(str).map(vocab["user"])
    items = held[COLUMNS["item"]].astype(str).map(vocab["item"])
    known = users.notna() & items.notna() & (users > 0) & (items > 0)
    predicted = np.full(len(held), fallback)
    if known.any():
        u = vectors["user"].loc[users[known].astype(int)]
        i = vectors["item"].loc[items[known].astype(int)]
        dot = np.einsum("ij,ij->i", np.stack(u.vector.to_numpy()), np.stack(i.vector.to_numpy()))
        raw = dot + u.bias.to_numpy() + i.bias.to_numpy()
        predicted[known.to_numpy()] = low + (high - low) / (1 + np.exp(-raw))
    rmse = float(np.sqrt(np.mean((predicted - held.rating.to_numpy()) ** 2)))
    return rmse, float(known.mean())


def _snapshots(base: Path, before: pd.DataFrame, arrived: pd.DataFrame, make_config):
    """(the config, the store, [(directory, manifest)] of the old snapshot and its rebuild with the arrivals):
    the index job on ``before``, then on ``before`` + ``arrived`` (indices kept, new keys appended)."""
    from jobs import stages
    from jobs.index.snapshots import read_manifest
    from schemas.store import StoreLayout

    store, snapshots = StoreLayout(base / "store"), []
    for part, rows in (("old", before), ("new", pd.concat([before, arrived]))):
        (base / part).mkdir()
        rows.to_parquet(base / part / "input.parquet", index=False)
        cfg = make_config(base / part)
        indexed = stages.index(cfg, store)
        directory = store.snapshot_dir(cfg.index.dataset, indexed["snapshot_id"])
        snapshots.append((directory, read_manifest(directory)))
    assert snapshots[1][1].parent == snapshots[0][1].snapshot_id  # a rebuild of the old snapshot
    return cfg, store, snapshots


def measure(frame: pd.DataFrame, name: str, epochs: int, all_epochs: int, all_lr: float | None = None) -> dict:
    from jobs.train.job import run

    base = Path(tempfile.mkdtemp(prefix=f"fold-in-{name}-"))
    try:
        before, arrived, held = _split(frame)
        cfg, store, snapshots = _snapshots(base, before, arrived, lambda data: _config(base, name, data, epochs))
        train_cfg = cfg.model()
        old = run(train_cfg, store, *snapshots[0])
        contenders = {
            "old": (old, snapshots[0]),
            "fold_in_new": (run(train_cfg.model_copy(update={"warm_start": old.run_id, "fold_in": "new"}), store,
                                *snapshots[1]), snapshots[1]),
            "fold_in_all": (run(train_cfg.model_copy(update={"warm_start": old.run_id, "fold_in": "all",
                                                             "epochs": all_epochs, "lr": all_lr or train_cfg.lr}),
                                store, *snapshots[1]),
                            snapshots[1]),
            "full": (run(train_cfg, store, *snapshots[1]), snapshots[1]),
        }
        fallback = float(before.rating.mean())
        out = {}
        for label, (result, (directory, _)) in contenders.items():
            rmse, known = _predict(result, directory, held, fallback)
            out[label] = {"metric": round(rmse, 4), "train_seconds": round(result.result["metrics"]["train_seconds"], 2),
                          "known_share": round(known, 4)}
        new_users = ~held[COLUMNS["user"]].isin(before[COLUMNS["user"]])
        full = out["full"]
        return {
            "mf": out,
            "metric": "RMSE on the held-out later ratings",
            "ratings": {"before": len(before), "arrived": len(arrived), "held_out": len(held),
                        "held_out_of_new_users": int(new_users.sum())},
            "ratios_to_full": {label: {"metric": round(v["metric"] / full["metric"], 4),
                                       "time": round(v["train_seconds"] / full["train_seconds"], 3)}
                               for label, v in out.items() if label != "full"},
            "epochs": {"full": epochs, "fold_in_new": epochs, "fold_in_all": all_epochs},
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


SEQUENCE_MODELS = {"skipgram": {"model": "skipgram", "dim": 64, "window": 5, "epochs": 10, "exclude_seen": True},
                   "gru": {"model": "gru", "dim": 64, "hidden": 128, "epochs": 10, "batch_size": 32, "lr": 6e-3,
                           "exclude_seen": True}}


def _events_config(base: Path, name: str, data: Path):
    """MovieLens as one sequence per user (configs/movielens-100k-sequences.toml): the last event held out."""
    from jobs.common.config import validate
    from jobs.config import PipelineConfig

    return validate(PipelineConfig, {
        "name": name,
        "index": {"kind": "events", "min_count": 1, "spark": {"master": "local[2]"},
                  "input": {"path": str(data), "columns": {"user": "userId", "timestamp": "timestamp"}},
                  "events": {"templates": {"*": "{movieId}"}, "session_gap_seconds": 0, "max_length": 200,
                             "holdout": 1, "history_length": 1000}},
        "train": [{**settings, "seed": SEED, "threads": 2} for settings in SEQUENCE_MODELS.values()],
        "publish": {},
    }, "benchmark", base_dir=base)


def _synthetic_events_config(base: Path, name: str, data: Path):
    """The synthetic event log's own config (configs/synthetic-events.toml), on ``data``."""
    from jobs.common.config import validate
    from jobs.config import PipelineConfig
    from jobs.synthetic.events import BUCKETS, COLUMNS, TEMPLATES

    return validate(PipelineConfig, {
        "name": name,
        "index": {"kind": "events", "min_count": 5, "spark": {"master": "local[2]"},
                  "input": {"path": str(data), "columns": COLUMNS},
                  "events": {"templates": TEMPLATES, "buckets": BUCKETS, "session_gap_seconds": 1800,
                             "max_length": 50, "holdout": 1, "history_length": 200}},
        "train": [{"model": "skipgram", "dim": 64, "epochs": 5, "seed": SEED, "threads": 2},
                  {"model": "gru", "dim": 64, "hidden": 128, "epochs": 8, "seed": SEED, "threads": 2}],
        "publish": {},
    }, "benchmark", base_dir=base)


def synthetic_events(launched_share: float = 0.3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(before the cut, arrived after it) of the synthetic event log (the default config's size), in which
    ``launched_share`` of the items are launched at the cut: nobody buys them before it."""
    from jobs.synthetic import materialise
    from jobs.synthetic.config import SyntheticEvents

    settings = SyntheticEvents(users=4000, segments=8, sessions_per_user=6, events_per_session=8, follow=0.5,
                               overlap=0.1, noise=0.1, dirty=0.0, seed=SEED)
    with tempfile.TemporaryDirectory() as tmp:
        log = pq.read_table(materialise(settings, Path(tmp))).to_pandas()
    time = pd.to_datetime(log.ts, utc=True)
    cut = time.quantile(CUT_QUANTILE)
    items = sorted(log.item.dropna().unique())
    launched = set(np.random.default_rng(SEED).choice(items, int(launched_share * len(items)), replace=False))
    early_launch = (time <= cut) & log.item.isin(launched)
    before = log[(time <= cut) & ~early_launch]
    after = log[time > cut]
    arrived = np.random.default_rng(SEED).random(len(after)) < ARRIVED_SHARE
    return before, after[arrived]


def measure_sequences(before: pd.DataFrame, arrived: pd.DataFrame, make_config, fold_in_epochs: int) -> dict:
    """skipgram and gru: HR@10 on the rebuilt snapshot's held-out next events (each user's last). The old
    version is scored there with its own weights (new tokens: fresh rows, never trained)."""
    from jobs.train.job import run

    base = Path(tempfile.mkdtemp(prefix="fold-in-sequences-"))
    try:
        cfg, store, snapshots = _snapshots(base, before, arrived, lambda data: make_config(base, "sequences", data))
        old_tokens = snapshots[0][1].vocab["token"].size
        out = {}
        for train_cfg in cfg.train:
            old = run(train_cfg, store, *snapshots[0])

            def warm(mode: str, **settings):
                return run(train_cfg.model_copy(update={"warm_start": old.run_id, "fold_in": mode, **settings}),
                           store, *snapshots[1])

            contenders = {"old": warm("new", epochs=1, lr=1e-12, min_lr=0.0) if train_cfg.model == "skipgram"
                          else warm("new", epochs=1, lr=1e-12),
                          "fold_in_new": warm("new", epochs=fold_in_epochs),
                          "fold_in_all": warm("all", epochs=fold_in_epochs),
                          "full": run(train_cfg, store, *snapshots[1])}
            known = _known_targets(snapshots[1][0], old_tokens)
            out[train_cfg.model] = {label: {
                "metric": round(result.result["metrics"]["valid_hr_at_10"], 4),
                "train_seconds": round(0.0 if label == "old" else result.result["metrics"]["train_seconds"], 2),
                "known_share": round(known if label == "old" else 1.0, 4)} for label, result in contenders.items()}
            out[train_cfg.model]["old"]["train_seconds"] = round(old.result["metrics"]["train_seconds"], 2)
        return {**out, "metric": "HR@10 on each user's held-out last event of the rebuilt snapshot",
                "ratios_to_full": {family: {label: {"metric": round(v["metric"] / results["full"]["metric"], 4),
                                                    "time": round(v["train_seconds"] / results["full"]["train_seconds"], 3)}
                                            for label, v in results.items() if label != "full"}
                                   for family, results in out.items()},
                "epochs": {"full": {train.model: train.epochs for train in cfg.train},
                           "fold_in_new": fold_in_epochs, "fold_in_all": fold_in_epochs},
                "tokens": {"old": old_tokens, "new": snapshots[1][1].vocab["token"].size}}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _known_targets(snapshot: Path, old_tokens: int) -> float:
    """Share of the held-out events whose token the old version had."""
    histories = pq.read_table(snapshot / "histories").to_pandas()
    targets = np.concatenate([np.asarray(recent)[len(recent) - held:] for recent, held
                              in zip(histories.recent, histories.held_out) if held])
    return float(np.mean((targets > 0) & (targets < old_tokens)))


def synthetic(scale: int) -> pd.DataFrame:
    """Synthetic ratings ``scale`` times MovieLens 100K, in MovieLens's column names, with users and items
    that arrive over time as in a real log (the generator's own timestamps are uniform: nobody would be new):
    each user and item gets an arrival time, a user's ratings spread over the 20% of the span after it, and a
    rating before its item arrived is dropped."""
    from jobs.synthetic import materialise
    from jobs.synthetic.config import SyntheticRatings

    settings = SyntheticRatings(users=943 * scale, items=1682 * max(scale // 2, 1), clusters=20,
                                ratings_per_user=175, noise=0.5, seed=SEED)
    with tempfile.TemporaryDirectory() as tmp:
        table = pq.read_table(materialise(settings, Path(tmp))).to_pandas()
    rng = np.random.default_rng(SEED)
    span = 10_000_000
    users, items = table.user.astype("category"), table.item.astype("category")
    user_arrival = rng.random(len(users.cat.categories)) * 0.8 * span
    item_arrival = rng.random(len(items.cat.categories)) ** 2 * 0.9 * span  # most items early, some late
    table["timestamp"] = (user_arrival[users.cat.codes] + rng.random(len(table)) * 0.2 * span).astype(np.int64)
    table = table[table.timestamp >= item_arrival[items.cat.codes]]
    return table.rename(columns={"user": "userId", "item": "movieId"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["movielens", "synthetic", "sequences", "events"])
    parser.add_argument("--sequence-fold-in-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--all-epochs", type=int, default=2)
    parser.add_argument("--all-lr", type=float, default=None, help="fold-in all's peak learning rate (default: the config's)")
    parser.add_argument("--scale", type=int, default=12)
    args = parser.parse_args()
    results = {}
    if args.only in (None, "movielens"):
        results["movielens_100k"] = measure(pd.read_csv(RATINGS), "movielens", args.epochs, args.all_epochs,
                                             args.all_lr)
        print(results["movielens_100k"])
    if args.only in (None, "sequences"):
        before, arrived, _ = _split(pd.read_csv(RATINGS))
        results["movielens_100k_sequences"] = measure_sequences(before, arrived, _events_config,
                                                                args.sequence_fold_in_epochs)
        print(results["movielens_100k_sequences"])
    if args.only in (None, "events"):
        results["synthetic_events"] = measure_sequences(*synthetic_events(), _synthetic_events_config,
                                                        args.sequence_fold_in_epochs)
        print(results["synthetic_events"])
    if args.only in (None, "synthetic"):
        results[f"synthetic_{args.scale}x"] = measure(synthetic(args.scale), "synthetic", args.epochs,
                                                      args.all_epochs, args.all_lr)
        print(results[f"synthetic_{args.scale}x"])
    previous = RESULTS / "fold_in.json"  # --only: the other data sets' results stay
    if args.only and previous.is_file():
        kept = {k: v for k, v in json.loads(previous.read_text()).items() if k != "machine"}
        results = {**kept, **results}
    print(write_result("fold_in", results))


if __name__ == "__main__":
    main()
