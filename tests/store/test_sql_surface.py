"""The SQL surface of current.sql, on a real store: statement, query, expected rows."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

import latentstore
from schemas.errors import StoreError
from schemas.snapshot import interactions_dir, vocab_dir
from schemas.store import StoreLayout
from tests.helpers import publish_vectors



@pytest.fixture
def con(published_store):
    store, _, _ = published_store
    connection = latentstore.connect(store)
    yield connection
    connection.close()


def _plan(con, sql: str) -> str:
    return "\n".join(row[1] for row in con.execute("EXPLAIN " + sql).fetchall())


def _cosine_distance(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return 1 - float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embeddings_view_covers_every_table(con, published_store):
    _, _, summary = published_store
    rows = dict(con.execute("SELECT entity, count(*) FROM embeddings WHERE model = 'shop' GROUP BY ALL").fetchall())
    entities = summary["publish"]["entities"]
    assert rows == {e: info["rows"] for e, info in entities.items()}
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE embeddings)").fetchall())
    assert types["vector"] == "FLOAT[]" and types["key"] == "VARCHAR" and types["count"] == "BIGINT"
    assert con.execute("SELECT count(*) FROM embeddings WHERE key IS NULL OR vector IS NULL").fetchone()[0] == 0


def test_point_lookup_of_one_and_many_keys(con):
    keys = [k for (k,) in con.execute("SELECT key FROM shop.item ORDER BY key LIMIT 3").fetchall()]
    one = con.execute("SELECT key, len(vector), count FROM shop.item WHERE key = ?", [keys[0]]).fetchall()
    assert one[0][0] == keys[0] and one[0][1] == 8 and one[0][2] >= 1
    many = con.execute(
        "SELECT key FROM embeddings WHERE model = 'shop' AND entity = 'item' AND key IN (?, ?, ?, 'missing') ORDER BY key",
        keys,
    ).fetchall()
    assert [k for (k,) in many] == keys
    assert con.execute("SELECT vector_of('shop', 'item', 'missing')").fetchone()[0] is None


def test_most_similar_is_exact_cosine_and_excludes_the_key(con):
    rows = con.execute("SELECT key, vector FROM shop.item").fetchall()
    vectors = {k: v for k, v in rows}
    key = sorted(vectors)[0]
    expected = sorted((round(_cosine_distance(vectors[key], v), 5), k) for k, v in vectors.items() if k != key)[:5]
    got = con.execute("SELECT key, distance FROM most_similar('shop', 'item', ?, k := 5)", [key]).fetchall()
    assert [k for k, _ in got] == [k for _, k in expected]
    assert all(math.isclose(d, e, abs_tol=1e-4) for (_, d), (e, _) in zip(got, expected))
    assert key not in {k for k, _ in got}


def test_nearest_to_a_vector(con):
    key, vector = con.execute("SELECT key, vector FROM shop.item ORDER BY key LIMIT 1").fetchone()
    got = con.execute("SELECT key, distance FROM nearest('shop', 'item', ?, k := 3)", [vector]).fetchall()
    assert got[0][0] == key and got[0][1] == pytest.approx(0, abs=1e-5) and len(got) == 3


def test_recommend_reproduces_the_models_own_validation_rmse(con, published_store):
    """recommend()'s predicted ratings on the held-out ratings score exactly the RMSE the training measured
    with the model's forward pass: the macro is the model, not an approximation of it."""
    store, cfg, summary = published_store
    snapshot = StoreLayout(store).snapshot_dir(cfg.index.dataset, summary["index"]["snapshot_id"])
    keys = {entity: pq.read_table(snapshot / vocab_dir(entity)).to_pandas().set_index("index")["key"]
            for entity in ("user", "item")}
    valid = pq.read_table(snapshot / interactions_dir("valid")).to_pandas()
    items = con.execute("SELECT count(*) FROM shop.item").fetchone()[0]
    errors = []
    for user, rows in valid.groupby("user"):
        predicted = dict(con.execute("SELECT key, predicted_rating FROM recommend('shop', ?, k := ?)",
                                     [keys["user"][user], items]).fetchall())
        assert len(predicted) == items and list(predicted.values()) == sorted(predicted.values(), reverse=True)
        errors += [predicted[keys["item"][item]] - rating for item, rating in zip(rows["item"], rows["rating"])]
    rmse = float(np.sqrt(np.mean(np.square(errors))))
    assert len(errors) == len(valid)
    assert rmse == pytest.approx(summary["train"]["metrics"]["valid_rmse"], rel=1e-4)


def test_hnsw_fast_path_is_used_where_promised(con, published_store):
    _, _, summary = published_store
    entities = summary["publish"]["entities"]
    assert entities["user"]["hnsw"] and not entities["item"]["hnsw"]
    key = con.execute("SELECT key FROM shop.user ORDER BY key LIMIT 1").fetchone()[0]
    vector, unit = con.execute("SELECT vector, unit FROM shop.user WHERE key = ?", [key]).fetchone()
    assert unit == pytest.approx((np.array(vector) / np.linalg.norm(vector)).tolist(), abs=1e-6)
    con.execute("SET VARIABLE q = (SELECT unit FROM shop.user WHERE key = ?)", [key])
    two_step = "SELECT key, distance FROM shop_user_nearest(getvariable('q'), k := 11) WHERE key <> '" + key + "'"
    assert "HNSW_INDEX_SCAN" in _plan(con, two_step)
    # exact cosine search on the raw vectors agrees with the index on this data, distances included
    exact = con.execute(
        "SELECT key, array_cosine_distance(vector, ?::FLOAT[8]) AS d FROM shop.user WHERE key <> ? ORDER BY d, key "
        "LIMIT 10", [vector, key],
    ).fetchall()
    fast = con.execute(two_step + " LIMIT 10").fetchall()
    assert len({k for k, _ in exact} & {k for k, _ in fast}) >= 9
    assert [d for _, d in fast] == pytest.approx([d for _, d in exact], abs=1e-5)
    # pitfalls the docs warn about: a key subquery inside ORDER BY, or the view, skips the index
    assert "HNSW_INDEX_SCAN" not in _plan(
        con, "SELECT key FROM shop.user ORDER BY array_negative_inner_product(unit, "
        "(SELECT unit FROM shop.user WHERE key = 'x')) LIMIT 5"
    )
    assert "HNSW_INDEX_SCAN" not in _plan(con, "SELECT * FROM shop_item_nearest(getvariable('q')::FLOAT[8], k := 5)")


def test_similar_returns_k_rows_with_and_without_a_filter(published_store):
    store, _, _ = published_store
    for entity in ("user", "item"):
        con = latentstore.connect(store)
        key = con.execute(f"SELECT key FROM shop.{entity} ORDER BY count DESC, key LIMIT 1").fetchone()[0]
        threshold = con.execute(f"SELECT quantile_disc(count, 0.5) FROM shop.{entity}").fetchone()[0]
        con.close()
        with latentstore.open_store(store) as opened:
            rows = opened.similar("shop", entity, key, k=10)
            filtered = opened.similar("shop", entity, key, k=10, min_count=threshold)
        assert len(rows) == 10 and key not in {r[0] for r in rows}
        assert len(filtered) == 10 and all(r[2] >= threshold for r in filtered)


def test_versions_view_and_errors(con, published_store):
    store, _, summary = published_store
    row = con.execute("SELECT model, version, is_current, metric_name, metric_value, dataset FROM versions").fetchall()
    assert row == [("shop", 1, True, "valid_rmse", pytest.approx(summary["train"]["metrics"]["valid_rmse"]), "shop")]
    manifest_kept = con.execute("SELECT snapshot_manifest->>'$.counts.kept' FROM versions").fetchone()[0]
    assert int(manifest_kept) == summary["index"]["counts"]["kept"]
    with latentstore.open_store(store) as opened:
        with pytest.raises(StoreError, match="no model 'nope'"):
            opened.similar("nope", "item", "x")
        with pytest.raises(StoreError, match="key 'missing' not found in shop.item"):
            opened.similar("shop", "item", "missing")


def test_a_reopen_sees_what_was_published_in_between_and_an_open_connection_keeps_its_version(tmp_path):
    store = tmp_path / "store"
    publish_vectors(store, "m", {"item": {"a": [1.0, 0.0], "b": [0.0, 1.0]}})
    first = latentstore.connect(store)
    query = "SELECT key, vector FROM m.item ORDER BY key"
    before = first.execute(query).fetchall()
    publish_vectors(store, "m", {"item": {"a": [0.5, 0.5], "c": [1.0, 1.0]}})
    assert first.execute(query).fetchall() == before == [("a", (1.0, 0.0)), ("b", (0.0, 1.0))]
    first.close()
    second = latentstore.connect(store)
    assert second.execute(query).fetchall() == [("a", (0.5, 0.5)), ("c", (1.0, 1.0))]
    assert second.execute("SELECT version FROM models WHERE model = 'm'").fetchone()[0] == 2
    second.close()


def test_vectors_recover_the_planted_taste_clusters(published_store):
    """The synthetic data plants item clusters; nearest neighbours should mostly share one."""
    import csv

    store, _, _ = published_store
    (labels_file,) = (store / "inputs").glob("*.items.csv")
    with labels_file.open() as fh:
        cluster = {row["item"]: row["cluster"] for row in csv.DictReader(fh)}
    con = latentstore.connect(store)
    keys = [k for (k,) in con.execute("SELECT key FROM shop.item WHERE count >= 20").fetchall()]
    same = total = 0
    for key in keys:
        neighbours = con.execute("SELECT key FROM most_similar('shop', 'item', ?, k := 5)", [key]).fetchall()
        same += sum(cluster[n] == cluster[key] for (n,) in neighbours)
        total += len(neighbours)
    con.close()
    chance = 1 / len(set(cluster.values()))
    assert len(keys) >= 20 and same / total >= 0.8 > 2 * chance, same / total
