"""Exact top-k by cosine for many queries: a blocked matrix multiply over vectors streamed from Arrow.

SQL gets no index help for many queries at once (a LATERAL join scans the
table per query), so batches are done here, exactly. The table's vectors arrive
in Arrow record batches; each is cut into tiles of ``TILE`` rows, multiplied with
blocks of ``QUERY_BLOCK`` unit queries (tiles this small keep the product in
cache: about 200 GFLOP/s on 2 cores), and a running top-k per query keeps the
best so far. Selecting the top k of every tile would cost more than the multiply,
so a tile is only searched for the queries whose best score in it beats their
current k-th best (one max per row); after the first tiles almost none do.
Memory: one corpus batch, the queries and one [block, tile] product.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

QUERY_BLOCK = 256
TILE = 4096


def unit(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float32); an all-zero row stays zero."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def vectors_of(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A FLOAT[d] (fixed-size list) or FLOAT[] column as a [rows, d] float32 matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.empty((0, 0), np.float32)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=False).reshape(len(column), -1)


@dataclass(frozen=True)
class Neighbours:
    """Per query: ``keys[i]`` (best first) and ``distances[i]`` (cosine distance; +inf past the keys found)."""

    keys: list[list[str]]
    distances: np.ndarray


class _Running:
    """The best ``k`` scores and rows per query so far, each row sorted ascending ([:, 0] is the k-th best)."""

    def __init__(self, queries: int, k: int):
        self.scores = np.full((queries, k), -np.inf, np.float32)
        self.rows = np.full((queries, k), -1, np.int64)
        self.k = k

    def offer(self, block: slice, scores: np.ndarray, first_row: int) -> None:
        """Merge a [queries of ``block``, tile] score matrix whose columns are rows ``first_row...``."""
        np.nan_to_num(scores, copy=False, nan=-np.inf)  # a NaN is no score (it would also hide the tile's max)
        best, rows = self.scores[block], self.rows[block]
        live = np.flatnonzero(scores.max(axis=1) > best[:, 0])  # only queries the tile can improve
        if live.size == 0:
            return
        tile = scores[live]
        take = min(self.k, tile.shape[1])
        part = np.argpartition(tile, tile.shape[1] - take, axis=1)[:, -take:]
        merged = np.concatenate([best[live], np.take_along_axis(tile, part, 1)], 1)
        merged_rows = np.concatenate([rows[live], part + first_row], 1)
        keep = np.lexsort((-merged_rows, merged), axis=1)[:, -self.k:]  # ascending; equal scores: smaller row kept
        best[live] = np.take_along_axis(merged, keep, 1)
        rows[live] = np.take_along_axis(merged_rows, keep, 1)

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.lexsort((self.rows, -self.scores), axis=1)  # best first; ties by row
        return np.take_along_axis(self.scores, order, 1), np.take_along_axis(self.rows, order, 1)


def _offer_all(running: _Running, queries: np.ndarray, corpus: np.ndarray, offset: int) -> None:
    """Offer every (query block, corpus tile) product of unit ``queries`` and unit ``corpus`` rows."""
    for start in range(0, queries.shape[0], QUERY_BLOCK):
        block = slice(start, start + QUERY_BLOCK)
        for tile in range(0, corpus.shape[0], TILE):
            running.offer(block, queries[block] @ corpus[tile:tile + TILE].T, offset + tile)


def top_k_rows(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[queries, k] cosine similarities and corpus row numbers of each query's ``k`` nearest rows, best first
    (equal scores: the lower row); rows past the corpus's size are -1 with score -inf."""
    running = _Running(queries.shape[0], k)
    _offer_all(running, unit(queries), unit(corpus), 0)
    return running.sorted()


def top_k(queries: np.ndarray, batches: Iterable[tuple[pa.Array, np.ndarray]], k: int) -> Neighbours:
    """The ``k`` nearest corpus keys (cosine) of each query row; ``batches`` yields (keys, vectors) in order."""
    queries = unit(queries)
    running = _Running(queries.shape[0], k)
    keys, offset = [], 0
    for batch_keys, vectors in batches:
        corpus = unit(vectors)
        _offer_all(running, queries, corpus, offset)
        keys.append(batch_keys)
        offset += corpus.shape[0]
    scores, rows = running.sorted()
    all_keys = pa.concat_arrays([k.cast(pa.string()) for k in keys]).to_pylist() if keys else []
    found = [[all_keys[r] for r, s in zip(row, score) if r >= 0 and np.isfinite(s)] for row, score in zip(rows, scores)]
    return Neighbours(found, np.where(np.isfinite(scores), 1.0 - scores, np.inf))


def batches_of(reader, key: str = "key", vector: str = "vector") -> Iterator[tuple[pa.Array, np.ndarray]]:
    """(keys, vectors) from a pyarrow RecordBatchReader (e.g. DuckDB's ``to_arrow_reader``)."""
    for batch in reader:
        yield batch.column(key), vectors_of(batch.column(vector))
