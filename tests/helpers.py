"""Test helpers: configs for small data and a one-call store builder (no Prefect)."""

from __future__ import annotations

import csv
from pathlib import Path

from jobs import stages
from jobs.common.config import validate
from jobs.config import PipelineConfig
from schemas.store import StoreLayout

SMALL_SYNTHETIC = {"users": 200, "items": 80, "clusters": 4, "ratings_per_user": 20, "noise": 0.3, "seed": 7}
#: A small event log: 4 segments, 16 page views, 8 scroll depths, 8 searches, 16 items (64 tokens).
SMALL_EVENTS = {"users": 300, "segments": 4, "page_types": 4, "portals": 4, "search_categories": 8, "items": 16,
                "sessions_per_user": 5, "events_per_session": 8, "seed": 11}


def pipeline_config(base: Path, name: str = "demo", input_path: str | None = None, hnsw_min_rows: int = 100_000,
                    train: dict | None = None, index: dict | None = None, columns: dict | None = None,
                    publish: dict | None = None) -> PipelineConfig:
    source = {"path": input_path} if input_path else {"synthetic": SMALL_SYNTHETIC}
    if columns is not None:
        source["columns"] = columns
    data = {
        "name": name,
        "index": {"input": source, "spark": {"master": "local[2]"}, **(index or {})},
        "train": {"dim": 8, "epochs": 3, "batch_size": 256, "lr": 0.02, "threads": 1, **(train or {})},
        "publish": {"hnsw_min_rows": hnsw_min_rows, **(publish or {})},
    }
    return validate(PipelineConfig, data, "test", base_dir=base)


def events_config(base: Path, input_path: str | None = None, name: str = "events", synthetic: dict | None = None,
                  templates: dict | None = None, events: dict | None = None, train: list[dict] | None = None,
                  hnsw_min_rows: int = 100_000) -> PipelineConfig:
    """An events pipeline: the synthetic log's own templates by default, else a CSV at ``input_path``."""
    from jobs.synthetic.events import BUCKETS, COLUMNS, TEMPLATES

    source = {"path": input_path} if input_path else {"synthetic": synthetic or SMALL_EVENTS}
    source["columns"] = COLUMNS
    data = {
        "name": name,
        "index": {"kind": "events", "input": source, "spark": {"master": "local[2]"},
                  "events": {"templates": templates or TEMPLATES, "buckets": BUCKETS, **(events or {})}},
        "train": train or [{"model": "skipgram", "epochs": 2, "threads": 1},
                           {"model": "gru", "epochs": 2, "threads": 1, "dim": 16, "hidden": 32}],
        "publish": {"hnsw_min_rows": hnsw_min_rows},
    }
    return validate(PipelineConfig, data, "test", base_dir=base)


def build_store(cfg: PipelineConfig, store: Path) -> dict:
    layout = StoreLayout(store)
    indexed = stages.index(cfg, layout)
    trained = stages.train(cfg, layout, snapshot_id=indexed["snapshot_id"])
    published = stages.publish(cfg, layout, run_id=trained["run_id"], snapshot_id=indexed["snapshot_id"])
    return {"index": indexed, "train": trained, "publish": published}


def index_snapshot(cfg: PipelineConfig, store: Path):
    """Index ``cfg`` into ``store``; return (snapshot directory, manifest)."""
    from jobs.index.snapshots import read_manifest

    layout = StoreLayout(store)
    indexed = stages.index(cfg, layout)
    directory = layout.snapshot_dir(cfg.index.dataset, indexed["snapshot_id"])
    return directory, read_manifest(directory)


def build_models(cfg: PipelineConfig, store: Path) -> dict:
    """Index once, then train and publish every model of ``cfg`` (the flow's work, without Prefect)."""
    layout = StoreLayout(store)
    indexed = stages.index(cfg, layout)
    models = {}
    for model in cfg.model_names():
        trained = stages.train(cfg, layout, model=model, snapshot_id=indexed["snapshot_id"])
        published = stages.publish(cfg, layout, model=model, run_id=trained["run_id"],
                                   snapshot_id=indexed["snapshot_id"])
        models[model] = {"train": trained, "publish": published}
    return {"index": indexed, "models": models}


def write_csv(path: Path, header: list[str] | None, rows: list[list[object]], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def read_parquet_dir(path: Path):
    import pyarrow.dataset as ds

    return ds.dataset(str(path), format="parquet").to_table().to_pandas()


def publish_vectors(store: Path, model: str, tables: dict[str, dict[str, list[float]]], metric: float | None = 1.0,
                    metric_name: str = "valid_rmse", direction: str = "minimize", validation_set: str = "set-1",
                    counts: dict[str, int] | None = None, publish: dict | None = None, force: bool = False):
    """Publish hand-made vectors (entity -> {key: vector}) as the next version of ``model`` (real publish job)."""
    import uuid

    import numpy as np

    from jobs.publish.config import PublishConfig
    from tests.external import Vectors, publish_external

    arrays = {entity: Vectors(list(v), np.array(list(v.values()), np.float32),
                              np.array([(counts or {}).get(k, 1) for k in v], np.int64))
              for entity, v in tables.items()}
    cfg = PublishConfig(**{"retention_grace_seconds": 0, **(publish or {})})
    return publish_external(StoreLayout(store), model, arrays, store.parent / "handmade" / uuid.uuid4().hex[:12], cfg,
                            metric, metric_name, direction, validation_set, force)


def small_ratings_toml(name: str, master: str = "local[2]", train: str = "") -> str:
    """A config file's text: small synthetic ratings, a 2-epoch ``mf`` of dim 8 (``train`` adds [train] lines)."""
    return f"""
name = "{name}"
[index.input.synthetic]
users = 120
items = 50
clusters = 3
ratings_per_user = 12
seed = 4
[index.spark]
master = "{master}"
[train]
dim = 8
epochs = 2
threads = 1
{train}
"""


def clicks_toml(dirty: float | None = None) -> str:
    """A config file's data part: a small synthetic event log named ``clicks`` (add [index.spark] and [train])."""
    defects = "" if dirty is None else f"dirty = {dirty}\n"
    return f"""
name = "clicks"
[index]
kind = "events"
[index.input]
columns = {{ user = "user_id", timestamp = "ts", type = "event" }}
[index.input.synthetic]
users = 120
segments = 3
page_types = 3
portals = 2
search_categories = 3
items = 6
{defects}seed = 5
[index.events]
templates = {{ page_view = "{{type}}:{{page_type}}:{{portal}}", scroll = "{{type}}:{{pixels}}", "*" = "{{type}}" }}
buckets = {{ pixels = {{ log_start = 250, unit = "px" }} }}
"""


def wait_for_stderr(process, text: str, timeout: float = 120) -> str:
    """Read a running process's stderr until ``text`` shows up; returns what was read (fails if it exits first)."""
    import time

    seen, deadline = "", time.monotonic() + timeout
    while text not in seen:
        line = process.stderr.readline()
        assert line or process.poll() is None, f"exited {process.returncode} before {text!r}: {seen}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout}s: {seen}"
        seen += line
    return seen
