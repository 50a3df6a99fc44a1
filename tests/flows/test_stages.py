"""The stages layer without Spark, torch or Prefect: synthetic inputs and the pipeline's policy."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobs import policy, stages
from jobs.index.job import plan
from schemas.errors import ConfigError, StageFailed, StoreError
from schemas.store import StoreLayout
from tests.helpers import pipeline_config, publish_vectors


def test_the_stage_generates_a_synthetic_input_and_the_index_job_reads_files_only(tmp_path):
    cfg = pipeline_config(tmp_path)  # small synthetic ratings
    store = StoreLayout(tmp_path / "store")
    with pytest.raises(ConfigError, match="the index job reads files"):
        plan(cfg.index)
    resolved = stages.resolve_input(cfg.index, store)
    assert resolved.input.synthetic is None and Path(resolved.input.path).parent == store.inputs
    assert resolved.data_config() == cfg.index.data_config()  # the snapshot's content key does not change
    assert stages.resolve_input(cfg.index, store) == resolved  # generated once, found again
    planned = stages.plan_index(cfg, store)
    assert planned.cfg == resolved and [f.path for f in planned.files] == [Path(resolved.input.path).name]


# -- the pipeline's policy (jobs.policy): what the flow decides, without Prefect ---------------------------

def test_stages_are_checked_and_put_in_pipeline_order():
    assert policy.check_stages(None) == ["index", "train", "publish"]
    assert policy.check_stages(["publish", "index"]) == ["index", "publish"]
    for wrong in ([], ["index", "serve"]):
        with pytest.raises(ConfigError, match="stages must be a non-empty subset"):
            policy.check_stages(wrong)


def test_only_io_errors_that_are_not_the_users_are_retried():
    class BrokenDisk(OSError):
        pass

    class LockedStore(OSError, StoreError):  # an OSError that is still the user's to act on
        pass

    assert policy.is_transient(BrokenDisk("EIO")) and policy.is_transient(TimeoutError("slow mount"))
    assert not policy.is_transient(LockedStore("held")) and not policy.is_transient(StoreError("no store"))
    assert not policy.is_transient(ValueError("bug")) and not policy.is_transient(None)


def test_a_run_later_than_its_limit_is_skipped_with_the_reason():
    scheduled = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
    assert policy.late_reason(scheduled, None, now=scheduled + timedelta(days=1)) is None
    assert policy.late_reason(scheduled, 30, now=scheduled + timedelta(minutes=30)) is None  # exactly the limit runs
    reason = policy.late_reason(scheduled, 30, now=scheduled + timedelta(minutes=45))
    assert reason == ("skipped: started 45.0 min after its scheduled time 2026-01-01T02:00:00+00:00, more than "
                      "max_lateness_minutes=30; the next scheduled run will do the work")


def test_a_failure_names_its_stage_and_label_and_several_become_one():
    assert str(policy.stage_failure("train", "shop", StoreError("no snapshot"))) == "train stage of shop failed: no snapshot"
    assert str(policy.stage_failure("index", "shop", RuntimeError("boom"))) == "index stage of shop failed: RuntimeError: boom"
    def gone():
        raise StoreError("gone")

    assert policy.in_stage("shop", "publish", lambda: 7) == 7
    with pytest.raises(StageFailed, match="^publish stage of shop failed: gone$") as raised:
        policy.in_stage("shop", "publish", gone)
    assert isinstance(raised.value.__cause__, StoreError)
    with pytest.raises(ZeroDivisionError):  # a bug is not dressed up as a stage failure
        policy.in_stage("shop", "publish", lambda: 1 / 0)
    first, second = StageFailed("publish stage of a failed: x"), StageFailed("publish stage of b failed: y")
    assert policy.combined_failure([]) is None and policy.combined_failure([first]) is first
    assert str(policy.combined_failure([first, second])) == "publish stage of a failed: x; publish stage of b failed: y"


@dataclass
class _State:  # what a Prefect state offers the policy
    name: str
    message: str | None = None
    completed: bool = False
    final: bool = True

    def is_completed(self) -> bool:
        return self.completed

    def is_final(self) -> bool:
        return self.final


def test_a_train_deployment_run_that_did_not_finish_is_cancelled_and_fails_the_stage():
    done = policy.remote_train_outcome("flow/gpu", "brave-otter", _State("Completed", completed=True), 720)
    assert done == policy.RemoteTrain(cancel=False, failure=None)
    for waiting in (None, _State("Scheduled", final=False), _State("Running", final=False)):
        outcome = policy.remote_train_outcome("flow/gpu", "brave-otter", waiting, 1.5)
        assert outcome.cancel and str(outcome.failure) == (
            "train stage failed: deployment flow/gpu did not finish flow run brave-otter within "
            "train_timeout_minutes=1.5 (is a worker running on its pool?); cancelled it")
    crashed = policy.remote_train_outcome("flow/gpu", "brave-otter", _State("Crashed", "OOM killed"), 720)
    assert not crashed.cancel and str(crashed.failure) == (
        "train stage failed on deployment flow/gpu: flow run brave-otter ended Crashed: OOM killed")


def test_the_hourly_publish_does_not_ask_the_gate_again_about_a_run_it_refused(tmp_path):
    from jobs.publish.registry import append_event

    store = tmp_path / "store"
    layout = StoreLayout(store)
    assert policy.publish_skipped(layout, "shop", "run-b", ["publish"], force=False) is None  # no store yet
    publish_vectors(store, "shop", {"item": {"a": [1.0, 0.0], "b": [0.0, 1.0]}})
    append_event(layout, "shop", "refused", from_version=1, run_id="run-b", details={"reason": "worse"})
    assert policy.publish_skipped(layout, "shop", "run-b", ["publish"], force=False) == (
        "shop: the quality gate already refused run run-b against the current version; not asked again "
        "(force=true publishes it)")
    assert policy.publish_skipped(layout, "shop", "run-b", ["publish"], force=True) is None
    assert policy.publish_skipped(layout, "shop", "run-b", ["index", "train", "publish"], force=False) is None
    assert policy.publish_skipped(layout, "shop", "run-c", ["publish"], force=False) is None  # another run
    publish_vectors(store, "shop", {"item": {"a": [1.0, 0.1], "b": [0.1, 1.0]}}, metric=0.5)  # a new current version
    assert policy.publish_skipped(layout, "shop", "run-b", ["publish"], force=False) is None  # asked again
