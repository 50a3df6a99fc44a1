"""Planted structure on the synthetic event log: do the vectors find the groups and segments?

    .venv/bin/python benchmarks/planted.py [--users 20000] [--generator-users 200000]

Generates the log of configs/synthetic-events.toml with ``--users`` users, indexes
it with local Spark and trains the config's ``skipgram`` and ``gru`` exactly as
the pipeline does (jobs.stages), then measures on their published vectors:

- tokens: the share of each token's 10 nearest neighbours (cosine) in its planted
  group (target >= 0.9 for both models);
- users: the leave-one-out 10-nearest-neighbour accuracy of the user's segment.

In the same run the same measures on random vectors (Gaussian, the same shape)
and on popularity (a token's log count; a user's log event count and the mean
log count of their recent tokens; Euclidean) must score at most half of each
model's, so that the check is not trivial. Also times the generator on
``--generator-users`` users (about 10M events). Writes benchmarks/results/planted.json.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, spark_env, write_result  # noqa: E402

TARGET_SHARE = 0.9


def _config(users: int):
    from jobs.common.config import load_toml, validate
    from jobs.config import PipelineConfig

    path = ROOT / "configs" / "synthetic-events.toml"
    data = load_toml(path)
    data["index"]["input"]["synthetic"]["users"] = users
    return validate(PipelineConfig, data, str(path), base_dir=path.parent)


def _table(con, model: str, entity: str):
    rows = con.execute(f"SELECT key, vector, count FROM {model}.{entity} ORDER BY idx").fetchall()
    return [r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.float32), np.array([r[2] for r in rows])


def _measures(tokens: np.ndarray, token_labels, users: np.ndarray, user_labels, metric: str = "cosine") -> dict:
    from jobs.synthetic.planted import knn_accuracy, neighbour_share

    return {"token_neighbour_share": neighbour_share(tokens, token_labels, metric=metric),
            "user_knn_accuracy": knn_accuracy(users, user_labels, metric=metric)}


def _user_popularity(store, cfg, snapshot_id: str, user_keys: list[str]) -> np.ndarray:
    """Per user: log of their events, and the mean log count of their recent tokens."""
    import pyarrow.parquet as pq

    from schemas.snapshot import HISTORIES_DIR, vocab_dir

    snapshot = store.snapshot_dir(cfg.index.dataset, snapshot_id)
    token_counts = pq.read_table(snapshot / vocab_dir("token")).to_pandas().set_index("index")["count"]
    user_index = pq.read_table(snapshot / vocab_dir("user")).to_pandas().set_index("key")["index"]
    log_count = np.zeros(int(token_counts.index.max()) + 1)
    log_count[token_counts.index] = np.log(token_counts.to_numpy())
    histories = pq.read_table(snapshot / HISTORIES_DIR).to_pandas().set_index("user")
    features = []
    for key in user_keys:
        row = histories.loc[user_index[key]]
        features.append([np.log(row.events), log_count[np.asarray(row.recent)].mean()])
    return np.array(features)


def _standardised(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)


def generator_speed(users: int) -> dict:
    from jobs.synthetic.config import SyntheticEvents
    from jobs.synthetic.events import generate

    started = time.perf_counter()
    events, _, _ = generate(SyntheticEvents(users=users))
    seconds = time.perf_counter() - started
    return {"users": users, "events": events.num_rows, "seconds": seconds, "events_per_s": events.num_rows / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--generator-users", type=int, default=200_000, help="0: skip the generator timing")
    args = parser.parse_args()
    spark_env()
    logging.basicConfig(level=logging.WARNING)
    import latentstore
    from jobs import stages
    from jobs.stages import resolve_input
    from jobs.synthetic.planted import planted_labels
    from schemas.store import StoreLayout

    cfg = _config(args.users)
    workdir = ROOT / "benchmarks" / "data" / "planted"
    shutil.rmtree(workdir, ignore_errors=True)
    store = StoreLayout(workdir)
    indexed = stages.index(cfg, store)
    trained = {}
    for model in cfg.model_names():
        trained[model] = stages.train(cfg, store, model=model, snapshot_id=indexed["snapshot_id"])
        stages.publish(cfg, store, model=model, snapshot_id=indexed["snapshot_id"])
    group, segment = planted_labels(Path(resolve_input(cfg.index, store).input.path))

    con = latentstore.connect(workdir)
    results, rng = {}, np.random.default_rng(42)
    for model, outcome in trained.items():
        family = outcome["family"]
        token_keys, token_vectors, token_counts = _table(con, model, "token")
        user_keys, user_vectors, _ = _table(con, model, "user")
        token_labels = np.array([group[k] for k in token_keys])
        user_labels = np.array([segment[k] for k in user_keys])
        results[family] = {**_measures(token_vectors, token_labels, user_vectors, user_labels),
                           "valid_hr_at_10": outcome["metrics"]["valid_hr_at_10"],
                           "train_seconds": outcome["metrics"]["train_seconds"],
                           "tokens": len(token_keys), "users": len(user_keys)}
        results[f"random_{family}"] = _measures(rng.normal(size=token_vectors.shape), token_labels,
                                                rng.normal(size=user_vectors.shape), user_labels)
    token_features = np.log(token_counts)[:, None]
    user_features = _standardised(_user_popularity(store, cfg, indexed["snapshot_id"], user_keys))
    results["popularity"] = _measures(token_features, token_labels, user_features, user_labels, metric="euclidean")
    con.close()

    checks = {}
    for family in ("skipgram", "gru"):
        model = results[family]
        checks[f"{family}_token_share_at_least_{TARGET_SHARE}"] = model["token_neighbour_share"] >= TARGET_SHARE
        for baseline in (f"random_{family}", "popularity"):
            for measure in ("token_neighbour_share", "user_knn_accuracy"):
                checks[f"{baseline}_{measure}_at_most_half_of_{family}"] = \
                    results[baseline][measure] <= 0.5 * model[measure]
    payload = {
        "log": {"users": args.users, "events": indexed["counts"]["read"], "kept": indexed["counts"]["kept"],
                "tokens": indexed["vocab"]["token"]["keys"], "segments": cfg.index.input.synthetic.segments,
                "sessions": indexed["sessions"]["sessions"]},
        **results,
        "checks": checks,
        "all_met": all(checks.values()),
    }
    if args.generator_users:
        payload["generator"] = generator_speed(args.generator_users)
    path = write_result("planted", payload)
    for family in ("skipgram", "gru", "random_skipgram", "random_gru", "popularity"):
        r = results[family]
        print(f"{family:16s} token share {r['token_neighbour_share']:.3f}  user kNN {r['user_knn_accuracy']:.3f}")
    print(f"all checks met: {payload['all_met']} -> {path}")


if __name__ == "__main__":
    main()
