"""The train stage: a snapshot in, vectors per entity (index -> vector, bias) out.

    runs/<run_id>/
      checkpoint.pt          after every epoch (resume point)
      vectors/<entity>.parquet  index int32, vector fixed_size_list<float32>[dim], bias float32
      result.json            written last: params, metrics per epoch, provenance

``run_id`` hashes the snapshot id, the training config and the code version,
so a finished run is never repeated and a killed one can resume.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jobs.common.files import atomic_write_json, read_json
from jobs.common.hashing import stable_hash
from jobs.common.version import code_version
from jobs.train.config import TrainConfig
from schemas.snapshot import Manifest, interactions_dir
from schemas.store import StoreLayout

log = logging.getLogger(__name__)
RESULT = "result.json"
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    path: Path
    result: dict
    reused: bool


def run_id_for(snapshot_id: str, cfg: TrainConfig) -> str:
    return stable_hash({"snapshot": snapshot_id, "train": cfg.model_dump(mode="json"), "code": code_version()}, 16)


def y_range_for(cfg: TrainConfig, manifest: Manifest) -> tuple[float, float]:
    if cfg.y_range is not None:
        return cfg.y_range
    low, high = manifest.rating_range
    return (low - 0.5, high + 0.5)


def build_model(cfg: TrainConfig, train, sizes: dict[str, int], y_range: tuple[float, float], device):
    """The seeded, initialised model for ``cfg`` (with its implicit-feedback matrix from ``train``)."""
    import torch

    from jobs.train.implicit import ImplicitFeedback
    from jobs.train.mf import BiasedMF

    implicit = ImplicitFeedback(*train.pairs(), sizes["user"], sizes["item"], device) if cfg.implicit else None
    model = BiasedMF(sizes["user"], sizes["item"], cfg.dim, y_range, implicit)
    model.reset_parameters(torch.Generator().manual_seed(cfg.seed), cfg.init_std)
    return model


def run(
    cfg: TrainConfig,
    store: StoreLayout,
    snapshot_dir: Path,
    manifest: Manifest,
    resume: bool = True,
    stop_after_epochs: int | None = None,
) -> TrainResult:
    """Train (or return the finished run). ``resume`` continues from the last checkpoint."""
    run_id = run_id_for(manifest.snapshot_id, cfg)
    out = store.run_dir(run_id)
    if (out / RESULT).is_file():
        log.info("run %s already finished: reusing its vectors", run_id)
        return TrainResult(run_id, out, read_json(out / RESULT), True)

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from jobs.train.data import Interactions
    from jobs.train.device import configure_threads, resolve_device
    from jobs.train.trainer import Trainer

    device = resolve_device(cfg.device)
    threads = configure_threads(cfg.threads)
    train = Interactions.from_dir(snapshot_dir / interactions_dir("train"), cfg.shuffle_buffer_rows)
    valid = Interactions.from_dir(snapshot_dir / interactions_dir("valid"), cfg.shuffle_buffer_rows)
    sizes = {entity: stats.size for entity, stats in manifest.vocab.items()}
    y_range = y_range_for(cfg, manifest)
    model = build_model(cfg, train, sizes, y_range, device)

    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT
    trainer = Trainer(model, cfg, train, valid, device, checkpoint)
    if checkpoint.is_file() and resume:
        trainer.load_checkpoint(torch.load(checkpoint, map_location=device, weights_only=False))
        log.info("resuming run %s after epoch %d", run_id, trainer.state.epochs_done)
    log.info(
        "training %s on %s (%d threads): %d users x %d items, dim %d, %d train / %d valid ratings",
        cfg.model, device, threads, sizes["user"], sizes["item"], cfg.dim, train.rows, valid.rows,
    )
    fit = trainer.fit(stop_after_epochs=stop_after_epochs, checkpoint_extra={"run_id": run_id, "sizes": sizes})
    if stop_after_epochs is not None and fit.state.epochs_done < cfg.epochs and not fit.state.stopped_early:
        return TrainResult(run_id, out, {"partial": True, "epochs_done": fit.state.epochs_done}, False)

    vectors_dir = out / "vectors"
    vectors_dir.mkdir(exist_ok=True)
    entities = {}
    for entity, (vectors, biases) in fit.model.entities().items():
        matrix = vectors.float().cpu().numpy()
        table = pa.table(
            {
                "index": pa.array(np.arange(matrix.shape[0], dtype=np.int32)),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1]),
                "bias": pa.array(biases.float().cpu().numpy()),
            }
        )
        tmp = vectors_dir / f".{entity}.parquet.tmp"
        pq.write_table(table, tmp)
        tmp.replace(vectors_dir / f"{entity}.parquet")
        entities[entity] = {"rows": matrix.shape[0], "dim": matrix.shape[1]}

    result = {
        "run_id": run_id,
        "model": cfg.model,
        "snapshot_id": manifest.snapshot_id,
        "dataset": manifest.dataset,
        "config": cfg.model_dump(mode="json"),
        "params": {"dim": cfg.dim, "y_range": list(y_range), "sizes": sizes},
        "entities": entities,
        "metrics": {
            "valid_rmse": fit.valid_rmse,
            "best_epoch_rmse": fit.state.best_rmse if fit.state.best_epoch else None,
            "epochs_run": fit.state.epochs_done,
            "stopped_early": fit.state.stopped_early,
            "train_seconds": fit.train_seconds,
            "history": fit.state.history,
        },
        "primary_metric": {"name": "valid_rmse", "value": fit.valid_rmse, "direction": "minimize"},
        "runtime": {
            "device": str(device),
            "threads": threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "code_version": code_version(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_json(out / RESULT, result)
    log.info("run %s: valid_rmse %s after %d epochs", run_id, fit.valid_rmse, fit.state.epochs_done)
    return TrainResult(run_id, out, result, False)
