"""How well vectors recover a synthetic log's planted structure (tests and benchmarks use these).

- ``neighbour_share``: for every row, the share of its ``k`` nearest rows (cosine)
  with the same label; the mean over rows. Chance is about 1 / number of labels.
- ``knn_accuracy``: leave-one-out ``k``-nearest-neighbour vote (cosine, ties to
  the nearest) predicting each row's label from the others.

``metric="euclidean"`` serves the popularity baseline, whose features (counts)
have no direction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jobs.store.knn import top_k_rows

_BLOCK = 2048


def _nearest(vectors: np.ndarray, k: int, metric: str) -> np.ndarray:
    """[n, k] indices of each row's nearest other rows: cosine through the store's exact top-k, euclidean
    (the popularity baseline's counts have no direction) in blocks here (memory O(block * n))."""
    if metric == "cosine":
        _, rows = top_k_rows(vectors, vectors, k + 1)
        rows[rows == np.arange(rows.shape[0])[:, None]] = -1  # not its own neighbour (nor a tie's stand-in)
        return np.stack([row[row >= 0][:k] for row in rows]) if rows.size else rows[:, :k]
    x = np.asarray(vectors, dtype=np.float64)
    squared = (x * x).sum(1)
    out = np.empty((x.shape[0], k), np.int64)
    for start in range(0, x.shape[0], _BLOCK):
        block = x[start:start + _BLOCK]
        distance = squared[start:start + _BLOCK, None] + squared[None, :] - 2 * block @ x.T
        rows = np.arange(block.shape[0])
        distance[rows, start + rows] = np.inf  # not its own neighbour
        part = np.argpartition(distance, k, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(distance, part, 1), axis=1, kind="stable")
        out[start:start + _BLOCK] = np.take_along_axis(part, order, 1)
    return out


def neighbour_share(vectors: np.ndarray, labels: np.ndarray, k: int = 10, metric: str = "cosine") -> float:
    labels = np.asarray(labels)
    nearest = _nearest(vectors, k, metric)
    return float((labels[nearest] == labels[:, None]).mean())


def knn_accuracy(vectors: np.ndarray, labels: np.ndarray, k: int = 10, metric: str = "cosine") -> float:
    labels = np.asarray(labels)
    classes, codes = np.unique(labels, return_inverse=True)
    nearest = _nearest(vectors, k, metric)
    votes = np.zeros((labels.size, classes.size))
    weights = 1.0 + 1e-6 * np.arange(k, 0, -1)  # equal votes; ties go to the nearer neighbours' class
    np.add.at(votes, (np.repeat(np.arange(labels.size), k), codes[nearest].ravel()), np.tile(weights, labels.size))
    return float((votes.argmax(1) == codes).mean())


def planted_labels(events_file: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(token -> planted group, user -> segment): the truth written beside a synthetic event log."""
    import csv

    def read(suffix: str, key: str, value: str) -> dict[str, int]:
        with Path(events_file).with_suffix(suffix).open() as fh:
            return {row[key]: int(row[value]) for row in csv.DictReader(fh)}

    return read(".tokens.csv", "token", "group"), read(".users.csv", "user", "segment")
