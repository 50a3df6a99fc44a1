"""Indexing 10M ratings: the project's Spark job against StringIndexer and one DuckDB query.

Generates a ratings table (500k users, 50k items, Zipf popularity, 0.1% bad
rows) as Parquet under benchmarks/data/, then, each engine in its own
process so that peak memory (the JVM included) is its own:

- latentstore: jobs.index (read, validate + quarantine, dedup, vocabularies,
  split, indexed Parquet + manifest), into a fresh store each repetition;
- stringindexer: Spark ML StringIndexer fit + transform on both id columns,
  written as Parquet (no validation, no dedup, no split);
- duckdb: one SQL statement doing the project's work (validation, latest
  rating per pair, count-ordered vocabularies, join, Parquet out).

Median of 3 runs each; Spark session start is reported separately. Writes
benchmarks/results/index.json.

    .venv/bin/python benchmarks/index.py [--rows 10000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, PeakRss, write_result  # noqa: E402

DATA = ROOT / "benchmarks" / "data"
SPARK = {"master": "local[*]", "driver_memory": "4g", "shuffle_partitions": 8}


def generate(rows: int, users: int, items: int, path: Path, seed: int = 42) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    item_weights = 1.0 / np.arange(1, items + 1) ** 1.0  # Zipf popularity
    user_weights = 1.0 / np.arange(1, users + 1) ** 0.5
    chunk = 1_000_000
    for part, start in enumerate(range(0, rows, chunk)):
        n = min(chunk, rows - start)
        u = rng.choice(users, size=n, p=user_weights / user_weights.sum())
        i = rng.choice(items, size=n, p=item_weights / item_weights.sum())
        rating = (rng.integers(1, 11, size=n) / 2).astype(str)
        bad = rng.random(n) < 0.001
        rating[bad] = "n/a"  # quarantined as non_numeric_rating
        table = pa.table({
            "user": pa.array([f"u{x}" for x in u]),
            "item": pa.array([f"i{x}" for x in i]),
            "rating": pa.array(rating),
            "timestamp": pa.array(1_500_000_000 + rng.integers(0, 10**8, size=n)),
        })
        pq.write_table(table, path / f"part-{part:03d}.parquet", row_group_size=250_000)


# -- engines, each run in a child process --------------------------------------------------

def engine_latentstore(data: Path, repeats: int) -> dict:
    from jobs.index.config import IndexConfig
    from jobs.index.job import run
    from jobs.index.spark import spark_session
    from schemas.store import StoreLayout

    cfg = IndexConfig.model_validate({"dataset": "bench", "input": {"path": str(data)}, "spark": SPARK})
    started = time.perf_counter()
    spark_session(cfg.spark)
    session_start = time.perf_counter() - started
    runs, counts = [], None
    for _ in range(repeats):
        store = Path(tempfile.mkdtemp(prefix="bench-store-", dir=DATA))
        tick = time.perf_counter()
        result = run(cfg, StoreLayout(store))
        runs.append(time.perf_counter() - tick)
        counts = result.manifest.counts.model_dump()
        shutil.rmtree(store)
    return {"runs": runs, "session_start_seconds": session_start, "counts": counts}


def engine_stringindexer(data: Path, repeats: int) -> dict:
    from pyspark.ml.feature import StringIndexer

    from jobs.index.config import SparkConfig
    from jobs.index.spark import spark_session

    started = time.perf_counter()
    spark = spark_session(SparkConfig(**SPARK))
    session_start = time.perf_counter() - started
    runs = []
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp(prefix="bench-si-", dir=DATA))
        tick = time.perf_counter()
        frame = spark.read.parquet(str(data))
        indexer = StringIndexer(inputCols=["user", "item"], outputCols=["user_index", "item_index"],
                                stringOrderType="frequencyDesc", handleInvalid="keep")
        indexer.fit(frame).transform(frame).write.mode("overwrite").parquet(str(out / "indexed"))
        runs.append(time.perf_counter() - tick)
        shutil.rmtree(out)
    return {"runs": runs, "session_start_seconds": session_start}


DUCKDB_SQL = """
COPY (
  WITH raw AS (
    SELECT user, item, TRY_CAST(rating AS DOUBLE) AS rating, TRY_CAST(timestamp AS BIGINT) AS ts
    FROM read_parquet('{data}/*.parquet')
  ), valid AS (
    SELECT * FROM raw
    WHERE user IS NOT NULL AND item IS NOT NULL AND rating BETWEEN 0.5 AND 5.0 AND ts IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY user, item ORDER BY ts DESC, rating DESC) = 1
  ), users AS (
    SELECT user, row_number() OVER (ORDER BY count(*) DESC, user) AS user_index FROM valid GROUP BY user
  ), items AS (
    SELECT item, row_number() OVER (ORDER BY count(*) DESC, item) AS item_index FROM valid GROUP BY item
  )
  SELECT users.user_index::INTEGER AS user, items.item_index::INTEGER AS item, rating::FLOAT AS rating, ts,
         CASE WHEN hash(valid.user, valid.item, 42) % 1000000 < 100000 THEN 'valid' ELSE 'train' END AS split
  FROM valid JOIN users USING (user) JOIN items USING (item)
) TO '{out}' (FORMAT parquet, PARTITION_BY (split))
"""


def engine_duckdb(data: Path, repeats: int) -> dict:
    import duckdb

    runs = []
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp(prefix="bench-duck-", dir=DATA))
        con = duckdb.connect(str(out / "tmp.duckdb"))  # a file, so large intermediates can spill
        tick = time.perf_counter()
        con.execute(DUCKDB_SQL.format(data=data, out=out / "indexed"))
        runs.append(time.perf_counter() - tick)
        con.close()
        shutil.rmtree(out)
    return {"runs": runs, "session_start_seconds": 0.0}


ENGINES = {"latentstore": engine_latentstore, "stringindexer": engine_stringindexer, "duckdb": engine_duckdb}


def run_engine(name: str, data: Path, repeats: int) -> dict:
    """Run one engine in a child process and sample its process tree's memory."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_CONF_DIR": str(ROOT / "infra" / "spark")}
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", name, "--data", str(data), "--repeats", str(repeats)],
        stdout=subprocess.PIPE, env=env, text=True,
    )
    with PeakRss(child.pid) as peak:
        out, _ = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"{name} failed with exit code {child.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["seconds"] = statistics.median(result["runs"])
    result["peak_rss_mb"] = round(peak.peak_mb, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=500_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES),
                        help="a subset, for quick iterations (results are written only for all three)")
    parser.add_argument("--child", choices=sorted(ENGINES))
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    if args.child:
        import logging

        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
        print(json.dumps(ENGINES[args.child](args.data, args.repeats)))
        return

    data = DATA / f"ratings-{args.rows}"
    if not data.is_dir():
        tick = time.perf_counter()
        generate(args.rows, args.users, args.items, data)
        print(f"generated {args.rows} rows in {time.perf_counter() - tick:.1f}s -> {data}", flush=True)
    results = {"rows": args.rows, "users": args.users, "items": args.items, "repeats": args.repeats,
               "spark": SPARK}
    for name in args.engines:
        results[name] = run_engine(name, data, args.repeats)
        print(f"{name}: median {results[name]['seconds']:.1f}s, peak RSS {results[name]['peak_rss_mb']:.0f} MB",
              flush=True)
    if set(args.engines) != set(ENGINES):
        return
    results["ratios"] = {
        "latentstore_vs_stringindexer": results["latentstore"]["seconds"] / results["stringindexer"]["seconds"],
        "latentstore_vs_duckdb": results["latentstore"]["seconds"] / results["duckdb"]["seconds"],
    }
    results["target_met"] = results["ratios"]["latentstore_vs_stringindexer"] <= 1.0
    print(json.dumps(results["ratios"]), "->", write_result("index", results))


if __name__ == "__main__":
    main()
