"""The pipeline flow: index once, then train -> publish each of the config's models, a task per stage.

- ``stages`` selects what runs: the nightly deployment runs all three, the hourly
  refresh only ``publish`` (it publishes a finished run the nightly could not).
- Each task's cache key is its stage's id (jobs/markers.py): the content key of
  the input, the run id, the model and run published. The store, not Prefect,
  says what is done: when a stage's output is gone its cache is refreshed.
- Tasks that touch storage retry on transient I/O errors (OSError), never on
  bad input or config (LatentstoreError), which would fail again the same way; a
  retried train task resumes from its checkpoint.
- A run that starts more than ``max_lateness_minutes`` after its scheduled time
  ends Cancelled, with the reason, instead of piling onto the next one.
- A failure fails the flow with the stage, the model and the reason; nothing
  is half-published (each publish is one atomic pointer switch).

Counts, metrics per epoch, the version published or the gate's refusal, and the
map link are recorded as artifacts. The decisions (stages, retries, lateness, the
hourly gate skip, failures, a remote train run that did not finish) are
jobs.policy's, the work is jobs.stages': this module wires them to Prefect.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Literal
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.logging.handlers import APILogHandler
from prefect.states import Cancelled

from jobs import markers, policy
from jobs import stages as stage_jobs
from jobs.config import PipelineConfig, load_config
from jobs.policy import Stage
from schemas.errors import GateRefused, StageFailed
from schemas.store import StoreLayout

_JOB_LOGGERS = ("jobs", "latentstore")


def is_transient(task, task_run, state) -> bool:
    """Retry condition of the stage tasks (jobs.policy.is_transient)."""
    return policy.is_transient(state.result(raise_on_failure=False))


@contextlib.contextmanager
def job_logs_to_prefect() -> Iterator[None]:
    """Send the jobs' standard-library logs to the Prefect run's logs too."""
    handler = APILogHandler()
    loggers = [logging.getLogger(name) for name in _JOB_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def _stage_cache_key(context, parameters: dict) -> str:
    return parameters["marker"].cache_key


_retries = dict(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient)
_stage_task = dict(**_retries, cache_key_fn=_stage_cache_key, persist_result=True)


@task(name="index", task_run_name="index-{cfg.name}", **_stage_task)
def index_task(cfg: PipelineConfig, store: str, marker: markers.StageMarker, planned, config_path: str,
               input_path: str | None, isolate: bool) -> dict:
    with job_logs_to_prefect():
        if isolate:
            return stage_jobs.index_in_subprocess(config_path, input_path, StoreLayout(store))
        return stage_jobs.index(cfg, StoreLayout(store), planned)


@task(name="train", task_run_name="train-{model}", **_stage_task)
def train_task(cfg: PipelineConfig, store: str, marker: markers.StageMarker, model: str, snapshot_id: str,
               resume: bool, lock_timeout: float | None) -> dict:
    with job_logs_to_prefect():
        return stage_jobs.train(cfg, StoreLayout(store), model=model, snapshot_id=snapshot_id, resume=resume,
                                lock_timeout=lock_timeout)


@task(name="publish", task_run_name="publish-{model}", **_stage_task)
def publish_task(cfg: PipelineConfig, store: str, marker: markers.StageMarker, model: str, run_id: str,
                 snapshot_id: str, force: bool) -> dict:
    with job_logs_to_prefect():
        return stage_jobs.publish(cfg, StoreLayout(store), model=model, run_id=run_id, snapshot_id=snapshot_id,
                              force=force)


@task(name="map", task_run_name="map-{model}", cache_policy=NONE)
def map_task(cfg: PipelineConfig, store: str, model: str, version: int) -> dict:
    with job_logs_to_prefect():
        return stage_jobs.draw_map(cfg, StoreLayout(store), model, version)


@flow(name="latentstore-pipeline", log_prints=False)
def pipeline(config_path: str, store: str = "latentstore-data", input_path: str | None = None,
             resume: bool = True, force: bool = False, stages: list[Stage] | None = None,
             max_lateness_minutes: float | None = None, snapshot_id: str | None = None,
             train_deployment: str | None = None, train_timeout_minutes: float = 720, isolate_index: bool = False,
             lock_timeout_seconds: float | None = None, fold_in: Literal["new", "all"] | None = None):
    """Index one config's data, then train and publish each of its models into one store.

    ``stages`` (all three by default) picks stages; without ``index`` the snapshot is
    ``snapshot_id`` or the dataset's latest. ``train_deployment`` ("flow/deployment")
    runs the train stage as that deployment's flow run (e.g. on a GPU work pool
    sharing the store) and waits for it, at most ``train_timeout_minutes`` (then
    the child run is cancelled and the stage fails). ``isolate_index`` runs the index stage in
    a child process (a fresh Spark session per run, for long-lived processes).
    ``lock_timeout_seconds`` replaces the config's wait for the store's writer lock and
    bounds the wait for another process training the same run (default: as long as it trains).
    ``fold_in`` ("new" or "all") starts each model from its current version instead of from scratch
    (jobs.train.fold_in; the hourly fold-in deployments), on the snapshot the index stage rebuilt.
    A version the quality gate refuses fails the flow (the current version stays);
    ``force`` publishes it."""
    logger = get_run_logger()
    late = _lateness(max_lateness_minutes)
    if late is not None:
        logger.warning(late)
        return Cancelled(message=late)
    selected = policy.check_stages(stages)
    cfg = load_config(config_path, input_path).with_lock_timeout(lock_timeout_seconds).with_fold_in(fold_in)
    layout = StoreLayout(store)
    store = str(layout.root)
    if "index" in selected:
        # inputs hashed once per run
        planned = policy.in_stage(cfg.name, "index", lambda: stage_jobs.plan_index(cfg, layout))
        marker = markers.index_marker(cfg, layout, planned)
        indexed = _run(index_task, marker, cfg.name, cfg, store, marker, planned, config_path, input_path,
                       isolate_index)
        logger.info("snapshot %s%s: read %d, kept %d, quarantined %d, duplicates %d, superseded %d",
                    indexed["snapshot_id"], " (reused)" if indexed["reused"] else "", *_counts(indexed))
        _counts_artifact(cfg, indexed)
    else:
        indexed = policy.in_stage(cfg.name, "index", lambda: stage_jobs.snapshot(cfg, layout, snapshot_id))
    snapshot = indexed["snapshot_id"]
    if "train" in selected and train_deployment is not None:
        _train_on_deployment(train_deployment, config_path, store, input_path, snapshot, resume,
                             train_timeout_minutes, fold_in)
    models, failures = {}, []
    for model in cfg.model_names():
        trained = _trained(cfg, layout, model, snapshot, resume, local="train" in selected and not train_deployment,
                           lock_timeout=lock_timeout_seconds)
        if trained is None:
            logger.warning("%s: no finished training run on snapshot %s; nothing to publish", model, snapshot)
            models[model] = {"train": None, "publish": None}
            continue
        logger.info("%s run %s%s: %s", model, trained["run_id"], " (reused)" if trained["reused"] else "",
                    trained["metrics"])
        published = None
        skipped = policy.publish_skipped(layout, model, trained["run_id"], selected, force)
        if skipped:
            logger.warning("%s", skipped)
        elif "publish" in selected:
            try:
                published = _publish(cfg, layout, model, trained, indexed, force)
            except StageFailed as failure:  # the config's other models still publish
                logger.error("%s", failure)
                failures.append(failure)
        models[model] = {"train": trained, "publish": published}
    failure = policy.combined_failure(failures)
    if failure is not None:
        raise failure
    return {"index": indexed, "stages": selected, "models": models}


def _trained(cfg, layout: StoreLayout, model: str, snapshot: str, resume: bool, local: bool,
             lock_timeout: float | None) -> dict | None:
    """Train here, or read the run trained elsewhere (another deployment, an earlier run)."""
    if not local:
        return policy.in_stage(model, "train", lambda: stage_jobs.finished_run(cfg, layout, model, snapshot))
    marker = policy.in_stage(model, "train", lambda: markers.train_marker(cfg, layout, model, snapshot))
    return _run(train_task, marker, model, cfg, str(layout.root), marker, model, snapshot, resume, lock_timeout)


def _publish(cfg, layout: StoreLayout, model: str, trained: dict, indexed: dict, force: bool) -> dict:
    logger = get_run_logger()
    store = str(layout.root)
    marker = policy.in_stage(model, "publish", lambda: markers.publish_marker(layout, model, trained["run_id"]))
    try:
        published = _run(publish_task, marker, model, cfg, store, marker, model, trained["run_id"],
                         indexed["snapshot_id"], force)
    except StageFailed as failure:
        if isinstance(failure.__cause__, GateRefused):
            _refusal_artifact(model, trained, str(failure.__cause__))
        raise
    logger.info("published %s v%d%s", published["model"], published["version"],
                " (published before: nothing to do)" if published["reused"] else "")
    _model_artifacts(indexed, trained, published)
    if cfg.publish.map is not None:
        drawn = map_task(cfg, store, model, published["version"])  # cheap next to training: always redrawn
        create_link_artifact(key=f"{_key(model)}-map", link=Path(drawn["file"]).as_uri(),
                             link_text=f"{model} v{published['version']}: map of {cfg.publish.map.entity}",
                             description=f"{drawn['points']} points, {drawn['method']}")
        published = {**published, "map": drawn["file"]}
    return published


def _run(stage_task, marker: markers.StageMarker, label: str, *args) -> dict:
    """Run a stage's task; its cache holds only while the stage's output is on disk."""
    # Only ever force a refresh: an explicit False would override PREFECT_TASKS_REFRESH_CACHE.
    call = stage_task if marker.done else stage_task.with_options(refresh_cache=True)
    state = call(*args, return_state=True)
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        failure = policy.stage_failure(marker.stage, label, error)
        raise failure from error if isinstance(error, BaseException) else failure
    result = state.result()
    # A cached result is the summary of the run that did the work: say it was reused.
    return {**result, "reused": True} if state.name == "Cached" else result


def _train_on_deployment(deployment: str, config_path: str, store: str, input_path: str | None, snapshot: str,
                         resume: bool, timeout_minutes: float, fold_in: str | None = None) -> None:
    """The train stage as a flow run of ``deployment`` (its own work pool); waits for it to finish."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    logger.info("training on deployment %s (snapshot %s)", deployment, snapshot)
    child = run_deployment(name=deployment, timeout=timeout_minutes * 60, poll_interval=2, parameters={
        "config_path": config_path, "store": store, "input_path": input_path, "resume": resume,
        "stages": ["train"], "snapshot_id": snapshot, "fold_in": fold_in})
    outcome = policy.remote_train_outcome(deployment, child.name, child.state, timeout_minutes)
    if outcome.cancel:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(child.id, Cancelled(message=f"gave up after {timeout_minutes:g} min"), force=True)
    if outcome.failure is not None:
        raise outcome.failure


def _lateness(max_lateness_minutes: float | None) -> str | None:
    """Why this run is too late to be worth running (jobs.policy.late_reason), or None."""
    if max_lateness_minutes is None:
        return None
    from prefect.runtime import flow_run

    return policy.late_reason(flow_run.scheduled_start_time, max_lateness_minutes)


def _counts(indexed: dict) -> list[int]:
    counts = indexed["counts"]
    return [counts[k] for k in ("read", "kept", "quarantined", "duplicates", "superseded")]


def _key(name: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes."""
    return name.replace("_", "-")


def _counts_artifact(cfg: PipelineConfig, indexed: dict) -> None:
    counts = {k: v for k, v in indexed["counts"].items() if k != "quarantine_reasons"}
    create_table_artifact([counts], key=f"{_key(cfg.name)}-counts", description="Rows by outcome")


def _refusal_artifact(model: str, trained: dict, reason: str) -> None:
    metric = trained["primary_metric"]
    create_markdown_artifact(
        f"# {model}: refused by the quality gate\n\n- run `{trained['run_id']}`, {metric['name']} "
        f"{metric['value']}\n- {reason}\n",
        key=f"{_key(model)}-refused",
        description=f"{model}: the quality gate refused this run's version; the current version stays",
    )


def _model_artifacts(indexed: dict, trained: dict, published: dict) -> None:
    model = published["model"]
    create_table_artifact(
        [{k: v for k, v in epoch.items()} for epoch in trained["history"]] or [{"epoch": "reused"}],
        key=f"{_key(model)}-epochs",
        description=f"{model}: metrics per epoch",
    )
    metric = trained["primary_metric"]
    value = metric["value"]
    tables = ", ".join(f"{e} {i['rows']} x {i['dim']}" for e, i in published["entities"].items())
    gate = published.get("gate") or {}
    drift = (published.get("drift") or {}).get("tables", {})
    drifts = ", ".join(f"{t} {d['overlap_at_10']:.2f}" for t, d in drift.items() if d["overlap_at_10"] is not None)
    create_markdown_artifact(
        f"# {model} v{published['version']}\n\n"
        f"- snapshot `{indexed['snapshot_id']}`, run `{trained['run_id']}`\n"
        f"- {metric['name']}: {value if value is None else f'{value:.4f}'} ({metric['direction']})\n"
        f"- quality gate: {'forced: ' if gate.get('forced') else ''}{gate.get('reason', 'n/a')}\n"
        f"- drift (top-10 neighbour overlap with the previous version): {drifts or 'n/a'}\n"
        f"- quarantined rows: {indexed['counts']['quarantined']} {indexed['counts']['quarantine_reasons']}\n"
        f"- tables: {tables}\n",
        key=f"{_key(model)}-published",
        description=f"What this run published for {model}",
    )
