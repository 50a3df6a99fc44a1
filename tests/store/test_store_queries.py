"""Queries downstream jobs run: filtered top-k, HNSW recall, batch top-k, feature joins, analogies, maps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import latentstore
from schemas.errors import StoreError
from schemas.store import StoreLayout
from tests.helpers import publish_vectors, write_csv

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentstore.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def store(published_store):
    """The small synthetic store: shop.user (200 rows) has an HNSW index, shop.item (80) has none."""
    root, _, _ = published_store
    opened = latentstore.open_store(root)
    yield opened
    opened.close()


def _exact(store, entity: str, key: str, k: int, min_count: int = 0) -> list[str]:
    rows = store.nearest("shop", entity, store.vector("shop", entity, key), k, min_count, exclude={key}, exact=True)
    return [r[0] for r in rows]


def test_a_filtered_top_k_returns_k_rows_where_the_index_alone_returns_fewer(store):
    assert store.table("shop", "user").hnsw
    threshold = store.con.execute("SELECT quantile_disc(count, 0.9) FROM shop.user").fetchone()[0]
    qualifying = store.con.execute("SELECT count(*) FROM shop.user WHERE count >= ?", [threshold]).fetchone()[0]
    assert 10 < qualifying < 60
    key = store.con.execute("SELECT key FROM shop.user WHERE count < ? ORDER BY key LIMIT 1", [threshold]).fetchone()[0]
    vector = store.vector("shop", "user", key).tolist()
    # the pitfall: vss's index scan applies the WHERE after taking its k candidates
    unit = (np.array(vector) / np.linalg.norm(vector)).tolist()
    naive = store.con.execute("SELECT key FROM shop.user WHERE count >= $2 ORDER BY array_negative_inner_product(unit, "
                              "$1::FLOAT[8]) LIMIT 10", [unit, threshold]).fetchall()
    assert len(naive) < 10
    got = store.similar("shop", "user", key, k=10, min_count=threshold)
    assert len(got) == 10 and all(count >= threshold for _, _, count in got)
    assert [k for k, _, _ in got] == _exact(store, "user", key, 10, threshold)



def _brute_force(store, entity: str, vector, k: int, min_count: int, exclude: set[str]) -> list[str]:
    """The exact ranking in numpy: cosine distance, then key, over every row the filters keep."""
    keys, vectors, counts = zip(*store.con.execute(f"SELECT key, vector, count FROM shop.{entity}").fetchall())
    matrix = np.asarray(vectors, dtype=np.float64)
    query = np.asarray(vector, dtype=np.float64)
    distance = 1 - matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
    ranked = sorted((round(float(d), 6), key) for key, d, count in zip(keys, distance, counts)
                    if count >= min_count and key not in exclude)
    return [key for _, key in ranked[:k]]


def test_a_filter_the_index_cannot_satisfy_falls_back_to_exact_search(store, monkeypatch):
    """Over-fetching stops at MAX_CANDIDATES (4096 on real tables; 16 here, so 200 rows are enough): past it,
    the filtered query runs exactly instead of returning fewer than k rows."""
    from latentstore import store as client

    monkeypatch.setattr(client, "MAX_CANDIDATES", 16)
    threshold = store.con.execute("SELECT quantile_disc(count, 0.95) FROM shop.user").fetchone()[0]
    key = store.con.execute("SELECT key FROM shop.user WHERE count < ? ORDER BY key LIMIT 1", [threshold]).fetchone()[0]
    vector = store.vector("shop", "user", key)
    candidates = [k for k, _, _ in store._candidates(store.table("shop", "user"), vector.tolist(), 16)]
    qualifying = {k for (k,) in store.con.execute("SELECT key FROM shop.user WHERE count >= ?", [threshold]).fetchall()}
    assert len(set(candidates) & qualifying) < 5  # what the index alone would give
    got = store.nearest("shop", "user", vector, k=5, min_count=threshold, exclude={key})
    assert [k for k, _, _ in got] == _brute_force(store, "user", vector, 5, threshold, {key})
    assert [k for k, _, _ in got] == [k for k, _, _ in store.nearest("shop", "user", vector, 5, threshold, {key},
                                                                     exact=True)]


def test_hnsw_recall_against_exact_and_explain_shows_the_index(store):
    keys = [k for (k,) in store.con.execute("SELECT key FROM shop.user ORDER BY key").fetchall()]
    found = total = 0
    for key in keys:
        fast = {k for k, _, _ in store.similar("shop", "user", key, k=10)}
        found += len(fast & set(_exact(store, "user", key, 10)))
        total += 10
    assert found / total >= 0.95, found / total
    score = "array_negative_inner_product(unit, $1::FLOAT[8])"
    plan = "\n".join(r[1] for r in store.con.execute(  # the Store's query form
        f"EXPLAIN SELECT key, {score} AS score, count FROM shop.user ORDER BY {score} LIMIT $2",
        [store.vector("shop", "user", keys[0]).tolist(), 11]).fetchall())
    assert "HNSW_INDEX_SCAN" in plan
    exact_plan = "\n".join(r[1] for r in store.con.execute(
        "EXPLAIN SELECT key FROM (SELECT key, array_cosine_distance(vector, $1::FLOAT[8]) AS d FROM shop.user "
        "WHERE count >= $2) ORDER BY d LIMIT 10", [store.vector("shop", "user", keys[0]).tolist(), 1]).fetchall())
    assert "HNSW_INDEX_SCAN" not in exact_plan


@pytest.mark.parametrize("entity", ["user", "item"])
def test_batch_top_k_agrees_with_single_queries(store, entity):
    keys = [k for (k,) in store.con.execute(f"SELECT key FROM shop.{entity} ORDER BY key LIMIT 25").fetchall()]
    batch = store.similar_many("shop", entity, [*keys, "no-such-key"], k=5).to_pylist()
    assert {r["query"] for r in batch} == set(keys)  # the unknown key gets no rows
    for key in keys:
        rows = sorted((r for r in batch if r["query"] == key), key=lambda r: r["rank"])
        assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
        exact = store.nearest("shop", entity, store.vector("shop", entity, key), 5, exclude={key}, exact=True)
        # the same top 5 up to float rounding: rank by rank the same distance (near-ties may swap keys)
        assert [r["distance"] for r in rows] == pytest.approx([d for _, d, _ in exact], abs=1e-5)
        assert key not in {r["key"] for r in rows}


def test_similar_keys_file_through_the_cli(published_store, tmp_path):
    root, _, _ = published_store
    keys = write_csv(tmp_path / "keys.csv", ["user_id"], [["u001"], ["nobody"], ["u002"]])
    out = tmp_path / "neighbours.parquet"
    result = _cli("similar", "--store", root, "--model", "shop", "--entity", "user", "--keys", keys,
                  "--key-column", "user_id", "-k", "3", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "6 neighbours of 2 keys written" in result.stderr and "1 keys not in shop.user" in result.stderr
    table = pq.read_table(out).to_pylist()
    assert [(r["query"], r["rank"]) for r in table] == [("u001", 1), ("u001", 2), ("u001", 3), ("u002", 1),
                                                       ("u002", 2), ("u002", 3)]


def test_feature_join_keeps_every_row_and_counts_unknown_keys(published_store, tmp_path):
    root, _, _ = published_store
    rows = write_csv(tmp_path / "people.csv", ["key", "age"], [["u002", 31], ["stranger", 40], ["u001", 25],
                                                               ["", 50], ["u002", 31]])
    out = tmp_path / "features.parquet"
    result = _cli("features", "--store", root, "--model", "shop", "--entity", "user", "--keys", rows, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "5 rows written" in result.stdout and "3 with a vector, 2 unknown keys (40.0%) with NULLs" in result.stdout
    table = pq.read_table(out).to_pylist()
    assert [r["key"] for r in table] == ["u002", "stranger", "u001", None, "u002"]  # order and duplicates kept
    assert [r["age"] for r in table] == [31, 40, 25, 50, 31]
    assert [r["vector"] is None for r in table] == [False, True, False, True, False]
    con = latentstore.connect(root)
    expected = con.execute("SELECT vector FROM shop.user WHERE key = 'u001'").fetchone()[0]
    con.close()
    assert table[2]["vector"] == pytest.approx(expected) and len(table[2]["vector"]) == 8
    # features as of a version: the same (v1 is the only one), and an unknown version is a clear error
    again = _cli("features", "--store", root, "--model", "shop", "--entity", "user", "--keys", rows, "--out", out,
                 "--as-of", "1")
    assert again.returncode == 0 and "with shop.user v1" in again.stdout
    missing = _cli("features", "--store", root, "--model", "shop", "--entity", "user", "--keys", rows, "--out", out,
                   "--as-of", "7")
    assert missing.returncode == 2 and "shop has no version 7" in missing.stderr


def test_analogy_recovers_a_planted_offset(tmp_path):
    rng = np.random.default_rng(42)
    offset = rng.normal(size=32) * 3
    base = {f"x{i}": rng.normal(size=32) for i in range(30)}
    table = {**{k: v.tolist() for k, v in base.items()}, **{f"y{i}": (base[f"x{i}"] + offset).tolist() for i in range(30)}}
    store = tmp_path / "store"
    publish_vectors(store, "planted", {"item": table})
    pairs = [(i, j) for i in range(30) for j in range(30) if i != j]
    with latentstore.open_store(store) as opened:
        hits = sum(opened.analogy("planted", "item", f"y{i}", f"x{i}", f"x{j}", k=1)[0][0] == f"y{j}" for i, j in pairs)
        first = opened.analogy("planted", "item", "y0", "x0", "x1", k=5)
    assert hits / len(pairs) >= 0.99, hits  # unit(y_i) - unit(x_i) + unit(x_j) lands on y_j
    assert not {"y0", "x0", "x1"} & {k for k, _, _ in first}  # A, B and C are excluded
    result = _cli("analogy", "y0", "x0", "x1", "--store", store, "--model", "planted", "-k", "1", "-f", "csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split(",")[0] == "y1"


def test_plot_writes_a_map_coloured_by_the_first_label(published_store, tmp_path):
    root, _, summary = published_store
    (labels_file,) = (root / "inputs").glob("*.items.csv")
    multi = tmp_path / "labels.csv"
    lines = labels_file.read_text().splitlines()
    multi.write_text("\n".join([lines[0] + ",title"] + [f"{row}|second,{row.split(',')[0]} title" for row in lines[1:]]))
    out = tmp_path / "map.png"
    result = _cli("plot", "--store", root, "--model", "shop", "--entity", "item", "--labels", multi,
                  "--label-column", "cluster", "--title-column", "title", "--out", out)
    assert result.returncode == 2 and "no column 'key' (--key-column); its columns are: item, cluster, title" in result.stderr
    result = _cli("plot", "--store", root, "--model", "shop", "--entity", "item", "--labels", multi, "--key-column",
                  "item", "--label-column", "cluster", "--title-column", "title", "--out", out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    from jobs.store.maps import _labels, draw, draw_version

    with latentstore.open_store(root) as opened:
        labels = _labels(str(multi), "item", "cluster", "title")
        tsne = draw(opened.con, opened.table("shop", "item").name, "shop", "item", tmp_path / "tsne.png", str(multi),
                    "item", "cluster", method="tsne", sample=50, annotate=5)
    assert {label for label, _ in labels.values()} == {f"taste_{c}" for c in range(4)}  # "|second" dropped
    assert tsne == {"file": str(tmp_path / "tsne.png"), "points": 50, "method": "tsne", "labels": 4, "labelled": 50}
    # the publish flow's map, straight from the version file (shop.user has an HNSW index); fewer points than the
    # default 12 annotations
    version = summary["publish"]["version"]
    assert draw_version(StoreLayout(root), "shop", version, "user", tmp_path / "small.png", sample=10)["points"] == 10
    with pytest.raises(StoreError, match="model 'shop' has no entity 'nope'; entities: item, user"):
        draw_version(StoreLayout(root), "shop", version, "nope", tmp_path / "nope.png")


def test_batch_top_k_ignores_nan_vectors_and_breaks_ties_by_row():
    from jobs.store.knn import top_k

    keys = pa.array(["a", "b", "nan", "d", "tie1", "tie2"])
    vectors = np.array([[1, 0], [0.9, 0.1], [np.nan, np.nan], [0, 1], [0.5, 0.5], [0.5, 0.5]], np.float32)
    found = top_k(np.array([[1.0, 0.0]], np.float32), [(keys, vectors)], 4)
    assert found.keys == [["a", "b", "tie1", "tie2"]]  # the NaN row never hides the others
    two_tiles = top_k(np.array([[1.0, 0.0]], np.float32), [(keys[:5], vectors[:5]), (keys[5:], vectors[5:])], 3)
    assert two_tiles.keys == [["a", "b", "tie1"]]  # equal scores: the earlier row, whatever the batching
