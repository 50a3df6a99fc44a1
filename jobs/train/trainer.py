"""The training loop: epochs, one-cycle AdamW, weight averaging, early stopping, checkpoints.

A checkpoint is written after every epoch and holds everything the next
epoch depends on (weights, optimiser, schedule, averaging, early-stopping
state), and batches are shuffled by (seed, epoch): a resumed run is bitwise
equal to an uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from jobs.train.config import TrainConfig
from jobs.train.data import Interactions
from jobs.train.mf import BiasedMF

log = logging.getLogger(__name__)
_EVAL_BATCH = 1 << 16


@dataclass
class EpochMetrics:
    epoch: int
    train_rmse: float
    valid_rmse: float | None
    lr: float
    seconds: float


@dataclass
class TrainState:
    epochs_done: int = 0
    history: list[dict] = field(default_factory=list)
    best_rmse: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False


@dataclass(frozen=True)
class FitResult:
    model: BiasedMF
    state: TrainState
    valid_rmse: float | None
    train_seconds: float


def rmse(model: BiasedMF, data: Interactions, device: torch.device) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in data.in_order(_EVAL_BATCH):
            batch = batch.to(device)
            err = model(batch.users, batch.items).float() - batch.ratings
            total += float((err * err).sum())
            count += len(batch)
    model.train()
    return math.sqrt(total / count) if count else float("nan")


class Trainer:
    def __init__(
        self,
        model: BiasedMF,
        cfg: TrainConfig,
        train: Interactions,
        valid: Interactions | None,
        device: torch.device,
        checkpoint: Path | None = None,
    ):
        self.model = model.to(device)
        self.cfg = cfg
        self.train_data = train
        self.valid_data = valid if valid is not None and valid.rows else None
        self.device = device
        self.checkpoint = checkpoint
        groups = [
            {"params": model.vector_tables(), "weight_decay": cfg.weight_decay},
            {"params": model.implicit_tables(), "weight_decay": cfg.implicit_weight_decay},
            {"params": model.bias_tables(), "weight_decay": cfg.bias_weight_decay},
        ]
        self.optimizer = torch.optim.AdamW(
            [group for group in groups if group["params"]],
            lr=cfg.lr,
            betas=(0.9, 0.99),
            fused=True,
        )
        self.steps_per_epoch = train.steps_per_epoch(cfg.batch_size)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=cfg.lr, total_steps=max(cfg.epochs * self.steps_per_epoch, 1)
        )
        # Mixed precision on CUDA only; CPU stays float32 (and bitwise reproducible).
        self.amp_dtype = None
        if device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.state = TrainState()
        self.averaged: dict[str, torch.Tensor] | None = None
        self.averaged_count = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    # -- checkpoints -------------------------------------------------------
    def _snapshot(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": asdict(self.state),
            "averaged": self.averaged,
            "averaged_count": self.averaged_count,
            "best_weights": self.best_weights,
            "config": self.cfg.model_dump(mode="json"),
        }

    def save_checkpoint(self, extra: dict) -> None:
        if self.checkpoint is None:
            return
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save({**self._snapshot(), **extra}, tmp)
        os.replace(tmp, self.checkpoint)

    def load_checkpoint(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["schedule"])
        self.scaler.load_state_dict(payload["scaler"])
        self.state = TrainState(**payload["state"])
        self.averaged = payload["averaged"]
        self.averaged_count = payload["averaged_count"]
        self.best_weights = payload["best_weights"]

    # -- loop ----------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _train_epoch(self, epoch: int) -> float:
        total, count = 0.0, 0
        for batch in self.train_data.batches(self.cfg.batch_size, self.cfg.seed, epoch):
            batch = batch.to(self.device)
            with self._autocast():
                loss = torch.nn.functional.mse_loss(self.model(batch.users, batch.items).float(), batch.ratings)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.schedule.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        return math.sqrt(total / max(count, 1))

    def _accumulate_average(self) -> None:
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.averaged is None:
            self.averaged, self.averaged_count = weights, 1
            return
        self.averaged_count += 1
        for key, value in weights.items():
            self.averaged[key] += (value - self.averaged[key]) / self.averaged_count

    def fit(self, stop_after_epochs: int | None = None, checkpoint_extra: dict | None = None) -> FitResult:
        """Train the remaining epochs. ``stop_after_epochs`` ends early (tests simulate a kill)."""
        cfg = self.cfg
        average_start = math.floor(cfg.average_from * cfg.epochs)  # epochs after this are averaged
        started = time.perf_counter()
        while self.state.epochs_done < cfg.epochs and not self.state.stopped_early:
            epoch = self.state.epochs_done + 1
            tick = time.perf_counter()
            train_rmse = self._train_epoch(epoch)
            valid = rmse(self.model, self.valid_data, self.device) if self.valid_data else None
            if epoch > average_start and cfg.average_from < 1:
                self._accumulate_average()
            metrics = EpochMetrics(epoch, train_rmse, valid, self.schedule.get_last_lr()[0], time.perf_counter() - tick)
            self._track(metrics)
            self.state.epochs_done = epoch
            log.info(
                "epoch %d/%d  train_rmse %.4f  valid_rmse %s  (%.2fs)",
                epoch, cfg.epochs, train_rmse, f"{valid:.4f}" if valid is not None else "n/a", metrics.seconds,
            )
            self.save_checkpoint(checkpoint_extra or {})
            if stop_after_epochs is not None and epoch >= stop_after_epochs:
                break
        seconds = time.perf_counter() - started
        self._load_final_weights()
        final = rmse(self.model, self.valid_data, self.device) if self.valid_data else None
        return FitResult(self.model, self.state, final, seconds)

    def _track(self, metrics: EpochMetrics) -> None:
        self.state.history.append(asdict(metrics))
        if metrics.valid_rmse is None:
            return
        if metrics.valid_rmse < self.state.best_rmse:
            self.state.best_rmse, self.state.best_epoch, self.state.bad_epochs = metrics.valid_rmse, metrics.epoch, 0
            if self.cfg.average_from >= 1:
                self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.state.bad_epochs += 1
            if self.state.bad_epochs >= self.cfg.patience:
                self.state.stopped_early = True
                log.info("early stop: no improvement for %d epochs", self.cfg.patience)

    def _load_final_weights(self) -> None:
        """Averaged weights when averaging ran, else the best epoch's, else the last."""
        if self.averaged is not None:
            self.model.load_state_dict(self.averaged)
        elif self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
