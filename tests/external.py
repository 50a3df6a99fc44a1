"""Test and benchmark support: publish vectors made by hand (a test) or elsewhere (a benchmark) through the real
publish job.

Each table is given as keys, a [rows, dim] matrix and optional counts; a minimal
snapshot (the vocabularies) and training run (the vectors) are written to a work
folder, and the publish job does the rest: version file, indexes, gate, drift,
registry, pointer, retention. ``validation_set`` stands for a snapshot's content key:
the quality gate compares metrics only between versions with the same one.

It lives with the tests, not in jobs/, because no stage of the product uses it;
tests.helpers.publish_vectors and benchmarks/query.py do.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.publish.config import PublishConfig
from jobs.publish.job import PublishResult, run
from schemas.snapshot import Counts, Manifest, VocabStats, vocab_dir
from schemas.store import StoreLayout


@dataclass(frozen=True)
class Vectors:
    keys: list[str]
    matrix: np.ndarray  # [rows, dim]
    counts: np.ndarray | None = None  # occurrences per key (default 1)


@dataclass(frozen=True)
class Prepared:
    """A snapshot and a finished run, as the publish job reads them."""

    snapshot: Path
    run_dir: Path
    result: dict
    manifest: Manifest


def publish_external(store: StoreLayout, model: str, tables: dict[str, Vectors], work: Path,
                     cfg: PublishConfig = PublishConfig(), metric: float | None = None,
                     metric_name: str = "external", direction: str = "maximize", validation_set: str = "external",
                     force: bool = False) -> PublishResult:
    prepared = prepare(tables, work, model, metric, metric_name, direction, validation_set)
    return run(cfg, model, store, prepared.run_dir, prepared.result, prepared.snapshot, prepared.manifest, force=force)


def prepare(tables: dict[str, Vectors], work: Path, model: str, metric: float | None = None,
            metric_name: str = "external", direction: str = "maximize", validation_set: str = "external") -> Prepared:
    """Write the vocabularies and vectors where a training run would have left them."""
    snapshot, run_dir = work / "snapshot", work / "run"
    entities, vocab = {}, {}
    for entity, table in tables.items():
        rows, dim = table.matrix.shape
        counts = table.counts if table.counts is not None else np.ones(rows, np.int64)
        index = pa.array(np.arange(1, rows + 1, dtype=np.int32))
        (snapshot / vocab_dir(entity)).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"key": pa.array(table.keys, pa.string()), "index": index,
                                 "count": pa.array(counts, pa.int64())}), snapshot / vocab_dir(entity) / "part-0.parquet")
        (run_dir / "vectors").mkdir(parents=True, exist_ok=True)
        flat = pa.array(np.ascontiguousarray(table.matrix, dtype=np.float32).reshape(-1))
        pq.write_table(pa.table({"index": index, "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
                                 "bias": pa.nulls(rows, pa.float32())}), run_dir / "vectors" / f"{entity}.parquet")
        entities[entity] = {"rows": rows, "dim": dim, "vocab": entity, "space": "external", "bias": False}
        vocab[entity] = VocabStats(size=rows + 1, keys=rows, new_keys=rows, rare_keys=0)
    result = {"run_id": uuid.uuid4().hex[:16], "model": "external", "config": {},
              "params": {"dim": max(e["dim"] for e in entities.values())}, "entities": entities,
              "metrics": {metric_name: metric}, "primary_metric": {"name": metric_name, "value": metric,
                                                                   "direction": direction},
              "code_version": "external", "runtime": {}}
    zero = Counts(read=0, kept=0, quarantined=0, duplicates=0, superseded=0, quarantine_reasons={}, train=0, valid=0)
    manifest = Manifest(snapshot_id=uuid.uuid4().hex[:16], content_key=validation_set, dataset=model, kind="external",
                        parent=None, created_at=datetime.now(UTC).isoformat(), input_format="arrays",
                        input_files=[], input_fingerprint="external", data_config={}, counts=zero, vocab=vocab,
                        rating_range=None, split={}, code_version="external", spark={})
    return Prepared(snapshot, run_dir, result, manifest)
