"""The flow as a scheduled deployment runs it: caching by stage id, stages, lateness, failures, Spark isolation.

Under Prefect's test harness (a real, temporary Prefect API) and the shared local Spark session.
"""

from __future__ import annotations

import re
import shutil
import time
from datetime import UTC, datetime, timedelta

import pytest

import latentstore
from tests.helpers import small_ratings_toml

pytestmark = [pytest.mark.prefect, pytest.mark.spark, pytest.mark.slow]


def _config(tmp_path, name: str, master: str = "local[2]", train: str = "") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(small_ratings_toml(name, master, train))
    return str(path)


def _task_states(flow_state) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])))
    return {run.name: run.state.name for run in runs}


def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found[0] if found else None


def test_a_rerun_is_served_from_the_cache_by_stage_id_until_an_output_is_gone(prefect_harness, spark, tmp_path):
    from flows.pipeline import pipeline

    config, store = _config(tmp_path, "cached"), str(tmp_path / "store")
    first = pipeline(config, store, return_state=True)
    assert first.is_completed(), first.message
    run_id = first.result()["models"]["cached"]["train"]["run_id"]
    result_file = tmp_path / "store" / "runs" / run_id / "result.json"
    written = result_file.stat().st_mtime_ns

    second = pipeline(config, store, return_state=True)
    assert _task_states(second) == {"index-cached": "Cached", "train-cached": "Cached", "publish-cached": "Cached"}
    summary = second.result()
    assert summary["index"]["reused"] and summary["models"]["cached"]["train"]["reused"]
    assert result_file.stat().st_mtime_ns == written  # no training happened

    shutil.rmtree(result_file.parent)  # the cached run's output is gone: train again, publish stays cached
    third = pipeline(config, store, return_state=True)
    assert _task_states(third) == {"index-cached": "Cached", "train-cached": "Completed", "publish-cached": "Cached"}
    assert result_file.is_file() and not third.result()["models"]["cached"]["train"]["reused"]

    other_store = pipeline(config, str(tmp_path / "other"), return_state=True)  # the cache key names the store
    assert _task_states(other_store)["index-cached"] == "Completed"


def test_a_transient_io_error_is_retried_and_training_resumes_from_its_checkpoint(prefect_harness, spark, tmp_path,
                                                                                  monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    from flows.pipeline import pipeline

    marker = tmp_path / "fault-injected"
    monkeypatch.setenv("LATENTSTORE_FAIL_ONCE_AT", f"train:checkpoint={marker}")  # after epoch 1's checkpoint
    state = pipeline(_config(tmp_path, "flaky"), str(tmp_path / "store"), return_state=True)
    assert state.is_completed(), state.message
    assert marker.exists()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        train = next(run for run in runs if run.name == "train-flaky")
        assert train.run_count == 2 and train.state.is_completed()
        deadline, messages = time.monotonic() + 20, []
        while time.monotonic() < deadline and not any("resuming run" in m for m in messages):
            time.sleep(1)
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            messages = [log.message for log in logs]
    assert any("injected transient I/O error at train:checkpoint" in m for m in messages)
    assert any(re.search(r"resuming run \w+ after epoch 1$", m) for m in messages), messages
    assert [e["epoch"] for e in state.result()["models"]["flaky"]["train"]["history"]] == [1, 2]


def test_stages_split_the_nightly_from_the_hourly_publish(prefect_harness, spark, tmp_path):
    from flows.pipeline import pipeline

    config, store = _config(tmp_path, "staged"), str(tmp_path / "store")
    nothing_yet = pipeline(config, store, stages=["publish"], return_state=True)
    assert nothing_yet.is_failed() and "index stage of staged failed: no snapshot of dataset" in nothing_yet.message

    trained = pipeline(config, store, stages=["index", "train"], return_state=True)
    assert trained.is_completed(), trained.message
    assert trained.result()["models"]["staged"]["publish"] is None
    assert not (tmp_path / "store" / "models").exists()

    published = pipeline(config, store, stages=["publish"], return_state=True)
    assert _task_states(published) == {"publish-staged": "Completed"}
    assert published.result()["models"]["staged"]["publish"]["version"] == 1
    con = latentstore.connect(store)
    assert con.execute("SELECT version FROM versions WHERE is_current").fetchall() == [(1,)]
    con.close()

    with pytest.raises(Exception, match=r"stages.0: Input should be 'index', 'train' or 'publish'"):
        pipeline(config, store, stages=["deploy"])


def test_a_run_later_than_max_lateness_is_cancelled_with_the_reason(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    from flows.pipeline import pipeline

    config, store = _config(tmp_path, "late"), str(tmp_path / "store")
    parameters = {"config_path": config, "store": store, "max_lateness_minutes": 30}
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(pipeline, parameters=parameters,
                                          state=Scheduled(scheduled_time=datetime.now(UTC) - timedelta(hours=2)))
    state = run_flow(pipeline, flow_run=flow_run, parameters=parameters, return_type="state")
    assert state.is_cancelled()
    assert "more than max_lateness_minutes=30" in state.message and "the next scheduled run" in state.message
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run.id).state.is_cancelled()
    assert not (tmp_path / "store").exists()  # it did nothing


def test_a_gate_refusal_fails_the_flow_naming_the_stage_and_keeps_the_current_version(prefect_harness, spark,
                                                                                      tmp_path):
    from flows.pipeline import pipeline

    store = str(tmp_path / "store")
    assert pipeline(_config(tmp_path, "gated"), store, return_state=True).is_completed()
    worse = _config(tmp_path, "gated", train="lr = 0.0001\n[publish.gate]\ntolerance = 0.0")
    refused = pipeline(worse, store, return_state=True)
    assert refused.is_failed()
    assert "publish stage of gated failed: quality gate refused gated" in refused.message
    artifact = _artifact("gated-refused")
    assert artifact is not None and "The current version stays" in artifact.data
    con = latentstore.connect(store)
    assert con.execute("SELECT version, is_current FROM versions").fetchall() == [(1, True)]
    assert con.execute("SELECT count(*) FROM registry_events WHERE event = 'refused'").fetchone()[0] == 1
    con.close()


def test_a_diverging_training_fails_in_the_train_stage_and_publishes_nothing(prefect_harness, spark, tmp_path):
    from flows.pipeline import pipeline

    state = pipeline(_config(tmp_path, "diverges", train="lr = 1e30"), str(tmp_path / "store"), return_state=True)
    assert state.is_failed() and "train stage of diverges failed: training diverged" in state.message
    assert _task_states(state)["train-diverges"] == "Failed"  # not retried: not a transient error
    assert not (tmp_path / "store" / "models").exists()


def test_spark_settings_that_cannot_change_fail_loudly_unless_the_index_runs_in_its_own_process(
        prefect_harness, spark, tmp_path):
    from flows.pipeline import pipeline

    config, store = _config(tmp_path, "isolated", master="local[1]"), str(tmp_path / "store")
    shared = pipeline(config, store, return_state=True)
    assert shared.is_failed()
    assert "spark.master is 'local[2]', the config asks for 'local[1]'" in shared.message
    assert "isolate_index=true" in shared.message

    isolated = pipeline(config, store, isolate_index=True, return_state=True)
    assert isolated.is_completed(), isolated.message
    summary = isolated.result()
    assert summary["models"]["isolated"]["publish"]["version"] == 1
    assert summary["index"]["counts"]["kept"] > 0
    assert spark.sparkContext.master == "local[2]"  # this process's session is untouched


def test_serve_builds_one_guarded_deployment_per_config(tmp_path):
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    from flows.serve import served_deployments

    configs = [_config(tmp_path, "alpha"), _config(tmp_path, "beta_two")]
    deployments = served_deployments(configs, tmp_path / "store", cron="0 2 * * *", stages=["publish"],
                                     max_lateness_minutes=45)
    assert [d.name for d in deployments] == ["alpha-served", "beta-two-served"]
    for deployment in deployments:
        assert deployment.schedules[0].schedule.cron == "0 2 * * *"
        assert deployment.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
        assert deployment.concurrency_limit == 1
        assert deployment.parameters["stages"] == ["publish"] and deployment.parameters["isolate_index"] is True
        assert deployment.parameters["max_lateness_minutes"] == 45
        assert deployment.parameters["store"] == str((tmp_path / "store").resolve())
