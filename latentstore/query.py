"""Queries people run from the CLI and Python, on the SQL surface of current.sql."""

from __future__ import annotations

from pathlib import Path

from latentstore.client import connect
from schemas.errors import StoreError


def _table_info(con, model: str, entity: str) -> dict:
    import json

    models = {row[0]: json.loads(row[1]) for row in con.execute("SELECT model, entities FROM versions WHERE is_current").fetchall()}
    if model not in models:
        raise StoreError(f"no model {model!r} in the store; models: {', '.join(sorted(models)) or 'none'}")
    if entity not in models[model]:
        raise StoreError(f"model {model!r} has no entity {entity!r}; entities: {', '.join(sorted(models[model]))}")
    return models[model][entity]


def similar(store: str | Path, model: str, entity: str, key: str, k: int = 10, min_count: int = 0):
    """(columns, rows) of the ``k`` keys nearest to ``key`` by cosine distance, excluding ``key``.

    Unfiltered queries on an HNSW-indexed table take the index (two-step form:
    the query vector goes into a variable first). A ``min_count`` filter is
    answered exactly, because vss's filtered HNSW scan can return fewer than k rows.
    """
    con = connect(store)
    try:
        info = _table_info(con, model, entity)
        table = f"{model}.{info['table']}"
        found = con.execute(f"SELECT count(*) FROM {table} WHERE key = ?", [key]).fetchone()[0]
        if not found:
            raise StoreError(f"key {key!r} not found in {table}")
        con.execute(f"SET VARIABLE q = (SELECT vector FROM {table} WHERE key = ?)", [key])
        if info["hnsw"] and min_count == 0:
            result = con.execute(
                f"SELECT key, distance, count FROM {model}_{entity}_nearest(getvariable('q'), k := ?) "
                "WHERE key <> ? ORDER BY distance, key LIMIT ?",
                [k + 1, key, k],
            )
        else:
            result = con.execute(
                f"SELECT key, array_cosine_distance(vector, getvariable('q')) AS distance, count FROM {table} "
                "WHERE key <> ? AND count >= ? ORDER BY distance, key LIMIT ?",
                [key, min_count, k],
            )
        return [d[0] for d in result.description], result.fetchall()
    finally:
        con.close()
