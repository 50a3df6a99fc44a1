"""Query speed at 100k and 1M vectors: lookups, SQL top-10, batch top-10, publish with HNSW, against faiss and numpy.

    .venv/bin/python benchmarks/query.py [--sizes 100000,1000000] [--queries 1000] [--batch 10000]

Vectors: dim 64 with realistic cluster structure (100 topics x 50 sub-clusters,
Zipf-sized, Gaussian spread; keys k0000000...). For each size, in the same run:

- ``publish_seconds``: the project's publish job on them, from the training output to the current
  version (version file with its unit vectors, ART index on key, HNSW index with M 16,
  ef_construction 128: the config defaults; registry, pointer); ``faiss_hnsw_build_seconds``:
  faiss IndexHNSWFlat with the same M and efConstruction on the unit vectors.
- ``lookup_p50_ms``: a key's vector on a persistent connection (latentstore.open_store).
- ``sql_top10_*``: the documented top-10 path for a key, on a persistent connection with bound
  parameters: the key's vector, then ``ORDER BY array_cosine_distance(vector, $1) LIMIT 11`` on the
  model's table (HNSW). Recall@10 against exact numpy brute force on the same queries.
  ``sql_top10_vector_p50_ms``: the same for a given vector (one statement);
  ``numpy_top10_p50_ms``: exact brute force over the in-memory matrix (jobs.store.knn, the sampled queries in
  one batch), per query.
- ``batch_seconds``: top-10 of 10,000 keys through ``similar_many`` (exact, blocked, streamed);
  ``faiss_flat_batch_seconds``: faiss IndexFlatIP on the same queries (11 neighbours, minus itself).

Threads: faiss and numpy use the machine's 2 cores, as DuckDB does. Needs the bench extra (faiss).
Writes benchmarks/results/query.json.
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

from benchmarks._common import ROOT, write_result  # noqa: E402

DIM, M, EF_CONSTRUCTION, K = 64, 16, 128, 10


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(100, DIM)) * 1.0
    subs = np.repeat(topics, 50, axis=0) + rng.normal(size=(5000, DIM)) * 0.5
    sizes = 1.0 / np.arange(1, 5001) ** 0.7
    which = rng.choice(5000, size=n, p=sizes / sizes.sum())
    return (subs[which] + rng.normal(size=(n, DIM)) * 0.35).astype(np.float32)


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, q))


def measure(n: int, queries: int, batch: int) -> dict:
    import faiss

    import latentstore
    from jobs.publish.config import PublishConfig
    from jobs.publish.job import run
    from jobs.store.knn import top_k_rows, unit as unit_rows
    from schemas.store import StoreLayout
    from tests.external import Vectors, prepare

    faiss.omp_set_num_threads(2)
    vectors = clustered(n)
    keys = [f"k{i:07d}" for i in range(n)]
    work = ROOT / "benchmarks" / "data" / "query" / str(n)
    shutil.rmtree(work, ignore_errors=True)
    cfg = PublishConfig(hnsw_min_rows=1, hnsw_m=M, hnsw_ef_construction=EF_CONSTRUCTION)
    inputs = prepare({"item": Vectors(keys, vectors)}, work / "input", "bench")  # what training leaves behind
    started = time.perf_counter()
    run(cfg, "bench", StoreLayout(work / "store"), inputs.run_dir, inputs.result, inputs.snapshot, inputs.manifest)
    publish_seconds = time.perf_counter() - started
    print(f"{n}: published in {publish_seconds:.1f}s", flush=True)

    unit = unit_rows(vectors)
    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(DIM, M, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = EF_CONSTRUCTION
    hnsw.add(unit)
    faiss_hnsw_build = time.perf_counter() - started
    del hnsw
    print(f"{n}: faiss HNSW built in {faiss_hnsw_build:.1f}s", flush=True)

    rng = np.random.default_rng(1)
    sample = rng.choice(n, queries, replace=False)
    store = latentstore.open_store(work / "store")
    for i in sample[:20]:  # warm the connection and the index
        store.similar("bench", "item", keys[i], k=K)
    # each operation in its own loop: interleaved, the brute-force reference evicts the caches of the next query
    lookup, top10, top10_vector, found = [], [], [], {}
    for i in sample:
        tick = time.perf_counter()
        store.vector("bench", "item", keys[i])
        lookup.append(time.perf_counter() - tick)
    for i in sample:
        tick = time.perf_counter()
        found[i] = store.similar("bench", "item", keys[i], k=K)
        top10.append(time.perf_counter() - tick)
    for i in sample:
        tick = time.perf_counter()
        store.nearest("bench", "item", vectors[i], k=K)
        top10_vector.append(time.perf_counter() - tick)
    recall_hits = 0
    tick = time.perf_counter()
    _, exact = top_k_rows(unit[sample], unit, K + 1)  # the store's exact top-k, all sampled queries at once
    numpy_times = [(time.perf_counter() - tick) / len(sample)] * len(sample)
    for i, truth in zip(sample, exact):
        truth_keys = [keys[j] for j in truth if j != i][:K]  # ranked, the query itself left out
        recall_hits += len({key for key, _, _ in found[i]} & set(truth_keys))
    batch_keys = [keys[i] for i in rng.choice(n, batch, replace=False)]
    tick = time.perf_counter()
    result = store.similar_many("bench", "item", batch_keys, k=K)
    batch_seconds = time.perf_counter() - tick
    store.close()
    assert result.num_rows == batch * K
    flat = faiss.IndexFlatIP(DIM)
    flat.add(unit)
    positions = np.array([int(key[1:]) for key in batch_keys])
    tick = time.perf_counter()
    flat.search(unit[positions], K + 1)
    faiss_flat = time.perf_counter() - tick
    print(f"{n}: batch {batch_seconds:.1f}s vs faiss flat {faiss_flat:.1f}s", flush=True)
    return {
        "lookup_p50_ms": percentile_ms(lookup, 50),
        "sql_top10_p50_ms": percentile_ms(top10, 50),
        "sql_top10_p99_ms": percentile_ms(top10, 99),
        "sql_top10_recall": recall_hits / (queries * K),
        "sql_top10_vector_p50_ms": percentile_ms(top10_vector, 50),
        "numpy_top10_p50_ms": percentile_ms(numpy_times, 50),
        "batch_seconds": batch_seconds,
        "faiss_flat_batch_seconds": faiss_flat,
        "batch_over_faiss_flat_speed": faiss_flat / batch_seconds,
        "publish_seconds": publish_seconds,
        "faiss_hnsw_build_seconds": faiss_hnsw_build,
        "publish_over_faiss_hnsw_build": publish_seconds / faiss_hnsw_build,
        "queries": queries,
        "batch_keys": batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = {}
    for size in (int(s) for s in args.sizes.split(",")):
        results[str(size)] = measure(size, args.queries, args.batch)
    targets = {}
    if "1000000" in results:
        big = results["1000000"]
        targets = {
            "sql_top10_p50_ms_at_most_5": big["sql_top10_p50_ms"] <= 5,
            "sql_top10_recall_at_least_0.95": big["sql_top10_recall"] >= 0.95,
            "batch_at_least_half_faiss_flat": big["batch_over_faiss_flat_speed"] >= 0.5,
            "publish_at_most_3x_faiss_hnsw": big["publish_over_faiss_hnsw_build"] <= 3,
        }
    path = write_result("query", {**results, "settings": {"dim": DIM, "M": M, "ef_construction": EF_CONSTRUCTION,
                                                         "k": K}, "targets_at_1m": targets})
    for size, r in results.items():
        print(f"{size}: lookup {r['lookup_p50_ms']:.2f} ms, top-10 p50 {r['sql_top10_p50_ms']:.2f} / p99 "
              f"{r['sql_top10_p99_ms']:.2f} ms, recall {r['sql_top10_recall']:.3f}, batch {r['batch_seconds']:.1f}s "
              f"(faiss flat {r['faiss_flat_batch_seconds']:.1f}s), publish {r['publish_seconds']:.0f}s "
              f"(faiss HNSW {r['faiss_hnsw_build_seconds']:.0f}s)")
    print(f"targets at 1M: {targets} -> {path}")


if __name__ == "__main__":
    main()
