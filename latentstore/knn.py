"""Exact top-k by cosine for many queries: a blocked matrix multiply over vectors streamed from Arrow.

SQL gets no index help for many queries at once (a LATERAL join scans the
table per query), so batches are done here: the table's vectors arrive in
Arrow record batches, each is multiplied with every block of (unit) queries,
and a running top-k per query keeps the best so far. Memory is one corpus batch,
the queries and one [query block, batch] score matrix, whatever the table size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

#: Cells of one [queries, corpus rows] score block (float32): 2^25 cells = 128 MiB.
BLOCK_CELLS = 1 << 25


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
    distances: np.ndarray  # [queries, k], +inf where fewer than k candidates


class _Running:
    """The best ``k`` (highest similarity) corpus rows per query seen so far."""

    def __init__(self, queries: int, k: int):
        self.scores = np.full((queries, k), -np.inf, np.float32)
        self.rows = np.full((queries, k), -1, np.int64)
        self.k = k

    def offer(self, start: int, scores: np.ndarray, rows: np.ndarray) -> None:
        """Merge a [block, n] score matrix for queries ``start:start + block``; ``rows`` are global row ids."""
        block = slice(start, start + scores.shape[0])
        take = min(self.k, scores.shape[1])
        best = np.argpartition(scores, scores.shape[1] - take, axis=1)[:, -take:]
        merged_scores = np.concatenate([self.scores[block], np.take_along_axis(scores, best, 1)], 1)
        merged_rows = np.concatenate([self.rows[block], rows[best]], 1)
        keep = np.argpartition(merged_scores, merged_scores.shape[1] - self.k, axis=1)[:, -self.k:]
        self.scores[block] = np.take_along_axis(merged_scores, keep, 1)
        self.rows[block] = np.take_along_axis(merged_rows, keep, 1)

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.lexsort((self.rows, -self.scores), axis=1)  # best first; ties by row
        return np.take_along_axis(self.scores, order, 1), np.take_along_axis(self.rows, order, 1)


def top_k(queries: np.ndarray, batches: Iterable[tuple[pa.Array, np.ndarray]], k: int,
          exclude_rows: np.ndarray | None = None) -> Neighbours:
    """The ``k`` nearest corpus keys (cosine) of each query row.

    ``batches`` yields (keys, vectors) of the corpus in order; ``exclude_rows[i]`` is a corpus row
    (global position) that query ``i`` must not return (itself), or -1.
    """
    queries = unit(queries)
    running = _Running(queries.shape[0], k)
    keys, offset = [], 0
    for batch_keys, vectors in batches:
        corpus = unit(vectors)
        rows = np.arange(offset, offset + corpus.shape[0])
        block = max(1, BLOCK_CELLS // max(corpus.shape[0], 1))
        for start in range(0, queries.shape[0], block):
            scores = queries[start:start + block] @ corpus.T
            if exclude_rows is not None:
                mine = exclude_rows[start:start + block] - offset
                inside = np.flatnonzero((mine >= 0) & (mine < corpus.shape[0]))
                scores[inside, mine[inside]] = -np.inf
            running.offer(start, scores, rows)
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
