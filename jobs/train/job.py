"""The train stage: a snapshot in, vectors per entity (index -> vector, bias) out.

    runs/<run_id>/
      checkpoint.pt          after every epoch (resume point)
      vectors/<table>.parquet   index int32, vector fixed_size_list<float32>[dim], bias float32 (nullable)
      weights.pt             the final weights (tensors only): what a fold-in starts from (jobs.train.fold_in)
      result.json            written last: params, metrics per epoch, provenance, and per table the
                             vocabulary its indices refer to and the space its vectors live in

Each model family (``mf``, ``skipgram``, ``gru``) is a module with ``build(cfg,
snapshot_dir, manifest, device) -> Trainable``: its learner, loop settings and params.

``run_id`` hashes the snapshot id, the training config and the code version
(and the number of processes when several train together under ``torchrun``:
see ``jobs.train.distributed``), so a finished run is never repeated and a
killed one can resume.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.common.files import atomic_write_json, read_json
from jobs.common.hashing import stable_hash
from jobs.common.locks import exclusive
from jobs.common.version import code_version
from jobs.train.config import RATINGS_MODELS, TrainConfig

if TYPE_CHECKING:
    from jobs.train.fold_in import WarmStart
from schemas.errors import ConfigError, StoreError
from schemas.snapshot import Manifest
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


def run_id_for(snapshot_id: str, cfg: TrainConfig, world_size: int = 1) -> str:
    """Hash of what decides the vectors: the snapshot, the training config (not the published name), the code,
    and the number of data-parallel processes when more than one (one-process ids stay as they were)."""
    params = cfg.model_dump(mode="json", exclude={"name"})
    decided = {"snapshot": snapshot_id, "train": params, "code": code_version()}
    if world_size > 1:
        decided["world_size"] = world_size
    return stable_hash(decided, 16)


def check_data_parallel(cfg: TrainConfig, world_size: int) -> None:
    """Refuse a model family that cannot train in several processes, before any process group forms."""
    if world_size > 1 and not _family_module(cfg.model).DATA_PARALLEL:
        raise ConfigError(f"train.model = {cfg.model!r} ({cfg.name}) cannot train data-parallel ({world_size} "
                          "processes): its updates bypass autograd, so DDP cannot average them; run it with one "
                          "process (python -m jobs.train, without torchrun)")


def run(
    cfg: TrainConfig,
    store: StoreLayout,
    snapshot_dir: Path,
    manifest: Manifest,
    resume: bool = True,
    stop_after_epochs: int | None = None,
    lock_timeout: float | None = None,
) -> TrainResult:
    """Train (or return the finished run). ``resume`` continues from the last checkpoint.

    One trainer per run id: a second process training the same run waits (up to
    ``lock_timeout`` seconds; None: as long as the first trains) and then reuses its
    result, so a finished run is never rewritten. Under ``torchrun`` every rank calls
    this: all train, rank 0 alone checkpoints and writes the run, and every rank
    returns its result (the launcher is the one trainer: ranks take no lock)."""
    from jobs.train import distributed, fold_in  # torch: imported when a run trains

    world = distributed.launched_world_size()
    check_data_parallel(cfg, world)
    if cfg.warm_start is not None:
        if world > 1:
            raise ConfigError(f"train.warm_start ({cfg.name}): a fold-in trains in one process, not {world}")
        cfg, unchanged = fold_in.resolve(cfg, store, manifest.snapshot_id, RESULT)  # "current" -> a run id
        if unchanged is not None:
            log.info("%s: run %s already trained on snapshot %s: nothing to fold in", cfg.name, unchanged,
                     manifest.snapshot_id)
            return _reuse(unchanged, store.run_dir(unchanged))
    run_id = run_id_for(manifest.snapshot_id, cfg, world)
    out = store.run_dir(run_id)
    if (out / RESULT).is_file():
        return _reuse(run_id, out)
    _check_kind(cfg, manifest)
    warm = fold_in.load(cfg, store, manifest, RESULT) if cfg.warm_start is not None else None
    if world > 1:
        return _train(cfg, snapshot_dir, manifest, run_id, out, world, resume, stop_after_epochs)
    with exclusive(store.run_lock(run_id), lock_timeout, f"training run {run_id}"):
        if (out / RESULT).is_file():  # another trainer finished it while this one waited
            return _reuse(run_id, out)
        return _train(cfg, snapshot_dir, manifest, run_id, out, world, resume, stop_after_epochs, warm)


def _load_checkpoint(path: Path, device) -> dict:
    """A checkpoint holds tensors and plain data only: loading it never unpickles an object (which could run
    code), and a file that needs to is refused, naming it."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        raise StoreError(f"{path} is not a checkpoint of tensors and plain data ({str(error).splitlines()[0]}); "
                         "delete it, or train with --no-resume") from None


def _reuse(run_id: str, out: Path) -> TrainResult:
    log.info("run %s already finished: reusing its vectors", run_id)
    return TrainResult(run_id, out, read_json(out / RESULT), True)


def _train(cfg: TrainConfig, snapshot_dir: Path, manifest: Manifest, run_id: str, out: Path, world: int,
           resume: bool, stop_after_epochs: int | None, warm: WarmStart | None = None) -> TrainResult:
    from jobs.train import distributed, fold_in

    import torch

    from jobs.train.device import configure_threads, resolve_device
    from jobs.train.loop import EpochLoop

    device = distributed.init(resolve_device(cfg.device))
    threads = configure_threads(cfg.threads, processes=int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    trainable = _family_module(cfg.model).build(cfg, snapshot_dir, manifest, device, warm)
    parent_metric = None
    if warm is not None:  # the parent's weights first: a checkpoint of this run, if any, comes after them
        frozen = fold_in.apply(trainable.learner.module, warm)
        if frozen is not None:
            trainable.learner.after_step = frozen.restore
        # the parent scored on this snapshot's validation set: what the gate compares the fold-in with
        parent_metric = trainable.learner.evaluate().get(trainable.learner.metric.name)
    checkpoint = out / CHECKPOINT
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
    loop = EpochLoop(trainable.learner, trainable.loop, checkpoint if distributed.is_main() else None,
                     extra={"run_id": run_id, "config": cfg.model_dump(mode="json"), "params": trainable.params})
    # rank 0 decides; every rank then reads the same file (they share the store: they read its snapshot too)
    if distributed.broadcast(checkpoint.is_file() and resume):
        payload = _load_checkpoint(checkpoint, device)
        if payload.get("params") == trainable.params:
            loop.load_checkpoint(payload)
            log.info("resuming run %s after epoch %d", run_id, loop.state.epochs_done)
        else:  # e.g. a batch size chosen for another device: its schedule cannot continue here
            log.warning("run %s: the checkpoint was made with other settings (%s, now %s); starting over",
                        run_id, payload.get("params"), trainable.params)
    trainable.learner.train_module = distributed.wrap(trainable.learner.module, device)
    log.info("training %s %s on %s (%d threads%s): %s", cfg.model, cfg.name, device, threads,
             f", rank {distributed.rank()} of {world}" if world > 1 else "", trainable.description)
    fit = loop.fit(stop_after_epochs=stop_after_epochs)
    if not loop.finished:
        return TrainResult(run_id, out, {"partial": True, "epochs_done": fit.state.epochs_done}, False)
    if not distributed.is_main():
        return TrainResult(run_id, out, distributed.broadcast(None), False)  # once rank 0 has written the run

    entities = _write_vectors(out / "vectors", trainable.learner.entities())
    fold_in.save_final_weights(trainable.learner.module, out)  # what a later fold-in starts from
    metric = trainable.learner.metric
    result = {
        "run_id": run_id,
        "model": cfg.model,
        "snapshot_id": manifest.snapshot_id,
        "dataset": manifest.dataset,
        "config": cfg.model_dump(mode="json"),
        "params": trainable.params,
        "fold_in": {**warm.record(trainable.params["sizes"]), "parent_metric": parent_metric} if warm else None,
        "entities": entities,
        "metrics": {
            **fit.metrics,
            "best_epoch": fit.state.best_epoch or None,
            f"best_epoch_{metric.name}": fit.state.best_value,
            "epochs_run": fit.state.epochs_done,
            "stopped_early": fit.state.stopped_early,
            "train_seconds": fit.train_seconds,
            "history": fit.state.history,
        },
        "primary_metric": {"name": metric.name, "value": fit.metrics.get(metric.name), "direction": metric.direction},
        "runtime": {
            "device": str(device),
            "threads": threads,
            "world_size": world,
            "backend": distributed.backend(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "code_version": code_version(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_json(out / RESULT, result)
    distributed.broadcast(result)  # releases the other ranks
    log.info("run %s: %s %s after %d epochs", run_id, metric.name, fit.metrics.get(metric.name), fit.state.epochs_done)
    return TrainResult(run_id, out, result, False)


def _family_module(model: str):
    """The module that builds a learner for a model family (imported lazily: it pulls in torch). Plain
    imports, not importlib: tests/test_boundaries.py sees every one."""
    if model == "mf":
        from jobs.train import mf as family
    elif model == "skipgram":
        from jobs.train import skipgram as family
    elif model == "gru":
        from jobs.train import gru as family
    else:
        raise ValueError(f"no model family {model!r}")
    return family


def _check_kind(cfg: TrainConfig, manifest: Manifest) -> None:
    wanted = "ratings" if cfg.model in RATINGS_MODELS else "events"
    if manifest.kind != wanted:
        raise ConfigError(f"train.model = {cfg.model!r} needs a {wanted} snapshot, but snapshot "
                          f"{manifest.snapshot_id} of {manifest.dataset!r} holds {manifest.kind}")


def _write_vectors(directory: Path, entities: dict) -> dict[str, dict]:
    """One Parquet file per entity table: index int32, vector fixed_size_list<float32>[dim], bias float32 (nullable)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(exist_ok=True)
    described = {}
    for name, entity in entities.items():
        rows, dim = entity.vectors.shape
        bias = pa.nulls(rows, pa.float32()) if entity.bias is None else pa.array(entity.bias, pa.float32())
        table = pa.table({
            "index": pa.array(entity.index, pa.int32()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(entity.vectors.reshape(-1), pa.float32()), dim),
            "bias": bias,
        })
        tmp = directory / f".{name}.parquet.tmp"
        pq.write_table(table, tmp)
        tmp.replace(directory / f"{name}.parquet")
        described[name] = {"rows": rows, "dim": dim, "vocab": entity.vocab, "space": entity.space,
                           "bias": entity.bias is not None}
    return described
