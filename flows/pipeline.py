"""The pipeline flow: index once, then train -> publish each of the config's models, a task per stage.

Tasks that touch storage retry on transient I/O errors (OSError), never on
bad input or config (LatentstoreError), which would fail again the same way.
Counts, metrics and the published version are logged and recorded as artifacts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.logging.handlers import APILogHandler

from jobs import stages
from jobs.config import PipelineConfig, load_config
from schemas.errors import LatentstoreError
from schemas.store import StoreLayout

_JOB_LOGGERS = ("jobs", "latentstore")


def is_transient(task, task_run, state) -> bool:
    """Retry policy: only I/O errors that are not the user's input or config."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, OSError) and not isinstance(error, LatentstoreError)


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


# Caching lives in the stages themselves (snapshot id, run id): a rerun on the
# same input and config does no work whatever Prefect remembers.
_storage_task = dict(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient, cache_policy=NONE)


@task(name="index", task_run_name="index-{cfg.name}", **_storage_task)
def index_task(cfg: PipelineConfig, store: str) -> dict:
    with job_logs_to_prefect():
        return stages.index(cfg, StoreLayout(store))


@task(name="train", task_run_name="train-{model}", **_storage_task)
def train_task(cfg: PipelineConfig, store: str, model: str, snapshot_id: str, resume: bool) -> dict:
    with job_logs_to_prefect():
        return stages.train(cfg, StoreLayout(store), model=model, snapshot_id=snapshot_id, resume=resume)


@task(name="publish", task_run_name="publish-{model}", **_storage_task)
def publish_task(cfg: PipelineConfig, store: str, model: str, run_id: str, snapshot_id: str, force: bool) -> dict:
    with job_logs_to_prefect():
        return stages.publish(cfg, StoreLayout(store), model=model, run_id=run_id, snapshot_id=snapshot_id,
                              force=force)


@task(name="map", task_run_name="map-{model}", cache_policy=NONE)
def map_task(cfg: PipelineConfig, store: str, model: str, version: int) -> dict:
    with job_logs_to_prefect():
        return stages.draw_map(cfg, StoreLayout(store), model, version)


@flow(name="latentstore-pipeline", log_prints=False)
def pipeline(config_path: str, store: str = "latentstore-data", input_path: str | None = None,
             resume: bool = True, force: bool = False) -> dict:
    """Index one config's data, then train and publish each of its models into one store.

    A version the quality gate refuses fails the flow (the current version stays); ``force`` publishes it."""
    logger = get_run_logger()
    cfg = load_config(config_path, input_path)
    store = str(StoreLayout(store).root)
    indexed = index_task(cfg, store)
    counts = indexed["counts"]
    logger.info(
        "snapshot %s%s: read %d, kept %d, quarantined %d, duplicates %d, superseded %d",
        indexed["snapshot_id"], " (reused)" if indexed["reused"] else "", counts["read"], counts["kept"],
        counts["quarantined"], counts["duplicates"], counts["superseded"],
    )
    _counts_artifact(cfg, indexed)
    models = {}
    for model in cfg.model_names():
        trained = train_task(cfg, store, model, indexed["snapshot_id"], resume)
        logger.info("%s run %s%s: %s", model, trained["run_id"], " (reused)" if trained["reused"] else "",
                    trained["metrics"])
        published = publish_task(cfg, store, model, trained["run_id"], indexed["snapshot_id"], force)
        logger.info("published %s v%d%s", published["model"], published["version"],
                    " (already current)" if published["reused"] else "")
        _model_artifacts(indexed, trained, published)
        if cfg.publish.map is not None:
            drawn = map_task(cfg, store, model, published["version"])
            create_link_artifact(key=f"{_key(model)}-map", link=Path(drawn["file"]).as_uri(),
                                 link_text=f"{model} v{published['version']}: map of {cfg.publish.map.entity}",
                                 description=f"{drawn['points']} points, {drawn['method']}")
            published = {**published, "map": drawn["file"]}
        models[model] = {"train": trained, "publish": published}
    return {"index": indexed, "models": models}


def _key(name: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes."""
    return name.replace("_", "-")


def _counts_artifact(cfg: PipelineConfig, indexed: dict) -> None:
    counts = {k: v for k, v in indexed["counts"].items() if k != "quarantine_reasons"}
    create_table_artifact([counts], key=f"{_key(cfg.name)}-counts", description="Rows by outcome")


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
