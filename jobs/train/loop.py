"""The epoch loop every model family shares: validation, early stopping, averaging, checkpoints.

A model family is a *learner* (see ``Learner``): it trains one epoch, evaluates,
and hands out its vectors. The loop around it is the same for all of them. A
checkpoint after every epoch holds everything the next epoch depends on (the
weights, the learner's optimiser state, averaging and early-stopping state), and
learners draw their randomness from (seed, epoch): a resumed run is bitwise equal
to an uninterrupted one on CPU with one thread (with more, torch's summation order
varies between any two runs: see jobs.train.device.configure_threads).

Data-parallel (``jobs.train.distributed``): every rank trains each epoch; rank 0
alone validates, averages, keeps the best weights and checkpoints, then sends
its loop state to the others, so that all stop after the same epoch.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from jobs.common.faults import transient_fault_point
from jobs.train import distributed
from schemas.errors import TrainingDiverged

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metric:
    """The validation metric that early stopping, the registry and the quality gate use."""

    name: str
    direction: str  # "minimize" | "maximize"

    def better(self, value: float, than: float) -> bool:
        return value < than if self.direction == "minimize" else value > than

    @property
    def worst(self) -> float:
        return math.inf if self.direction == "minimize" else -math.inf


@dataclass(frozen=True)
class EntityVectors:
    """What a model publishes for one entity table: rows by dense index of a vocabulary."""

    vocab: str  # the snapshot vocabulary the indices refer to ("user", "item", "token")
    index: np.ndarray  # int32 [n]
    vectors: np.ndarray  # float32 [n, dim]
    bias: np.ndarray | None  # float32 [n], or None when the model has no bias for this table
    space: str  # what the vectors are: compared by cosine within one space only


class Learner(Protocol):
    """One model family: its module, a training epoch, validation and the vectors it publishes."""

    metric: Metric
    module: nn.Module
    train_module: nn.Module  # what training steps call: ``module``, or its DDP wrapper (set by the train job)

    def train_epoch(self, epoch: int) -> dict[str, float]: ...

    def evaluate(self) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def entities(self) -> dict[str, EntityVectors]: ...


@dataclass
class LoopState:
    epochs_done: int = 0
    history: list[dict] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False


@dataclass(frozen=True)
class LoopConfig:
    epochs: int
    patience: int | None = None  # None: no early stopping
    patience_from: int = 0  # epochs up to this one never stop training (e.g. a one-cycle warm-up, whose
    # rising learning rate can worsen validation for a while)
    average_from: float | None = None  # average the weights of epochs after this fraction (None: off)
    restore_best: bool = False  # end on the best epoch's weights (when not averaging)


@dataclass(frozen=True)
class Trainable:
    """What a model family's ``build(cfg, snapshot_dir, manifest, device)`` returns to the train job."""

    learner: Learner
    loop: LoopConfig
    params: dict  # recorded in the run's result and the registry
    description: str  # one line for the log


@dataclass(frozen=True)
class FitResult:
    state: LoopState
    metrics: dict[str, float]  # validation metrics of the final weights
    train_seconds: float


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class EpochLoop:
    def __init__(self, learner: Learner, cfg: LoopConfig, checkpoint: Path | None = None, extra: dict | None = None):
        self.learner = learner
        self.cfg = cfg
        self.checkpoint = checkpoint
        self.extra = extra or {}
        self.state = LoopState()
        self.averaged: dict[str, torch.Tensor] | None = None
        self.averaged_count = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    # -- checkpoints -------------------------------------------------------
    def save_checkpoint(self) -> None:
        if self.checkpoint is None:
            return
        payload = {
            "module": self.learner.module.state_dict(),
            "learner": self.learner.state_dict(),
            "loop": asdict(self.state),
            "averaged": self.averaged,
            "averaged_count": self.averaged_count,
            "best_weights": self.best_weights,
            **self.extra,
        }
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.checkpoint)
        transient_fault_point("train:checkpoint")  # tests: a retry must resume from here

    def load_checkpoint(self, payload: dict) -> None:
        self.learner.module.load_state_dict(payload["module"])
        self.learner.load_state_dict(payload["learner"])
        self.state = LoopState(**payload["loop"])
        self.averaged = payload["averaged"]
        self.averaged_count = payload["averaged_count"]
        self.best_weights = payload["best_weights"]

    # -- loop ----------------------------------------------------------------
    def fit(self, stop_after_epochs: int | None = None) -> FitResult:
        """Train the remaining epochs. ``stop_after_epochs`` ends early (tests simulate a kill)."""
        cfg, metric = self.cfg, self.learner.metric
        average_start = math.floor(cfg.average_from * cfg.epochs) if cfg.average_from is not None else None
        started = time.perf_counter()
        while self.state.epochs_done < cfg.epochs and not self.state.stopped_early:
            epoch = self.state.epochs_done + 1
            tick = time.perf_counter()
            train_metrics = self.learner.train_epoch(epoch)  # summed over the ranks: the same on each
            _check_finite(epoch, train_metrics)
            if distributed.is_main():
                valid_metrics = self.learner.evaluate()
                if average_start is not None and epoch > average_start:
                    self._accumulate_average()
                record = {"epoch": epoch, **train_metrics, **valid_metrics, "seconds": time.perf_counter() - tick}
                self._track(epoch, valid_metrics.get(metric.name))
                self.state.history.append(record)
                self.state.epochs_done = epoch
                log.info("epoch %d/%d  %s  (%.2fs)", epoch, cfg.epochs, _describe(train_metrics, valid_metrics),
                         record["seconds"])
                self.save_checkpoint()
            self.state = distributed.broadcast(self.state)  # rank 0's early stop and best epoch hold for all
            if stop_after_epochs is not None and epoch >= stop_after_epochs:
                break
        seconds = time.perf_counter() - started
        if not distributed.is_main():
            return FitResult(self.state, {}, seconds)  # rank 0 alone finishes and publishes the weights
        self._load_final_weights()
        return FitResult(self.state, self.learner.evaluate(), seconds)

    @property
    def finished(self) -> bool:
        return self.state.epochs_done >= self.cfg.epochs or self.state.stopped_early

    def _accumulate_average(self) -> None:
        weights = _weights(self.learner.module)
        if self.averaged is None:
            self.averaged, self.averaged_count = weights, 1
            return
        self.averaged_count += 1
        for key, value in weights.items():
            self.averaged[key] += (value - self.averaged[key]) / self.averaged_count

    def _track(self, epoch: int, value: float | None) -> None:
        if value is None or math.isnan(value):
            return
        metric = self.learner.metric
        if self.state.best_value is None or metric.better(value, self.state.best_value):
            self.state.best_value, self.state.best_epoch, self.state.bad_epochs = value, epoch, 0
            if self.cfg.restore_best:
                self.best_weights = _weights(self.learner.module)
            return
        if epoch <= self.cfg.patience_from:
            return  # still warming up: a worse epoch here does not count towards stopping
        self.state.bad_epochs += 1
        if self.cfg.patience is not None and self.state.bad_epochs >= self.cfg.patience:
            self.state.stopped_early = True
            log.info("early stop: no %s improvement for %d epochs", metric.name, self.cfg.patience)

    def _load_final_weights(self) -> None:
        """Averaged weights when averaging ran, else the best epoch's when asked, else the last."""
        if self.averaged is not None:
            self.learner.module.load_state_dict(self.averaged)
        elif self.best_weights is not None:
            self.learner.module.load_state_dict(self.best_weights)


def _check_finite(epoch: int, train_metrics: dict[str, float]) -> None:
    """A NaN or infinite training loss means the weights are garbage: stop with a reason, publish nothing."""
    for name, value in train_metrics.items():
        if name.startswith("train_") and not math.isfinite(value):
            raise TrainingDiverged(f"training diverged in epoch {epoch}: {name} is {value}; lower train.lr "
                                   "(the last checkpoint is from the epoch before)")


def _describe(train: dict[str, float], valid: dict[str, float]) -> str:
    parts = [f"{k} {v:.4g}" for k, v in {**train, **valid}.items() if isinstance(v, float | int) and k != "cases"]
    return "  ".join(parts)
