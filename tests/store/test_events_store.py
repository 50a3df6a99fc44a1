"""Event models in the store: their tables, next_events, user vectors, similar, the registry."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

import latentstore
from schemas.snapshot import HISTORIES_DIR
from tests.helpers import build_models, events_config



@pytest.fixture(scope="module")
def events_store(spark, tmp_path_factory):
    """Both sequence models over the small synthetic log; user tables (300 rows) get an HNSW index."""
    base = tmp_path_factory.mktemp("events-store")
    cfg = events_config(base, name="shop", hnsw_min_rows=200)
    store = base / "store"
    return store, cfg, build_models(cfg, store)


@pytest.fixture
def con(events_store):
    connection = latentstore.connect(events_store[0])
    yield connection
    connection.close()


def test_each_model_publishes_its_tables_in_their_spaces(con, events_store):
    _, _, summary = events_store
    got = con.execute("SELECT model, entity, count(*), any_value(len(vector)), count(bias) FROM embeddings "
                      "GROUP BY ALL ORDER BY ALL").fetchall()
    tokens = summary["index"]["vocab"]["token"]["keys"]
    users = summary["index"]["vocab"]["user"]["keys"]
    assert got == [
        ("shop_gru", "next_token", tokens, 32, tokens),  # output layer: in the GRU state space, with a bias
        ("shop_gru", "token", tokens, 16, 0),
        ("shop_gru", "user", users, 32, 0),
        ("shop_skipgram", "token", tokens, 64, 0),
        ("shop_skipgram", "user", users, 64, 0),
    ]
    spaces = dict(con.execute("SELECT model || '.' || entity, entities->>('$.' || entity || '.space') "
                              "FROM versions, unnest(json_keys(entities)) AS e(entity) WHERE is_current").fetchall())
    assert spaces == {"shop_gru.next_token": "state", "shop_gru.token": "token", "shop_gru.user": "state",
                      "shop_skipgram.token": "token", "shop_skipgram.user": "token"}


def test_next_events_is_the_softmax_of_user_dot_output_plus_bias(con):
    user = con.execute("SELECT key FROM shop_gru.user ORDER BY count DESC, key LIMIT 1").fetchone()[0]
    state = np.array(con.execute("SELECT vector FROM shop_gru.user WHERE key = ?", [user]).fetchone()[0])
    rows = con.execute("SELECT key, vector, bias FROM shop_gru.next_token").fetchall()
    scores = np.array([np.dot(state, v) + b for _, v, b in rows])
    order = sorted(range(len(rows)), key=lambda i: (-scores[i], rows[i][0]))[:5]
    probability = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    got = con.execute("SELECT key, score, probability FROM next_events('shop_gru', ?, k := 5)", [user]).fetchall()
    assert [k for k, _, _ in got] == [rows[i][0] for i in order]
    assert [s for _, s, _ in got] == pytest.approx([scores[i] for i in order], rel=1e-4)
    assert [p for _, _, p in got] == pytest.approx([probability[i] for i in order], rel=1e-4)
    total = con.execute("SELECT sum(probability) FROM next_events('shop_gru', ?, k := 100000)", [user]).fetchone()[0]
    assert total == pytest.approx(1.0, abs=1e-6)
    assert con.execute("SELECT count(*) FROM next_events('shop_gru', 'nobody')").fetchone()[0] == 0


def test_a_skipgram_user_is_the_mean_of_their_last_token_vectors(con, events_store):
    store, cfg, summary = events_store
    snapshot = store / "snapshots" / cfg.index.dataset / summary["index"]["snapshot_id"]
    history = pq.read_table(snapshot / HISTORIES_DIR).to_pandas().iloc[0]
    user_key = pq.read_table(snapshot / "vocab" / "user").to_pandas().set_index("index").loc[history.user, "key"]
    token_keys = pq.read_table(snapshot / "vocab" / "token").to_pandas().set_index("index")["key"]
    tokens = dict(con.execute("SELECT key, vector FROM shop_skipgram.token").fetchall())
    last = [token_keys[i] for i in history.recent if i != 0][-cfg.model("shop_skipgram").user_events:]
    units = [np.array(tokens[k]) / np.linalg.norm(tokens[k]) for k in last]
    expected = np.mean(units, axis=0)
    expected /= np.linalg.norm(expected)
    got = np.array(con.execute("SELECT vector FROM shop_skipgram.user WHERE key = ?", [user_key]).fetchone()[0])
    assert got == pytest.approx(expected, abs=1e-5)
    # in the token space: the tokens nearest a user are the model's guess at their next events
    nearest = con.execute("SELECT key FROM nearest('shop_skipgram', 'token', vector_of('shop_skipgram', 'user', ?), "
                          "k := 3)", [user_key]).fetchall()
    assert len(nearest) == 3


@pytest.mark.parametrize("model, entity", [("shop_skipgram", "token"), ("shop_gru", "token"), ("shop_gru", "user")])
def test_similar_works_on_tokens_and_users(events_store, model, entity):
    store, _, _ = events_store
    con = latentstore.connect(store)
    key = con.execute(f"SELECT key FROM {model}.{entity} ORDER BY count DESC, key LIMIT 1").fetchone()[0]
    hnsw = con.execute("SELECT (entities->>('$.' || ? || '.hnsw'))::BOOLEAN FROM versions WHERE model = ? AND is_current",
                       [entity, model]).fetchone()[0]
    con.close()
    assert hnsw == (entity == "user")
    with latentstore.open_store(store) as opened:
        rows = opened.similar(model, entity, key, k=10)
        filtered = opened.similar(model, entity, key, k=10, min_count=2)
    assert len(rows) == 10 and key not in {r[0] for r in rows}
    assert len(filtered) == 10 and all(r[2] >= 2 for r in filtered)


def test_registry_records_the_ranking_metric_and_the_session_lineage(con, events_store):
    _, _, summary = events_store
    rows = con.execute("SELECT model, metric_name, metric_direction, metric_value, "
                       "snapshot_manifest->>'$.kind', (snapshot_manifest->>'$.sessions.sessions')::INT "
                       "FROM versions ORDER BY model").fetchall()
    assert [r[:3] for r in rows] == [("shop_gru", "valid_hr_at_10", "maximize"),
                                     ("shop_skipgram", "valid_hr_at_10", "maximize")]
    for model, *_, value, kind, sessions in rows:
        assert value == pytest.approx(summary["models"][model]["train"]["metrics"]["valid_hr_at_10"])
        assert kind == "events" and sessions == summary["index"]["sessions"]["sessions"]
