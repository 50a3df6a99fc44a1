"""Train/validation split as a Spark expression."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.index.config import SplitConfig
from schemas.errors import ConfigError

_BUCKETS = 1_000_000


def random_split(cfg: SplitConfig) -> Column:
    """A seeded hash of the (user, item) keys: stable across reruns, partitionings
    and rebuilds that add data, so a pair never moves between train and valid."""
    bucket = F.pmod(F.xxhash64(F.col("user"), F.col("item"), F.lit(cfg.seed)), F.lit(_BUCKETS))
    return F.when(bucket < int(round(cfg.fraction * _BUCKETS)), "valid").otherwise("train")


def time_cutoff(kept: DataFrame, cfg: SplitConfig) -> int:
    """The timestamp at the (1 - fraction) quantile; later ratings are validation."""
    (cutoff,) = kept.approxQuantile("ts", [1.0 - cfg.fraction], 0.0)
    return int(cutoff)


def split_column(kept: DataFrame, cfg: SplitConfig, has_timestamp: bool) -> tuple[Column, dict]:
    """The ``split`` column expression and what to record about it in the manifest."""
    record = cfg.model_dump(mode="json")
    if cfg.kind == "random":
        return random_split(cfg), record
    if not has_timestamp:
        raise ConfigError("index.split.kind = 'time' needs a timestamp column (input.columns.timestamp)")
    cutoff = time_cutoff(kept, cfg)
    record["cutoff_unix_seconds"] = cutoff
    return F.when(F.col("ts") > cutoff, "valid").otherwise("train"), record
