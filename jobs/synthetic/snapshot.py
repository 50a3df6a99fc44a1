"""Training snapshots written straight from the synthetic generators, without Spark.

For machines that train but do not index (a GPU box with torch, numpy and pyarrow
only: ``benchmarks/gpu.py``) and for tests of the train stage alone. The files
follow the snapshot contract (``schemas.snapshot``) that the train stage reads;
what differs from an indexed snapshot is stated in the manifest
(``input_format = "synthetic-direct"``): indices are the generator's own ids plus
one (0 stays the unknown key, never used), there are no vocabulary files and no
quarantine, and the split is a seeded random share (ratings) or each user's last
``holdout`` events (events), as the index stage does.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.common.hashing import stable_hash
from jobs.synthetic.config import SyntheticEvents, SyntheticRatings
from schemas.snapshot import HISTORIES_DIR, MANIFEST, SESSIONS_DIR, Counts, Manifest, SessionStats, VocabStats, \
    interactions_dir

FORMAT = "synthetic-direct"
_FILE_ROWS = 4_000_000


def ratings_arrays(cfg: SyntheticRatings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, rating) of ``jobs.synthetic.ratings`` as 1-based indices, without the key strings."""
    from jobs.synthetic.ratings import generate_indexed

    users, items, ratings, _, _ = generate_indexed(cfg)
    return users + 1, items + 1, ratings


def write_ratings(directory: Path, cfg: SyntheticRatings, valid_share: float = 0.1, seed: int = 42) -> Manifest:
    users, items, ratings = ratings_arrays(cfg)
    valid = np.random.default_rng([seed, 0x5A]).random(users.size) < valid_share
    for split, rows in (("train", ~valid), ("valid", valid)):
        _write_parquet(directory / interactions_dir(split), {
            "user": pa.array(users[rows], pa.int32()), "item": pa.array(items[rows], pa.int32()),
            "rating": pa.array(ratings[rows], pa.float32()), "timestamp": pa.array(np.zeros(int(rows.sum())), pa.int64()),
        })
    sizes = {"user": cfg.users + 1, "item": cfg.items + 1}
    return _manifest(directory, "ratings", cfg, users.size, int((~valid).sum()), int(valid.sum()), sizes,
                     rating_range=(float(ratings.min()), float(ratings.max())),
                     split={"method": "random", "valid_share": valid_share, "seed": seed})


def write_events(directory: Path, cfg: SyntheticEvents, holdout: int = 1, history_length: int = 50,
                 max_length: int = 200, gap_ms: int = 30 * 60 * 1000) -> Manifest:
    """Sessions (split on ``gap_ms``, chunked at ``max_length``) and histories of ``jobs.synthetic.events``."""
    from jobs.synthetic.events import generate_columns

    columns, space, _ = generate_columns(cfg)
    user, token, ms = columns["user"], columns["token"] + 1, columns["ms"]
    order = np.lexsort((token, ms, user))
    user, token, ms = user[order], token[order], ms[order]
    per_user = np.bincount(user, minlength=cfg.users)
    position_from_end = np.repeat(per_user, per_user) - (np.arange(user.size) - np.repeat(
        np.cumsum(per_user) - per_user, per_user))  # 1 for a user's last event
    held = (position_from_end <= holdout) & (np.repeat(per_user, per_user) > holdout)
    train = ~held
    t_user, t_token, t_ms = user[train], token[train], ms[train]
    starts = np.r_[True, (t_user[1:] != t_user[:-1]) | (np.diff(t_ms) > gap_ms)]
    session_id = np.cumsum(starts) - 1
    within = np.arange(t_user.size) - np.flatnonzero(starts)[session_id]
    chunk_starts = starts | (within % max_length == 0)
    bounds = np.r_[np.flatnonzero(chunk_starts), t_user.size]
    lengths = np.diff(bounds)
    user_starts = np.r_[True, t_user[1:] != t_user[:-1]]
    users_first_session = np.maximum.accumulate(np.where(user_starts, session_id, 0))  # session ids increase
    heads = bounds[:-1]
    _write_parquet(directory / SESSIONS_DIR, {
        "user": pa.array(t_user[heads] + 1, pa.int32()),
        "session": pa.array(session_id[heads] - users_first_session[heads] + 1, pa.int32()),
        "chunk": pa.array(within[heads] // max_length, pa.int32()),
        "start_ms": pa.array(t_ms[heads], pa.int64()),
        "end_ms": pa.array(t_ms[bounds[1:] - 1], pa.int64()),
        "length": pa.array(lengths, pa.int32()),
        "tokens": pa.ListArray.from_arrays(pa.array(bounds, pa.int32()), pa.array(t_token, pa.int32())),
    })
    recent_start = np.maximum(np.cumsum(per_user) - per_user, np.cumsum(per_user) - history_length)
    recent_len = np.cumsum(per_user) - recent_start
    take = np.repeat(recent_start, recent_len) + (np.arange(recent_len.sum()) - np.repeat(
        np.cumsum(recent_len) - recent_len, recent_len))
    has = per_user > 0
    _write_parquet(directory / HISTORIES_DIR, {
        "user": pa.array(np.flatnonzero(has) + 1, pa.int32()),
        "events": pa.array(per_user[has], pa.int64()),
        "recent": pa.ListArray.from_arrays(pa.array(np.r_[0, np.cumsum(recent_len[has])], pa.int32()),
                                           pa.array(token[take], pa.int32())),
        "held_out": pa.array(np.where(per_user[has] > holdout, holdout, 0), pa.int32()),
    })
    sizes = {"user": cfg.users + 1, "token": len(space) + 1}
    stats = SessionStats(users=int(has.sum()), users_indexed=int(has.sum()),
                         users_held_out=int((per_user > holdout).sum()), sessions=int(starts.sum()),
                         chunks=int(lengths.size), chunked_sessions=int((within == max_length).sum()),
                         longest_session=int(np.bincount(session_id).max()) if session_id.size else 0,
                         session_gap_seconds=gap_ms // 1000, max_length=max_length, holdout=holdout,
                         history_length=history_length, order="timestamp, then token index")
    return _manifest(directory, "events", cfg, user.size, int(train.sum()), int(held.sum()), sizes, sessions=stats,
                     split={"method": "last_events", "holdout": holdout})


def _write_parquet(directory: Path, columns: dict[str, pa.Array]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns)
    for part, start in enumerate(range(0, max(table.num_rows, 1), _FILE_ROWS)):
        pq.write_table(table.slice(start, _FILE_ROWS), directory / f"part-{part:05d}.parquet")


def _manifest(directory: Path, kind: str, cfg, read: int, train: int, valid: int, sizes: dict[str, int],
              **extra) -> Manifest:
    settings = cfg.model_dump(mode="json")
    key = stable_hash({"format": FORMAT, "kind": kind, "settings": settings, **{k: str(v) for k, v in extra.items()}},
                      16)
    manifest = Manifest(
        snapshot_id=key, content_key=key, dataset=f"synthetic-{kind}", kind=kind, parent=None,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), input_format=FORMAT, input_files=[],
        input_fingerprint=key, data_config={"synthetic": settings},
        counts=Counts(read=read, kept=read, quarantined=0, duplicates=0, superseded=0, quarantine_reasons={},
                      train=train, valid=valid),
        vocab={name: VocabStats(size=size, keys=size - 1, new_keys=size - 1, rare_keys=0) for name, size in sizes.items()},
        rating_range=extra.pop("rating_range", None), code_version="synthetic", spark={}, **extra,
    )
    (directory / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return manifest
