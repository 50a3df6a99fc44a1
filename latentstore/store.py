"""Queries downstream jobs run, on one persistent read-only connection.

    import latentstore
    store = latentstore.open_store("latentstore-data")            # the current versions
    store.similar("movielens", "item", "50", k=10, min_count=20)   # [(key, distance, count), ...]
    store.nearest("movielens", "item", vector, k=10)
    store.similar_many("movielens", "item", ["50", "172"], k=10)   # Arrow table: query, rank, key, distance
    store.features("movielens", "user", keys)                      # Arrow table: your rows + vector, bias, count
    store.analogy("movielens", "item", "a", "b", "c")              # nearest to a - b + c
    latentstore.open_store(dir, as_of="2026-11-24T12:00:00Z")      # the versions current then

Single queries are SQL with bound parameters on the model's own table (DuckDB
re-plans them, and vss then uses the HNSW index when the table has one; about
1 ms at 50k rows here). vss's index scan cannot filter: a WHERE clause inside it
returns fewer rows than asked (often none), so a filtered query over-fetches from
the index, filters, and falls back to an exact scan when too few rows pass.
Many queries at once go through jobs.store.knn (exact, blocked, streamed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.store.duck import quote_identifier
from jobs.store.knn import batches_of, top_k, unit, vectors_of
from latentstore.client import connect
from schemas.errors import StoreError

#: Filtered HNSW queries fetch this many times k candidates first, growing by the same factor.
OVERFETCH = 4
#: Beyond this many candidates a filtered query scans exactly instead.
MAX_CANDIDATES = 4096
_BATCH_ROWS = 1 << 17


@dataclass(frozen=True)
class Table:
    model: str
    entity: str
    name: str  # qualified: model.entity
    dim: int
    hnsw: bool
    version: int


class Store:
    def __init__(self, root: str | Path, as_of=None, versions: dict[str, int] | None = None):
        self.root = Path(root)
        self.con = connect(root, as_of=as_of, versions=versions)
        self._tables: dict[tuple[str, str], Table] = {}
        import json

        attached = self.con.execute("SELECT v.model, v.version, v.entities FROM versions v "
                                    "JOIN models m ON m.model = v.model AND m.version = v.version").fetchall()
        for model, version, entities in attached:
            for entity, info in json.loads(entities).items():
                self._tables[(model, entity)] = Table(model, entity, f'{model}."{info["table"]}"', int(info["dim"]),
                                                      bool(info["hnsw"]), int(version))

    # -- plumbing ---------------------------------------------------------------------------------
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def table(self, model: str, entity: str) -> Table:
        if (model, entity) in self._tables:
            return self._tables[(model, entity)]
        models = sorted({m for m, _ in self._tables})
        if model not in models:
            raise StoreError(f"no model {model!r} in the store; models: {', '.join(models) or 'none'}")
        entities = sorted(e for m, e in self._tables if m == model)
        raise StoreError(f"model {model!r} has no entity {entity!r}; entities: {', '.join(entities)}")

    def vector(self, model: str, entity: str, key: str) -> np.ndarray:
        table = self.table(model, entity)
        row = self.con.execute(f"SELECT vector FROM {table.name} WHERE key = ?", [str(key)]).fetchone()
        if row is None:
            raise StoreError(f"key {key!r} not found in {model}.{entity}")
        return np.asarray(row[0], dtype=np.float32)

    # -- one query ----------------------------------------------------------------------------------
    def similar(self, model: str, entity: str, key: str, k: int = 10, min_count: int = 0) -> list[tuple]:
        """The ``k`` keys nearest ``key`` by cosine distance (itself excluded): (key, distance, count)."""
        return self.nearest(model, entity, self.vector(model, entity, key), k, min_count, exclude={str(key)})

    def nearest(self, model: str, entity: str, vector, k: int = 10, min_count: int = 0,
                exclude: set[str] = frozenset(), exact: bool = False) -> list[tuple]:
        """The ``k`` keys nearest ``vector`` (cosine): (key, distance, count), only keys with count >= min_count."""
        table = self.table(model, entity)
        vector = np.asarray(vector, dtype=np.float32).tolist()
        if len(vector) != table.dim:
            raise StoreError(f"{model}.{entity} vectors have {table.dim} dimensions, the query has {len(vector)}")
        if table.hnsw and not exact:
            fetch = k + len(exclude)
            while fetch <= MAX_CANDIDATES:
                rows = self._candidates(table, vector, fetch)
                kept = [r for r in rows if r[0] not in exclude and r[2] >= min_count]
                if len(kept) >= k or len(rows) < fetch:
                    return kept[:k]
                fetch *= OVERFETCH  # the filter removed too many: ask the index for more
        return self._exact(table, vector, k, min_count, exclude)

    def _candidates(self, table: Table, vector: list[float], fetch: int) -> list[tuple]:
        """Nearest ``fetch`` rows through the HNSW index on ``unit`` (inner product of unit vectors = cosine;
        no WHERE: vss cannot filter inside its scan)."""
        score = f"array_negative_inner_product(unit, $1::FLOAT[{table.dim}])"
        query = unit(np.asarray([vector], dtype=np.float32))[0].tolist()
        # the projection must be exactly the ORDER BY expression for vss to use its index
        rows = self.con.execute(f"SELECT key, {score} AS score, count FROM {table.name} ORDER BY {score} LIMIT $2",
                                [query, fetch]).fetchall()
        return [(key, 1.0 + score_value, count) for key, score_value, count in rows]

    def _exact(self, table: Table, vector: list[float], k: int, min_count: int, exclude: set[str]) -> list[tuple]:
        cast = f"$1::FLOAT[{table.dim}]"
        return self.con.execute(
            f"SELECT key, distance, count FROM (SELECT key, array_cosine_distance(vector, {cast}) AS distance, count "
            f"FROM {table.name} WHERE count >= $2 AND NOT list_contains($3, key)) ORDER BY distance, key LIMIT $4",
            [vector, min_count, sorted(exclude), k]).fetchall()

    def analogy(self, model: str, entity: str, a: str, b: str, c: str, k: int = 10, min_count: int = 0) -> list[tuple]:
        """Keys nearest to unit(a) - unit(b) + unit(c), excluding a, b and c ("b is to a as c is to ?")."""
        va, vb, vc = (unit(self.vector(model, entity, key)[None, :])[0] for key in (a, b, c))
        return self.nearest(model, entity, va - vb + vc, k, min_count, exclude={str(a), str(b), str(c)})

    # -- many queries -------------------------------------------------------------------------------
    def similar_many(self, model: str, entity: str, keys, k: int = 10) -> pa.Table:
        """Top-k of many keys at once (exact): columns query, rank, key, distance; unknown keys get no rows."""
        table = self.table(model, entity)
        queries = self._lookup(table, [str(key) for key in keys])
        known = queries.filter(pc.invert(pc.is_null(queries.column("vector"))))
        reader = self.con.execute(f"SELECT key, vector FROM {table.name}").to_arrow_reader(_BATCH_ROWS)
        found = top_k(vectors_of(known.column("vector")), batches_of(reader), k + 1)
        query_keys = known.column("query").to_pylist()
        out = {"query": [], "rank": [], "key": [], "distance": []}
        for query, neighbours, distances in zip(query_keys, found.keys, found.distances):
            rank = 0
            for key, distance in zip(neighbours, distances):
                if key == query or rank == k:
                    continue
                rank += 1
                out["query"].append(query)
                out["rank"].append(rank)
                out["key"].append(key)
                out["distance"].append(float(distance))
        return pa.table({"query": pa.array(out["query"], pa.string()), "rank": pa.array(out["rank"], pa.int32()),
                         "key": pa.array(out["key"], pa.string()), "distance": pa.array(out["distance"], pa.float32())})

    def _lookup(self, table: Table, keys: list[str]) -> pa.Table:
        """(query, vector) per key in order; NULL vector for an unknown key."""
        wanted = pa.table({"query": pa.array(keys, pa.string()), "position": pa.array(range(len(keys)), pa.int64())})
        self.con.register("wanted_keys", wanted)
        try:
            return self.con.execute(f"SELECT w.query, t.vector FROM wanted_keys w LEFT JOIN {table.name} t "
                                    "ON t.key = w.query ORDER BY w.position").to_arrow_table()
        finally:
            self.con.unregister("wanted_keys")

    def features(self, model: str, entity: str, rows: pa.Table, key_column: str = "key") -> tuple[pa.Table, int]:
        """``rows`` with the entity's ``vector``, ``bias`` and ``count`` joined on ``key_column`` (as text), in
        order; a key without a vector keeps its row with NULLs. Returns (table, how many keys were unknown)."""
        table = self.table(model, entity)
        if key_column not in rows.column_names:
            raise StoreError(f"no column {key_column!r} among {', '.join(rows.column_names)}; set the key column")
        taken = {"vector", "bias", "count", "__position"} & set(rows.column_names)
        if taken:
            raise StoreError(f"the key table already has columns named {', '.join(sorted(taken))}")
        numbered = rows.append_column("__position", pa.array(range(rows.num_rows), pa.int64()))
        self.con.register("feature_rows", numbered)
        try:
            joined = self.con.execute(
                f'SELECT r.* EXCLUDE (__position), e.vector, e.bias, e.count FROM feature_rows r '
                f'LEFT JOIN {table.name} e ON e.key = CAST(r.{quote_identifier(key_column)} AS VARCHAR) ORDER BY r.__position'
            ).to_arrow_table()
        finally:
            self.con.unregister("feature_rows")
        return joined, joined.column("vector").null_count


def open_store(root: str | Path, as_of=None, versions: dict[str, int] | None = None) -> Store:
    return Store(root, as_of=as_of, versions=versions)
