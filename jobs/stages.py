"""The three stages as plain functions over a PipelineConfig: what flows and the CLI call.

Each returns a small JSON-able summary so that it can cross a Prefect task
boundary; the heavy artifacts stay in the store.
"""

from __future__ import annotations

from jobs.common.files import read_json
from jobs.config import PipelineConfig
from jobs.index.snapshots import latest_id, read_manifest
from schemas.errors import StoreError
from schemas.store import StoreLayout


def index(cfg: PipelineConfig, store: StoreLayout) -> dict:
    from jobs.index.job import run

    result = run(cfg.index, store)
    sessions = result.manifest.sessions
    return {"snapshot_id": result.snapshot_id, "reused": result.reused, "kind": result.manifest.kind,
            "counts": result.manifest.counts.model_dump(),
            "vocab": {k: v.model_dump() for k, v in result.manifest.vocab.items()},
            "sessions": sessions.model_dump() if sessions else None}


def _snapshot(cfg: PipelineConfig, store: StoreLayout, snapshot_id: str | None):
    snapshot_id = snapshot_id or latest_id(store, cfg.index.dataset)
    if snapshot_id is None:
        raise StoreError(f"no snapshot of dataset {cfg.index.dataset!r} in {store.root}; run the index stage first")
    directory = store.snapshot_dir(cfg.index.dataset, snapshot_id)
    return directory, read_manifest(directory)


def train(cfg: PipelineConfig, store: StoreLayout, model: str | None = None, snapshot_id: str | None = None,
          resume: bool = True) -> dict:
    """Train ``model`` (the config's only model when None) on a snapshot (the dataset's latest when None)."""
    from jobs.train.job import run

    train_cfg = cfg.model(model)
    directory, manifest = _snapshot(cfg, store, snapshot_id)
    result = run(train_cfg, store, directory, manifest, resume=resume)
    return {"model": train_cfg.name, "family": train_cfg.model, "run_id": result.run_id, "snapshot_id": manifest.snapshot_id,
            "reused": result.reused,
            "metrics": {k: v for k, v in result.result["metrics"].items() if k != "history"},
            "primary_metric": result.result["primary_metric"], "history": result.result["metrics"]["history"]}


def publish(cfg: PipelineConfig, store: StoreLayout, model: str | None = None, run_id: str | None = None,
            snapshot_id: str | None = None, force: bool = False) -> dict:
    """Publish ``model``'s finished run (by default the run of its config on the snapshot).

    Raises GateRefused when the quality gate refuses it, unless ``force``."""
    from jobs.publish.job import run
    from jobs.train.job import RESULT, run_id_for

    train_cfg = cfg.model(model)
    directory, manifest = _snapshot(cfg, store, snapshot_id)
    run_id = run_id or run_id_for(manifest.snapshot_id, train_cfg)
    run_dir = store.run_dir(run_id)
    if not (run_dir / RESULT).is_file():
        raise StoreError(f"training run {run_id} of {train_cfg.name} has not finished in {store.root}; "
                         "run the train stage first")
    result = run(cfg.publish, train_cfg.name, store, run_dir, read_json(run_dir / RESULT), directory, manifest,
                 force=force)
    return {"model": result.model, "version": result.version, "reused": result.reused, "file": str(result.path),
            "entities": result.record["entities"], "gate": result.record.get("gate"),
            "drift": result.record.get("drift"), "retention": result.retention}


def draw_map(cfg: PipelineConfig, store: StoreLayout, model: str, version: int) -> dict:
    """The 2-D map of ``publish.map`` for one published version, as maps/<model>-vNNNNNN-<entity>.png."""
    from latentstore.plot import draw
    from latentstore.store import open_store
    from schemas.store import version_name

    spec = cfg.publish.map
    out = store.root / "maps" / f"{model}-{version_name(version)}-{spec.entity}.png"
    with open_store(store.root, versions={model: version}) as opened:
        return draw(opened, model, spec.entity, out, spec.labels, spec.key_column, spec.label_column,
                    spec.title_column, spec.method, spec.sample, min_count=spec.min_count)
