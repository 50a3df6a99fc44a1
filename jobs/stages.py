"""The three stages as plain functions over a PipelineConfig: what flows and the CLI call.

Each returns a small JSON-able summary so that it can cross a Prefect task
boundary; the heavy artifacts stay in the store.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from jobs.common.files import read_json
from jobs.config import PipelineConfig
from jobs.index.config import IndexConfig
from jobs.index.snapshots import latest_id, read_manifest
from schemas.errors import StoreError
from schemas.store import StoreLayout

log = logging.getLogger(__name__)

#: Exit codes of ``python -m jobs.index`` besides 0, read back by ``index_in_subprocess``: bad input or config
#: (a LatentstoreError), and storage trouble worth a retry (an OSError).
EXIT_BAD_INPUT, EXIT_IO_ERROR = 2, 3


def resolve_input(cfg: IndexConfig, store: StoreLayout) -> IndexConfig:
    """``cfg`` reading a file: a synthetic input is generated into the store's inputs/ first (once; a rerun
    finds the same file), as the index job reads files only."""
    if cfg.input.synthetic is None:
        return cfg
    from jobs.synthetic import materialise

    path = materialise(cfg.input.synthetic, store.inputs)
    return cfg.model_copy(update={"input": cfg.input.model_copy(update={"path": str(path), "synthetic": None})})


def plan_index(cfg: PipelineConfig, store: StoreLayout):
    """The index stage's plan (``jobs.index.job.plan``: the input probed and hashed, its content key the stage's
    id), made once per run so that inputs are hashed once."""
    from jobs.index.job import plan

    return plan(resolve_input(cfg.index, store))


def index(cfg: PipelineConfig, store: StoreLayout, planned=None) -> dict:
    """Index ``cfg`` (``planned``: its ``plan_index`` when already made, so inputs are hashed once)."""
    from jobs.index.job import run

    planned = planned or plan_index(cfg, store)
    result = run(planned.cfg, store, planned)
    return _index_summary(result.manifest, result.reused)


def index_in_subprocess(config_path: str, input_path: str | None, store: StoreLayout) -> dict:
    """The index stage in a fresh Python process, so its Spark session gets this config's settings.

    A long-lived process (``latentstore serve``) keeps the first Spark session it
    starts; a child per run starts its own JVM and exits with it."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "jobs.index", config_path, "--store", str(store.root)]
    if input_path is not None:
        command += ["--input", input_path]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    for line in lines:
        log.info("index subprocess: %s", line)
    if done.returncode != 0:
        # Its own one-line "error: ..." when it has one, else the end of its output (a crash).
        reason = next((line for line in reversed(lines) if line.startswith("error: ")), "\n".join(lines[-15:]))
        error = {EXIT_BAD_INPUT: StoreError, EXIT_IO_ERROR: OSError}.get(done.returncode, RuntimeError)
        raise error(f"the index subprocess exited with {done.returncode}: {reason}")
    summary = json.loads(done.stdout[done.stdout.index("{"):])  # the JSON summary printed last
    return _index_summary(read_manifest(Path(summary["path"])), summary["reused"])


def snapshot(cfg: PipelineConfig, store: StoreLayout, snapshot_id: str | None = None) -> dict:
    """The summary of an existing snapshot (the dataset's latest when None), as ``index`` returns it."""
    _, manifest = _snapshot(cfg, store, snapshot_id)
    return _index_summary(manifest, reused=True)


def _index_summary(manifest, reused: bool) -> dict:
    sessions = manifest.sessions
    return {"snapshot_id": manifest.snapshot_id, "reused": reused, "kind": manifest.kind,
            "counts": manifest.counts.model_dump(),
            "vocab": {k: v.model_dump() for k, v in manifest.vocab.items()},
            "sessions": sessions.model_dump() if sessions else None}


def _snapshot(cfg: PipelineConfig, store: StoreLayout, snapshot_id: str | None):
    snapshot_id = snapshot_id or latest_id(store, cfg.index.dataset)
    if snapshot_id is None:
        raise StoreError(f"no snapshot of dataset {cfg.index.dataset!r} in {store.root}; run the index stage first")
    directory = store.snapshot_dir(cfg.index.dataset, snapshot_id)
    return directory, read_manifest(directory)


def train(cfg: PipelineConfig, store: StoreLayout, model: str | None = None, snapshot_id: str | None = None,
          resume: bool = True, lock_timeout: float | None = None) -> dict:
    """Train ``model`` (the config's only model when None) on a snapshot (the dataset's latest when None);
    wait up to ``lock_timeout`` seconds (None: as long as it trains) for another process training the same run."""
    from jobs.train.job import run

    train_cfg = cfg.model(model)
    directory, manifest = _snapshot(cfg, store, snapshot_id)
    result = run(train_cfg, store, directory, manifest, resume=resume, lock_timeout=lock_timeout)
    return _train_summary(train_cfg, result.run_id, result.result, result.reused)


def finished_run(cfg: PipelineConfig, store: StoreLayout, model: str, snapshot_id: str) -> dict | None:
    """The summary of ``model``'s finished run on a snapshot (trained elsewhere, e.g. by another deployment or
    torchrun), None if it has not finished."""
    from jobs.train.job import RESULT

    train_cfg = cfg.model(model)
    run_id = _finished_run_id(store, snapshot_id, train_cfg)
    path = store.run_dir(run_id) / RESULT
    return _train_summary(train_cfg, run_id, read_json(path), True) if path.is_file() else None


def _train_summary(train_cfg, run_id: str, result: dict, reused: bool) -> dict:
    return {"model": train_cfg.name, "family": train_cfg.model, "run_id": run_id, "snapshot_id": result["snapshot_id"],
            "reused": reused,
            "metrics": {k: v for k, v in result["metrics"].items() if k != "history"},
            "primary_metric": result["primary_metric"], "history": result["metrics"]["history"]}


def publish(cfg: PipelineConfig, store: StoreLayout, model: str | None = None, run_id: str | None = None,
            snapshot_id: str | None = None, force: bool = False) -> dict:
    """Publish ``model``'s finished run (by default the run of its config on the snapshot).

    Raises GateRefused when the quality gate refuses it, unless ``force``."""
    from jobs.publish.job import run
    from jobs.train.job import RESULT

    train_cfg = cfg.model(model)
    directory, manifest = _snapshot(cfg, store, snapshot_id)
    run_id = run_id or _finished_run_id(store, manifest.snapshot_id, train_cfg)
    run_dir = store.run_dir(run_id)
    if not (run_dir / RESULT).is_file():
        raise StoreError(f"training run {run_id} of {train_cfg.name} has not finished in {store.root}; "
                         "run the train stage first")
    result = run(cfg.publish, train_cfg.name, store, run_dir, read_json(run_dir / RESULT), directory, manifest,
                 force=force)
    return {"model": result.model, "version": result.version, "reused": result.reused, "file": str(result.path),
            "entities": result.record["entities"], "gate": result.record.get("gate"),
            "drift": result.record.get("drift"), "retention": result.retention}


def run_id_of(store: StoreLayout, snapshot_id: str, train_cfg) -> str:
    """The id of the run ``train_cfg`` makes on the snapshot (for a fold-in from "current": from the current
    version's run, or that run itself when it trained on this snapshot)."""
    from jobs.train import fold_in
    from jobs.train.job import RESULT, run_id_for

    if train_cfg.warm_start is None:
        return run_id_for(snapshot_id, train_cfg)
    resolved, unchanged = fold_in.resolve(train_cfg, store, snapshot_id, RESULT)
    return unchanged or run_id_for(snapshot_id, resolved)


def _finished_run_id(store: StoreLayout, snapshot_id: str, train_cfg) -> str:
    """The run of ``train_cfg`` on the snapshot: the one-process run when it finished, else the newest finished
    data-parallel one (``torchrun ... -m jobs.train``), else the one-process id (to name in the error)."""
    from jobs.train.job import RESULT, run_id_for

    run_id = run_id_of(store, snapshot_id, train_cfg)
    if (store.run_dir(run_id) / RESULT).is_file():
        return run_id
    results = sorted((store.root / "runs").glob(f"*/{RESULT}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for result in results:
        world = read_json(result).get("runtime", {}).get("world_size", 1)
        if world > 1 and run_id_for(snapshot_id, train_cfg, world) == result.parent.name:
            return result.parent.name
    return run_id


def draw_map(cfg: PipelineConfig, store: StoreLayout, model: str, version: int) -> dict:
    """The 2-D map of ``publish.map`` for one published version, as maps/<model>-vNNNNNN-<entity>.png."""
    from jobs.store.maps import draw_version
    from schemas.store import version_name

    spec = cfg.publish.map
    out = store.root / "maps" / f"{model}-{version_name(version)}-{spec.entity}.png"
    return draw_version(store, model, version, spec.entity, out, labels=spec.labels, key_column=spec.key_column,
                        label_column=spec.label_column, title_column=spec.title_column, method=spec.method,
                        sample=spec.sample, min_count=spec.min_count)
