"""The pipeline flow under Prefect's test harness (a real, temporary Prefect API)."""

from __future__ import annotations

import pytest

import latentstore
from tests.helpers import clicks_toml

pytestmark = [pytest.mark.prefect, pytest.mark.spark, pytest.mark.slow]

CONFIG = """
name = "flowdemo"
[index.input.synthetic]
users = 150
items = 60
clusters = 3
ratings_per_user = 15
seed = 3
[index.spark]
master = "local[2]"
[train]
dim = 8
epochs = 2
threads = 1
[publish]
hnsw_min_rows = 100
[publish.map]
entity = "item"
labels = "item-labels.csv"
key_column = "item"
label_column = "shelf"
"""


def test_pipeline_flow_publishes_then_reuses_everything(prefect_harness, spark, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.pipeline import pipeline

    config = tmp_path / "flow.toml"
    config.write_text(CONFIG)
    (tmp_path / "item-labels.csv").write_text("item,shelf\n" + "".join(f"i{i:02d},shelf{i % 3}|x\n" for i in range(60)))
    store = tmp_path / "store"
    state = pipeline(str(config), str(store), return_state=True)
    assert state.is_completed(), state.message
    first = state.result()
    model = first["models"]["flowdemo"]
    assert model["publish"]["version"] == 1 and not first["index"]["reused"] and not model["train"]["reused"]
    counts = first["index"]["counts"]
    assert counts["read"] == counts["kept"] + counts["quarantined"] + counts["duplicates"] + counts["superseded"]

    second = pipeline(str(config), str(store))
    again = second["models"]["flowdemo"]
    assert second["index"]["reused"] and again["train"]["reused"] and again["publish"]["reused"]
    assert again["publish"]["version"] == 1

    con = latentstore.connect(store)
    assert con.execute("SELECT count(*) FROM versions").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM flowdemo.item").fetchone()[0] == first["index"]["vocab"]["item"]["keys"]
    con.close()

    map_file = store / "maps" / "flowdemo-v000001-item.png"
    assert map_file.read_bytes()[:4] == b"\x89PNG" and model["publish"]["map"] == str(map_file)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["flowdemo-counts"])))
        links = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["flowdemo-map"])))
    assert artifacts and artifacts[0].type == "table"
    assert links and links[0].type == "markdown" and map_file.as_uri() in links[0].data


def test_flow_fails_with_the_reason_and_publishes_nothing(prefect_harness, tmp_path):
    from flows.pipeline import pipeline

    config = tmp_path / "bad.toml"
    config.write_text('name = "broken"\n[index.input]\npath = "missing.csv"\n')
    state = pipeline(str(config), str(tmp_path / "store"), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="input not found: .*missing.csv"):
        state.result()
    assert not (tmp_path / "store" / "models").exists()


EVENTS_CONFIG = clicks_toml() + """
[index.spark]
master = "local[2]"
[[train]]
model = "skipgram"
epochs = 1
threads = 1
[[train]]
model = "gru"
epochs = 1
dim = 8
hidden = 8
threads = 1
"""


def test_an_events_flow_trains_and_publishes_each_model_as_its_own_tasks(prefect_harness, spark, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    from flows.pipeline import pipeline

    config = tmp_path / "clicks.toml"
    config.write_text(EVENTS_CONFIG)
    state = pipeline(str(config), str(tmp_path / "store"), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["index"]["kind"] == "events"
    assert {m: s["publish"]["version"] for m, s in summary["models"].items()} == {"clicks_skipgram": 1, "clicks_gru": 1}
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        keys = ["clicks-counts", "clicks-skipgram-epochs", "clicks-gru-epochs", "clicks-gru-published"]
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    assert sorted(r.name for r in runs) == ["index-clicks", "publish-clicks_gru", "publish-clicks_skipgram",
                                            "train-clicks_gru", "train-clicks_skipgram"]
    assert {a.key for a in artifacts} == set(keys)
    con = latentstore.connect(tmp_path / "store")
    assert con.execute("SELECT count(DISTINCT model) FROM embeddings").fetchone()[0] == 2
    con.close()


def test_the_flow_folds_the_new_keys_of_a_grown_input_into_the_current_version(prefect_harness, spark, tmp_path):
    """What the hourly fold-in deployment runs: the grown input indexed as a rebuild, the new users and items
    folded into the current version, published; an hour later with no new data, nothing trains."""
    import json

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from flows.pipeline import pipeline
    from jobs.synthetic import materialise
    from jobs.synthetic.config import SyntheticRatings

    table = pq.read_table(materialise(SyntheticRatings(users=150, items=60, clusters=3, ratings_per_user=15, seed=3),
                                      tmp_path / "generated"))
    users = sorted(set(table["user"].to_pylist()))
    for name, rows in (("old", table.filter(pc.is_in(table["user"], pa.array(users[:120])))), ("all", table)):
        (tmp_path / name).mkdir()
        pq.write_table(rows, tmp_path / name / "ratings.parquet")
    config = tmp_path / "grown.toml"
    config.write_text("""
name = "grown"
[index.input]
path = "old"
columns = { user = "user", item = "item", rating = "rating", timestamp = "timestamp" }
[index.spark]
master = "local[2]"
[train]
dim = 8
epochs = 2
threads = 1
[publish]
hnsw_min_rows = 100
""")
    store = str(tmp_path / "store")
    first = pipeline(str(config), store)["models"]["grown"]
    folded = pipeline(str(config), store, input_path=str(tmp_path / "all"), fold_in="new")["models"]["grown"]
    assert folded["publish"]["version"] == 2 and not folded["train"]["reused"]
    con = latentstore.connect(store)
    lineage = json.loads(con.execute("SELECT fold_in FROM versions WHERE version = 2").fetchone()[0])
    assert con.execute("SELECT count(*) FROM grown.user").fetchone()[0] == 150
    con.close()
    assert lineage["parent_run"] == first["train"]["run_id"] and lineage["rows_folded_in"]["user"] == 30
    again = pipeline(str(config), store, input_path=str(tmp_path / "all"), fold_in="new")["models"]["grown"]
    assert again["train"]["reused"] and again["train"]["run_id"] == folded["train"]["run_id"]
    assert again["publish"]["version"] == 2
