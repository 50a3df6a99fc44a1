"""The index contract (schemas.vocab), pinned on hand-written tables."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.index.vocab import apply_vocab, build_vocab


def _counts(spark, pairs):
    return spark.createDataFrame(pairs, "key string, count long")


def _rows(vocab_df):
    return sorted((r["key"], r["index"], r["count"]) for r in vocab_df.collect())


def test_first_build_orders_by_count_then_key(spark):
    counts = _counts(spark, [("b", 3), ("a", 3), ("c", 5), ("d", 1), ("é", 3)])
    built = build_vocab(counts, min_count=2, parent=None, parent_size=0)
    # count desc, then key asc (UTF-8 byte order: "é" after ASCII); "d" is rare -> no index
    assert _rows(built.vocab) == [("a", 2, 3), ("b", 3, 3), ("c", 1, 5), ("é", 4, 3)]
    assert [r["key"] for r in built.rare.collect()] == ["d"]


def test_rebuild_keeps_indices_and_appends_new_keys(spark):
    parent = spark.createDataFrame([("c", 1, 5), ("a", 2, 3), ("b", 3, 3)], "key string, index int, count long")
    # "a" vanished, "b" became rare, "x" and "y" are new (x more frequent), "z" new but rare
    counts = _counts(spark, [("c", 9), ("b", 1), ("y", 4), ("x", 6), ("z", 1)])
    built = build_vocab(counts, min_count=2, parent=parent, parent_size=4)
    assert _rows(built.vocab) == [("a", 2, 0), ("b", 3, 1), ("c", 1, 9), ("x", 4, 6), ("y", 5, 4)]
    assert [r["key"] for r in built.rare.collect()] == ["z"]


def test_unknown_keys_map_to_zero(spark):
    vocab = spark.createDataFrame([("a", 1, 2)], "key string, index int, count long")
    frame = spark.createDataFrame([("a",), ("never-seen",)], "user string")
    got = sorted(r["user"] for r in apply_vocab(frame, "user", vocab).collect())
    assert got == [0, 1]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    keys=st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=25, unique=True),
    data=st.data(),
)
def test_indexing_is_one_to_one_contiguous_and_order_free(spark, keys, data):
    counts = [(k, data.draw(st.integers(1, 6))) for k in keys]
    shuffled = data.draw(st.permutations(counts))
    first = _rows(build_vocab(_counts(spark, counts), 1, None, 0).vocab)
    second = _rows(build_vocab(_counts(spark, list(shuffled)), 1, None, 0).vocab)
    assert first == second  # independent of input order
    indices = sorted(index for _, index, _ in first)
    assert indices == list(range(1, len(keys) + 1))  # contiguous from 1, one per key
    expected = sorted(counts, key=lambda kc: (-kc[1], kc[0].encode()))
    assert [k for k, _ in expected] == [k for k, _, _ in sorted(first, key=lambda r: r[1])]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    vocab_keys=st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=15, unique=True),
    frame_keys=st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=20),
)
def test_the_hash_join_gives_the_same_indices_as_the_key_join(spark, vocab_keys, frame_keys):
    from jobs.index.vocab import hash_is_injective

    vocab = spark.createDataFrame([(k, n + 1, 1) for n, k in enumerate(vocab_keys)], "key string, index int, count long")
    frame = spark.createDataFrame([(k,) for k in frame_keys], "user string")
    meeting = spark.createDataFrame([(k,) for k in vocab_keys + frame_keys], "key string")
    assert hash_is_injective(meeting)  # 64-bit hashes of a few short strings: no collision

    def indexed(hashed):
        return sorted(tuple(r) for r in apply_vocab(frame, "user", vocab, broadcast=True, hashed=hashed).collect())

    assert indexed(True) == indexed(False)


def test_hash_check_counts_keys_against_hashes(spark):
    from jobs.index.vocab import hash_is_injective

    repeated = spark.createDataFrame([("a",), ("a",), ("b",)], "key string")
    assert hash_is_injective(repeated)  # repeats of one key are one key
    # Told the keys are distinct when they are not, two keys share one hash: the check refuses.
    assert not hash_is_injective(repeated, distinct=True)
