"""Fold-in against a full retrain: MovieLens 100K by time, and a synthetic set 10x larger.

The ratings before a cut-off (the 80th percentile of timestamps) are what the
old version trained on. Then the later ratings arrive: new users, new items and
more ratings of known ones. Half of them (a seeded random half) arrive for
training; the other half are held out, the same for every contender:

- ``old``: the old version as is (keys it does not know get the training mean);
- ``fold_in_new``: warm start from the old run on the rebuilt snapshot, only the new rows trained;
- ``fold_in_all``: warm start, every row trained for ``--all-epochs`` epochs;
- ``full``: a full retrain on the rebuilt snapshot (the config's epochs).

Each is the real pipeline: the index job (Spark) builds the first snapshot and
then the rebuild (indices kept, new keys appended), the train job trains. RMSE
on the held-out ratings comes from the published vectors (the model's own
prediction: squashed user . item + biases), ``known_share`` is the share of the
held-out ratings whose user and item the model knows, ``train_seconds`` the
train job's own time.

    .venv/bin/python benchmarks/fold_in.py            # MovieLens 100K, then synthetic ratings 10x larger
    .venv/bin/python benchmarks/fold_in.py --only movielens

Writes benchmarks/results/fold_in.json: per data set ``{"mf": {"old", "fold_in_new",
"fold_in_all", "full"}}`` each ``{metric, train_seconds, known_share}``, and the
ratios to the full retrain.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import SHARED, write_result  # noqa: E402

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


def measure(frame: pd.DataFrame, name: str, epochs: int, all_epochs: int) -> dict:
    from jobs import stages
    from jobs.index.snapshots import read_manifest
    from jobs.train.job import run
    from schemas.store import StoreLayout

    base = Path(tempfile.mkdtemp(prefix=f"fold-in-{name}-"))
    try:
        before, arrived, held = _split(frame)
        (base / "old").mkdir()
        (base / "new").mkdir()
        before.to_csv(base / "old" / "ratings.csv", index=False)
        pd.concat([before, arrived]).to_csv(base / "new" / "ratings.csv", index=False)
        store = StoreLayout(base / "store")
        snapshots = []
        for part in ("old", "new"):
            cfg = _config(base, name, base / part, epochs)
            indexed = stages.index(cfg, store)
            directory = store.snapshot_dir(cfg.index.dataset, indexed["snapshot_id"])
            snapshots.append((directory, read_manifest(directory)))
        assert snapshots[1][1].parent == snapshots[0][1].snapshot_id
        train_cfg = cfg.model()
        old = run(train_cfg, store, *snapshots[0])
        contenders = {
            "old": (old, snapshots[0]),
            "fold_in_new": (run(train_cfg.model_copy(update={"warm_start": old.run_id, "fold_in": "new"}), store,
                                *snapshots[1]), snapshots[1]),
            "fold_in_all": (run(train_cfg.model_copy(update={"warm_start": old.run_id, "fold_in": "all",
                                                             "epochs": all_epochs}), store, *snapshots[1]),
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
    parser.add_argument("--only", choices=["movielens", "synthetic"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--all-epochs", type=int, default=2)
    parser.add_argument("--scale", type=int, default=12)
    args = parser.parse_args()
    results = {}
    if args.only in (None, "movielens"):
        results["movielens_100k"] = measure(pd.read_csv(RATINGS), "movielens", args.epochs, args.all_epochs)
        print(results["movielens_100k"])
    if args.only in (None, "synthetic"):
        results[f"synthetic_{args.scale}x"] = measure(synthetic(args.scale), "synthetic", args.epochs,
                                                      args.all_epochs)
        print(results[f"synthetic_{args.scale}x"])
    print(write_result("fold_in", results))


if __name__ == "__main__":
    main()
