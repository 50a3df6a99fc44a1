"""Drift between two versions of a model, without ever comparing raw vectors across them.

Vectors of two trainings live in unrelated coordinate systems, so what is
compared is each key's neighbourhood: for a seeded sample of keys present in
both versions, the overlap of its 10 nearest neighbours (cosine, itself excluded)
in the old version and in the new one. Also the share of the new version's keys
that are new, and of the old version's keys that were removed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jobs.store.current_sql import literal
from jobs.store.duck import connect
from jobs.store.knn import batches_of, top_k, vectors_of
from schemas.store import check_name

K = 10
_BATCH_ROWS = 1 << 17


def _keys(con, alias: str, table: str) -> list[str]:
    return con.execute(f'SELECT key FROM {alias}."{table}" ORDER BY key').to_arrow_table().column("key").to_pylist()


def _neighbours(con, alias: str, table: str, sample: list[str], k: int) -> list[set[str]]:
    sample_table = con.execute(
        f'SELECT s.i, t.vector FROM (SELECT unnest($keys) AS key, generate_subscripts($keys, 1) AS i) s '
        f'JOIN {alias}."{table}" t USING (key) ORDER BY s.i', {"keys": sample}
    ).to_arrow_table()
    queries = vectors_of(sample_table.column("vector"))
    reader = con.execute(f'SELECT key, vector FROM {alias}."{table}"').to_arrow_reader(_BATCH_ROWS)
    found = top_k(queries, batches_of(reader), k + 1).keys  # k + 1: each sampled key finds itself first
    return [set([n for n in row if n != key][:k]) for key, row in zip(sample, found)]


def compare(old_file: Path, new_file: Path, tables: list[str], sample_size: int, seed: int) -> dict[str, dict]:
    """Per table in both versions: neighbour overlap@10 on the sample, shares of new and removed keys."""
    con = connect(":memory:")
    try:
        con.execute(f"ATTACH {literal(str(old_file))} AS old_version (READ_ONLY)")
        con.execute(f"ATTACH {literal(str(new_file))} AS new_version (READ_ONLY)")
        out = {}
        for table in tables:
            table = check_name(table, "entity")
            old_keys, new_keys = _keys(con, "old_version", table), _keys(con, "new_version", table)
            old_set, new_set = set(old_keys), set(new_keys)
            common = sorted(old_set & new_set)
            rng = np.random.default_rng(seed)
            sample = [common[i] for i in np.sort(rng.choice(len(common), min(sample_size, len(common)), replace=False))]
            k = min(K, len(old_keys) - 1, len(new_keys) - 1)
            overlap = None
            if sample and k > 0:
                before = _neighbours(con, "old_version", table, sample, k)
                after = _neighbours(con, "new_version", table, sample, k)
                overlap = float(np.mean([len(a & b) / k for a, b in zip(before, after)]))
            out[table] = {
                "overlap_at_10": overlap,
                "k": k,
                "sample": len(sample),
                "new_keys": len(new_set - old_set) / max(len(new_set), 1),
                "removed_keys": len(old_set - new_set) / max(len(old_set), 1),
            }
        return out
    finally:
        con.close()
