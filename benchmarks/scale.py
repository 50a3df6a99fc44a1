"""The real stages at the product's scale: 1M and 25M ratings, Spark ALS, a 5M-event log.

    .venv/bin/python benchmarks/scale.py [--quick] [--skip-als] [--skip-events]

Data (generated under benchmarks/data/scale/, reused when present):
- ratings: ``jobs.synthetic.ratings`` shaped like MovieLens 25M (162,541 users,
  59,047 items, 155 ratings per user on average: 25M ratings; Zipf item
  popularity, planted taste clusters), and a 1M set of the same shape (6,500 users);
- events: ``jobs.synthetic.events`` with 5M+ events in sessions of median <= 10.

Each stage runs as the pipeline runs it, through the CLI (``latentstore index |
train | publish``) in its own process, on a config written next to the data (the
defaults: auto batch size and learning rate, implicit feedback, 10 epochs): its
seconds, rows per second and the peak RSS of its process tree (Spark's JVM
included) are recorded. Spark MLlib's ALS trains on the same snapshot and split
(rank = dim, 10 iterations, regParam picked on the 1M set from a small grid),
in its own process: fit seconds and validation RMSE.

Events: the index stage, then skipgram and gru (their throughput from the
run's own words/s and events/s over ``--sequence-epochs`` epochs, fewer than the
defaults, stated in the file) and gensim's Word2Vec on the same training
sessions with the same settings (2 workers) in this run.

Writes benchmarks/results/scale.json with the keys of issue 11 and the targets met.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks._common import ROOT, PeakRss, spark_env, write_result  # noqa: E402
from jobs.index.snapshots import latest_id, read_manifest  # noqa: E402
from schemas.store import StoreLayout  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "scale"
ML25M = {"users": 162_541, "items": 59_047, "ratings_per_user": 155}
ALS_REG_GRID = (0.05, 0.1, 0.2)
DIM, EPOCHS = 64, 10
TARGETS = {"mf_rate_25m_over_1m_at_least": 0.8, "peak_rss_mb_at_most": 8192, "gru_events_per_s_at_least": 20_000,
           "skipgram_over_gensim_at_least": 1.0}


def _ratings_config(name: str, users: int, items: int, per_user: int) -> Path:
    directory = DATA / name
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "config.toml"
    config.write_text(textwrap.dedent(f"""\
        name = "{name}"
        [index]
        min_count = 1
        rating_range = [0.5, 5.0]
        split = {{ kind = "random", fraction = 0.1, seed = 42 }}
        [index.input.synthetic]
        users = {users}
        items = {items}
        clusters = 20
        ratings_per_user = {per_user}
        noise = 0.5
        seed = 42
        [index.spark]
        master = "local[*]"
        driver_memory = "4g"
        [train]
        model = "mf"
        dim = {DIM}
        epochs = {EPOCHS}
        threads = 2
        [publish]
        hnsw_min_rows = 100000
        """))
    return config


def _events_config(users: int, epochs: int) -> Path:
    directory = DATA / "events"
    directory.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "configs" / "synthetic-events.toml").read_text()
    text = text.replace('name = "events"', 'name = "scale_events"').replace("users = 4000", f"users = {users}")
    text = text.replace("epochs = 5", f"epochs = {epochs}").replace("epochs = 8", f"epochs = {epochs}")
    text = text.replace('master = "local[*]"', 'master = "local[*]"\ndriver_memory = "4g"')
    config = directory / "config.toml"
    config.write_text(text)
    return config


def _stage(stage: str, config: Path, store: Path, *extra: str) -> tuple[float, float, str]:
    """(seconds, peak RSS MB of the process tree, output) of one CLI stage in its own process."""
    started = time.perf_counter()
    # ``-m`` from ROOT: the stages run this tree's code (a worktree's, when the benchmark runs from one)
    with subprocess.Popen([sys.executable, "-m", "latentstore.cli", stage, str(config), "--store", str(store),
                           *extra], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as child:
        with PeakRss(child.pid) as peak:
            output, _ = child.communicate()
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"latentstore {stage} {config} failed ({child.returncode}):\n{output[-4000:]}")
    return seconds, peak.peak_mb, output


def _run_result(store: Path, model: str) -> dict:
    """The finished run of ``model`` (a family) in a fresh store."""
    results = [json.loads(p.read_text()) for p in (store / "runs").glob("*/result.json")]
    return next(r for r in results if r["model"] == model)


def _snapshot_dir(store: Path, dataset: str) -> Path:
    layout = StoreLayout(store)
    return layout.snapshot_dir(dataset, latest_id(layout, dataset))


def ratings_case(name: str, users: int, items: int, per_user: int, reindex: bool = True) -> dict:
    """Index (unless ``reindex`` is False: the store's snapshot is kept), train and publish."""
    config = _ratings_config(name, users, items, per_user)
    store = DATA / name / "store"
    if reindex:
        shutil.rmtree(store, ignore_errors=True)
        index_s, index_rss, _ = _stage("index", config, store)
    else:
        index_s, index_rss = float("nan"), 0.0
        shutil.rmtree(store / "runs", ignore_errors=True)
    train_s, train_rss, _ = _stage("train", config, store)
    publish_s, publish_rss, _ = _stage("publish", config, store)
    result = _run_result(store, "mf")
    manifest = read_manifest(_snapshot_dir(store, name))
    metrics = result["metrics"]
    trained = manifest.counts.train * metrics["epochs_run"]
    return {
        "ratings": manifest.counts.kept, "users": manifest.vocab["user"].keys, "items": manifest.vocab["item"].keys,
        "index_seconds": index_s, "train_seconds": train_s, "publish_seconds": publish_s,
        "train_loop_seconds": metrics["train_seconds"],
        "ratings_per_s": trained / metrics["train_seconds"],
        "peak_rss_mb": max(index_rss, train_rss, publish_rss),
        "peak_rss_mb_by_stage": {"index": index_rss, "train": train_rss, "publish": publish_rss},
        "valid_rmse": metrics["valid_rmse"], "epochs_run": metrics["epochs_run"],
        "batch_size": result["params"]["batch_size"], "lr": result["params"]["lr"],
        "snapshot": str(_snapshot_dir(store, name)),
    }


ALS_SCRIPT = r"""
import json, sys, time
from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.ml.recommendation import ALS
from pyspark.sql import SparkSession
snapshot, rank, regs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
spark = (SparkSession.builder.master("local[*]").config("spark.driver.memory", "6g")
         .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "8").getOrCreate())
spark.sparkContext.setCheckpointDir(snapshot + "/../../als-checkpoints")
train = spark.read.parquet(snapshot + "/interactions/split=train").select("user", "item", "rating").cache()
valid = spark.read.parquet(snapshot + "/interactions/split=valid").select("user", "item", "rating").cache()
train.count(); valid.count()
out = []
for reg in regs:
    als = ALS(rank=rank, maxIter=10, regParam=reg, userCol="user", itemCol="item", ratingCol="rating",
              coldStartStrategy="drop", seed=42)
    started = time.perf_counter()
    model = als.fit(train)
    model.userFactors.count(); model.itemFactors.count()  # fit is lazy in parts: force the factors
    seconds = time.perf_counter() - started
    rmse = RegressionEvaluator(metricName="rmse", labelCol="rating").evaluate(model.transform(valid))
    out.append({"reg_param": reg, "train_seconds": seconds, "valid_rmse": rmse})
print("ALS-RESULT " + json.dumps(out))
"""


def als(snapshot: str, regs: tuple[float, ...]) -> tuple[list[dict], float]:
    with subprocess.Popen([sys.executable, "-c", ALS_SCRIPT, snapshot, str(DIM), json.dumps(list(regs))], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        with PeakRss(child.pid) as peak:
            output, errors = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"ALS failed:\n{errors[-4000:]}")
    line = next(line for line in output.splitlines() if line.startswith("ALS-RESULT "))
    return json.loads(line[len("ALS-RESULT "):]), peak.peak_mb


def gensim_words_per_s(snapshot: Path, epochs: int) -> dict:
    """gensim Word2Vec (skip-gram, dim 64, window 5, 5 negatives, sample 1e-3, 2 workers) on the same sessions."""
    from gensim.models import Word2Vec

    sessions = pq.read_table(snapshot / "sessions", columns=["tokens"])["tokens"].to_pylist()
    sentences = [[str(t) for t in s] for s in sessions]
    words = sum(len(s) for s in sentences)
    model = Word2Vec(vector_size=DIM, window=5, negative=5, ns_exponent=0.75, sample=1e-3, sg=1, min_count=1,
                     workers=2, alpha=0.025, min_alpha=1e-4, seed=42)
    model.build_vocab(sentences)
    started = time.perf_counter()
    model.train(sentences, total_examples=len(sentences), epochs=epochs)
    seconds = time.perf_counter() - started
    return {"words_per_s": words * epochs / seconds, "train_seconds": seconds, "words": words}


def events_case(users: int, epochs: int) -> dict:
    config = _events_config(users, epochs)
    store = DATA / "events" / "store"
    shutil.rmtree(store, ignore_errors=True)
    index_s, index_rss, _ = _stage("index", config, store)
    snapshot = _snapshot_dir(store, "scale_events")
    manifest = read_manifest(snapshot)
    runs, rss = {}, [index_rss]
    for model in ("skipgram", "gru"):
        seconds, peak, _ = _stage("train", config, store, "--model", f"scale_events_{model}")
        rss.append(peak)
        result = _run_result(store, model)
        runs[model] = {"seconds": seconds, "history": result["metrics"]["history"],
                       "hr_at_10": result["metrics"]["valid_hr_at_10"]}
    reference = gensim_words_per_s(snapshot, epochs)
    skipgram_rate = max(h["words_per_s"] for h in runs["skipgram"]["history"])
    gru_rate = max(h["events_per_s"] for h in runs["gru"]["history"])
    lengths = pq.read_table(snapshot / "sessions", columns=["length"])["length"].to_numpy()
    return {
        "events": manifest.counts.kept, "sessions": manifest.sessions.sessions,
        "median_session_events": float(np.median(lengths)),
        "index_seconds": index_s, "epochs": epochs,
        "skipgram_words_per_s": skipgram_rate, "gru_events_per_s": gru_rate,
        "skipgram_hr_at_10": runs["skipgram"]["hr_at_10"], "gru_hr_at_10": runs["gru"]["hr_at_10"],
        "gensim_words_per_s": reference["words_per_s"],
        "skipgram_over_gensim": skipgram_rate / reference["words_per_s"],
        "peak_rss_mb": max(rss), "train_seconds": {m: r["seconds"] for m, r in runs.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the benchmark itself")
    parser.add_argument("--skip-als", action="store_true")
    parser.add_argument("--skip-events", action="store_true")
    parser.add_argument("--sequence-epochs", type=int, default=2)
    parser.add_argument("--retrain-25m", action="store_true",
                        help="train and publish the 25M set again on its indexed snapshot, updating scale.json")
    args = parser.parse_args()
    spark_env()
    if args.retrain_25m:
        return retrain_25m()
    os.environ.setdefault("PREFECT_HOME", str(DATA / "prefect-home"))
    scale = 0.02 if args.quick else 1.0
    big_users = int(ML25M["users"] * scale)
    small_users = int(6_500 * (0.2 if args.quick else 1.0))
    result: dict = {"quick": args.quick, "dim": DIM, "epochs": EPOCHS, "targets": TARGETS}
    result["ratings_1m"] = ratings_case("scale_1m", small_users, int(ML25M["items"] * (0.2 if args.quick else 0.4)),
                                        ML25M["ratings_per_user"])
    print("ratings_1m", json.dumps(result["ratings_1m"]), flush=True)
    result["ratings_25m"] = ratings_case("scale_25m", big_users, int(ML25M["items"] * max(scale, 0.2)),
                                         ML25M["ratings_per_user"])
    print("ratings_25m", json.dumps(result["ratings_25m"]), flush=True)
    if not args.skip_als:
        grid, _ = als(result["ratings_1m"]["snapshot"], ALS_REG_GRID)
        best = min(grid, key=lambda r: r["valid_rmse"])
        runs, peak = als(result["ratings_25m"]["snapshot"], (best["reg_param"],))
        result["als_1m_grid"] = grid
        result["als_25m"] = {**runs[0], "peak_rss_mb": peak, "rank": DIM, "max_iter": 10}
        print("als_25m", json.dumps(result["als_25m"]), flush=True)
    met = _met_ratings(result)
    if not args.skip_events:
        result["events"] = events_case(int(110_000 * (0.05 if args.quick else 1.0)), args.sequence_epochs)
        result["events"]["note"] = (f"throughput and HR@10 after {args.sequence_epochs} epochs (fewer than the "
                                    "configs' 5 and 8, to keep the benchmark within the hour)")
        met["gru_events_per_s"] = result["events"]["gru_events_per_s"] >= TARGETS["gru_events_per_s_at_least"]
        met["skipgram_over_gensim"] = result["events"]["skipgram_over_gensim"] >= TARGETS[
            "skipgram_over_gensim_at_least"]
        print("events", json.dumps(result["events"]), flush=True)
    peaks = [result[k]["peak_rss_mb"] for k in ("ratings_1m", "ratings_25m", "events") if k in result]
    met["peak_rss"] = max(peaks) <= TARGETS["peak_rss_mb_at_most"]
    result["met"] = met
    path = write_result("scale-quick" if args.quick else "scale", result)
    print(f"-> {path}: {met}")


def _met_ratings(result: dict) -> dict:
    met = {"mf_rate_25m_over_1m": result["ratings_25m"]["ratings_per_s"] / result["ratings_1m"]["ratings_per_s"]
           >= TARGETS["mf_rate_25m_over_1m_at_least"]}
    if "als_25m" in result:
        met["rmse_at_most_als"] = result["ratings_25m"]["valid_rmse"] <= result["als_25m"]["valid_rmse"]
        met["train_seconds_at_most_als"] = (result["ratings_25m"]["train_loop_seconds"]
                                            <= result["als_25m"]["train_seconds"])
    return met


def retrain_25m() -> None:
    """The 25M case trained and published again on the snapshot the full run indexed (its index figures kept)."""
    path = ROOT / "benchmarks" / "results" / "scale.json"
    result = json.loads(path.read_text())
    before = result["ratings_25m"]
    again = ratings_case("scale_25m", ML25M["users"], ML25M["items"], ML25M["ratings_per_user"], reindex=False)
    again["index_seconds"] = before["index_seconds"]
    again["peak_rss_mb_by_stage"]["index"] = before["peak_rss_mb_by_stage"]["index"]
    again["peak_rss_mb"] = max(again["peak_rss_mb_by_stage"].values())
    again["retrained"] = {"why": "trained again after a code change on the snapshot of the full run",
                          "before": {k: before[k] for k in ("valid_rmse", "epochs_run", "ratings_per_s")}}
    result["ratings_25m"] = again
    result["met"].update(_met_ratings(result))
    result.pop("machine", None)
    print("ratings_25m", json.dumps(again), flush=True)
    print(f"-> {write_result('scale', result)}: {result['met']}")


if __name__ == "__main__":
    main()
