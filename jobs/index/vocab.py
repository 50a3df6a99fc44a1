"""Vocabulary building in Spark, implementing the contract in schemas.vocab."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from schemas.vocab import FIRST_INDEX, UNKNOWN_INDEX


@dataclass(frozen=True)
class VocabBuild:
    vocab: DataFrame  # key, index, count
    rare: DataFrame  # keys seen but mapped to UNKNOWN_INDEX


def key_counts(kept: DataFrame, column: str) -> DataFrame:
    return kept.groupBy(F.col(column).alias("key")).agg(F.count(F.lit(1)).alias("count"))


def _numbered(keys: DataFrame, start: int) -> DataFrame:
    """Number keys from ``start``: count desc, then key asc (independent of partitioning)."""
    order = Window.orderBy(F.col("count").desc(), F.col("key").asc())
    return keys.withColumn("index", (F.row_number().over(order) + F.lit(start - 1)).cast("int"))


def build_vocab(counts: DataFrame, min_count: int, parent: DataFrame | None, parent_size: int) -> VocabBuild:
    """First build (``parent is None``) or an append-only rebuild on a parent vocabulary.

    ``parent_size`` is the parent's largest index + 1, so new keys start right after it.
    """
    if parent is None:
        eligible = counts.filter(F.col("count") >= min_count)
        vocab = _numbered(eligible, FIRST_INDEX)
        rare = counts.filter(F.col("count") < min_count)
    else:
        parent_keys = parent.select("key", "index")
        kept_keys = parent_keys.join(counts, "key", "left").fillna(0, subset=["count"])
        unseen = counts.join(parent_keys, "key", "left_anti")
        appended = _numbered(unseen.filter(F.col("count") >= min_count), max(parent_size, FIRST_INDEX))
        vocab = kept_keys.unionByName(appended)
        rare = unseen.filter(F.col("count") < min_count)
    vocab = vocab.select("key", F.col("index").cast("int"), F.col("count").cast("long"))
    return VocabBuild(vocab=vocab, rare=rare)


def hash_is_injective(keys: DataFrame, distinct: bool = False) -> bool:
    """Whether the keys in ``keys`` (column ``key``; ``distinct``: already without repeats)
    all have different 64-bit hashes."""
    keys = keys.select("key") if distinct else keys.select("key").distinct()
    row = keys.agg(F.count(F.lit(1)).alias("keys"), F.count_distinct(F.xxhash64("key")).alias("hashes")).first()
    return row["keys"] == row["hashes"]


def apply_vocab(frame: DataFrame, column: str, vocab: DataFrame, broadcast: bool = False,
                hashed: bool = False) -> DataFrame:
    """Replace ``column`` (keys) by its index; keys without one get UNKNOWN_INDEX.

    ``hashed``: match on the keys' 64-bit hashes, a join on one long (several times cheaper
    than on strings). Only exact when no two keys that can meet share a hash: the caller
    checks that with ``hash_is_injective`` over every key of ``frame`` and ``vocab``.
    """
    if hashed:
        lookup = vocab.select(F.xxhash64("key").alias("_key_hash"), F.col("index").alias(f"{column}_index"))
        if broadcast:
            lookup = F.broadcast(lookup)
        joined = frame.join(lookup, F.xxhash64(frame[column]) == lookup["_key_hash"], "left").drop("_key_hash")
    else:
        lookup = vocab.select(F.col("key").alias(column), F.col("index").alias(f"{column}_index"))
        if broadcast:
            lookup = F.broadcast(lookup)
        joined = frame.join(lookup, column, "left")
    return joined.withColumn(column, F.coalesce(F.col(f"{column}_index"), F.lit(UNKNOWN_INDEX)).cast("int")).drop(
        f"{column}_index"
    )
