"""Completion markers: each stage's id and whether its output is on disk.

The store is the source of truth for what is done, not Prefect's result cache:

    index    id = dataset + content key       done = a snapshot with that key exists
    train    id = the run id                  done = runs/<run_id>/result.json exists
    publish  id = model + run id              done = the model's current version came from that run

The flow uses a stage's id as its task's cache key, and refreshes the cache when
the output is gone (a deleted snapshot or run is recomputed, never "cached").
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.config import PipelineConfig
from schemas.store import StoreLayout


@dataclass(frozen=True)
class StageMarker:
    stage: str
    id: str
    done: bool
    store: str

    @property
    def cache_key(self) -> str:
        """Unique per store: two stores indexing the same input are two different outputs."""
        from jobs.common.hashing import stable_hash

        return f"latentstore-{self.stage}-{stable_hash([self.store, self.id], 24)}"


def index_marker(cfg: PipelineConfig, store: StoreLayout, planned) -> StageMarker:
    """``planned``: the index stage's plan (jobs.stages.plan_index; its content key is the stage id)."""
    from jobs.index.snapshots import find_by_content

    dataset = cfg.index.dataset
    key = planned.content_key
    # The dataset is part of the id: two datasets of one store may index the same input.
    return StageMarker("index", f"{dataset}/{key}", find_by_content(store, dataset, key) is not None,
                       str(store.root))


def train_marker(cfg: PipelineConfig, store: StoreLayout, model: str, snapshot_id: str) -> StageMarker:
    from jobs.stages import run_id_of
    from jobs.train.job import RESULT

    run_id = run_id_of(store, snapshot_id, cfg.model(model))
    return StageMarker("train", run_id, (store.run_dir(run_id) / RESULT).is_file(), str(store.root))


def publish_marker(store: StoreLayout, model: str, run_id: str) -> StageMarker:
    from jobs.store.registry import current_record_of_run

    record = current_record_of_run(store, model, run_id) if store.root.is_dir() else None
    done = record is not None and (store.root / record["file"]).is_file()
    return StageMarker("publish", f"{model}/{run_id}", done, str(store.root))
