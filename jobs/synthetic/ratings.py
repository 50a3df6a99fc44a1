"""Synthetic ratings: users and items drawn from planted taste clusters.

Each user and item belongs to one of ``clusters`` hidden clusters. A user
picks 70% of their items from their own cluster (by item popularity, Zipf
0.8) and rates them higher: ``3.0 + 1.2`` for a match, ``3.0 - 0.6`` otherwise,
plus item quality (N(0, 0.4)), user bias (N(0, 0.3)) and noise, rounded to
half stars in [0.5, 5]. Vectors learned from it should group items by cluster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from jobs.synthetic import files
from jobs.synthetic.config import SyntheticRatings

OWN_CLUSTER_SHARE = 0.7
MATCH_BONUS, MISMATCH_PENALTY = 1.2, -0.6
BASE_TIME = 1_600_000_000  # 2020-09-13, Unix seconds
YEAR = 365 * 24 * 3600


def _popularity(rng: np.random.Generator, n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** 0.8
    return rng.permutation(weights)


def generate_indexed(cfg: SyntheticRatings) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user id, item id, rating, timestamp, item cluster) as arrays: ids from 0. Same settings -> identical arrays."""
    rng = np.random.default_rng(cfg.seed)
    user_cluster = rng.integers(0, cfg.clusters, cfg.users)
    item_cluster = rng.integers(0, cfg.clusters, cfg.items)
    popularity = _popularity(rng, cfg.items)
    per_user = np.clip(rng.poisson(cfg.ratings_per_user, cfg.users), 5, cfg.items)
    users = np.repeat(np.arange(cfg.users), per_user)
    items = rng.choice(cfg.items, size=users.size, p=popularity / popularity.sum())
    own = rng.random(users.size) < OWN_CLUSTER_SHARE
    for cluster in range(cfg.clusters):
        members = np.flatnonzero(item_cluster == cluster)
        rows = np.flatnonzero(own & (user_cluster[users] == cluster))
        if members.size and rows.size:
            p = popularity[members] / popularity[members].sum()
            items[rows] = rng.choice(members, size=rows.size, p=p)
    # One rating per (user, item): keep the first draw of each pair.
    _, first = np.unique(users.astype(np.int64) * cfg.items + items, return_index=True)
    first.sort()
    users, items = users[first], items[first]

    quality = rng.normal(0, 0.4, cfg.items)
    leniency = rng.normal(0, 0.3, cfg.users)
    match = np.where(user_cluster[users] == item_cluster[items], MATCH_BONUS, MISMATCH_PENALTY)
    score = 3.0 + match + quality[items] + leniency[users] + rng.normal(0, cfg.noise, users.size)
    rating = np.clip(np.round(score * 2) / 2, 0.5, 5.0)
    timestamp = BASE_TIME + rng.integers(0, YEAR, users.size)
    return users, items, rating, timestamp, item_cluster


def generate(cfg: SyntheticRatings) -> tuple[pa.Table, pa.Table]:
    """(ratings, item_labels). Same settings -> identical tables."""
    users, items, rating, timestamp, item_cluster = generate_indexed(cfg)
    width_u, width_i = len(str(cfg.users)), len(str(cfg.items))
    ratings = pa.table(
        {
            "user": pc_format("u", users, width_u),
            "item": pc_format("i", items, width_i),
            "rating": rating.astype(np.float64),
            "timestamp": timestamp.astype(np.int64),
        }
    )
    labels = pa.table(
        {"item": pc_format("i", np.arange(cfg.items), width_i), "cluster": [f"taste_{c}" for c in item_cluster]}
    )
    return ratings, labels


def pc_format(prefix: str, ids: np.ndarray, width: int) -> pa.Array:
    """``prefix`` + zero-padded id, e.g. u00042, for millions of ids without a Python loop."""
    digits = pa.compute.utf8_lpad(pa.array(ids.astype(np.int64)).cast(pa.string()), width=width, padding="0")
    return pa.compute.binary_join_element_wise(pa.scalar(prefix), digits, "")


def materialise(cfg: SyntheticRatings, inputs_dir: Path) -> Path:
    """Write the ratings (Parquet) and the item labels (items.csv) once; return the ratings path."""

    def ratings_and_labels():
        ratings, labels = generate(cfg)
        return ratings, {"items": labels}

    return files.materialise("synthetic-ratings", cfg, inputs_dir, ratings_and_labels)
