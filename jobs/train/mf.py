"""Biased matrix factorisation (fast.ai's EmbeddingDotBias), optionally with implicit feedback.

    rating ~ low + (high - low) * sigmoid(user . item + user_bias + item_bias)

With ``implicit`` the user vector is ``p_u + |N(u)|^-1/2 sum_j y_j`` (SVD++);
the published user vector is that sum, so ``user . item + biases`` still
scores a user and an item.

Data-parallel: each rank trains on its rows of every batch (``jobs.train.distributed``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jobs.train import distributed
from jobs.train.config import MFConfig
from jobs.train.data import Interactions
from jobs.train.implicit import ImplicitFeedback
from jobs.train.loop import Built, EntityVectors, LoopConfig, Metric
from jobs.train.precision import Precision
from jobs.train.progress import Progress
from schemas.snapshot import Manifest, interactions_dir

_EVAL_BATCH = 1 << 16
#: Trains under torchrun with several processes (see jobs.train.distributed).
DATA_PARALLEL = True


class BiasedMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int, y_range: tuple[float, float],
                 implicit: ImplicitFeedback | None = None):
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.implicit = implicit
        self.item_implicit = nn.Embedding(n_items, dim) if implicit is not None else None
        self.low, self.high = y_range

    def reset_parameters(self, generator: torch.Generator, std: float) -> None:
        with torch.no_grad():
            for table in self.vector_tables() + self.implicit_tables() + self.bias_tables():
                table.normal_(0.0, std, generator=generator)

    def user_vectors(self, users: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors of ``users`` (all users when None), implicit term included."""
        if self.implicit is None:
            return self.user.weight if users is None else self.user(users)
        every = self.user.weight + self.implicit.user_terms(self.item_implicit.weight).to(self.user.weight.dtype)
        return every if users is None else every[users]

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        score = (self.user_vectors(users) * self.item(items)).sum(dim=1)
        score = score + self.user_bias(users).squeeze(1) + self.item_bias(items).squeeze(1)
        return self.low + (self.high - self.low) * torch.sigmoid(score)

    def vector_tables(self) -> list[nn.Parameter]:
        return [self.user.weight, self.item.weight]

    def implicit_tables(self) -> list[nn.Parameter]:
        return [self.item_implicit.weight] if self.item_implicit is not None else []

    def bias_tables(self) -> list[nn.Parameter]:
        return [self.user_bias.weight, self.item_bias.weight]

    def entities(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per entity: (vectors [n, dim], biases [n]) as published."""
        with torch.no_grad():
            return {
                "user": (self.user_vectors().detach(), self.user_bias.weight.detach().squeeze(1)),
                "item": (self.item.weight.detach(), self.item_bias.weight.detach().squeeze(1)),
            }


class MFLearner:
    """Trains ``BiasedMF`` on ratings: MSE, fused AdamW with decoupled weight decay on the vectors
    only, a one-cycle schedule over all epochs, validation RMSE."""

    metric = Metric("valid_rmse", "minimize")

    def __init__(self, model: BiasedMF, cfg: MFConfig, train: Interactions, valid: Interactions | None,
                 device: torch.device):
        self.module = model.to(device)
        self.train_module: nn.Module = self.module
        self.cfg, self.train_data, self.device = cfg, train, device
        self.valid_data = valid if valid is not None and valid.rows else None
        groups = [
            {"params": model.vector_tables(), "weight_decay": cfg.weight_decay},
            {"params": model.implicit_tables(), "weight_decay": cfg.implicit_weight_decay},
            {"params": model.bias_tables(), "weight_decay": cfg.bias_weight_decay},
        ]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.99),
                                           fused=True)
        steps = train.steps_per_epoch(cfg.batch_size)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=cfg.lr,
                                                            total_steps=max(cfg.epochs * steps, 1))
        self.precision = Precision(device)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        total, count = 0.0, 0
        progress = Progress(f"epoch {epoch}/{self.cfg.epochs}", self.train_data.rows, "ratings")
        for whole in self.train_data.batches(self.cfg.batch_size, self.cfg.seed, epoch):
            rows, real = distributed.shard(len(whole))  # all of it in one process
            batch = (whole if rows.size == len(whole) else whole.take(rows)).to(self.device)
            mine = len(batch) if real else 0
            with self.precision.autocast():
                loss = nn.functional.mse_loss(self.train_module(batch.users, batch.items).float(), batch.ratings)
            self.precision.step(loss * distributed.loss_weight(mine, len(whole)), self.optimizer)
            self.schedule.step()
            total += float(loss.detach()) * mine
            count += mine
            progress.advance(len(whole))
        total, count = distributed.all_sum(total, count)
        return {"train_rmse": math.sqrt(total / max(count, 1)), "lr": self.schedule.get_last_lr()[0]}

    def evaluate(self) -> dict[str, float]:
        return {"valid_rmse": rmse(self.module, self.valid_data, self.device)} if self.valid_data else {}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "precision": self.precision.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.precision.load_state_dict(state["precision"])

    def entities(self) -> dict[str, EntityVectors]:
        published = {}
        for entity, (vectors, biases) in self.module.entities().items():
            matrix = vectors.float().cpu().numpy()
            published[entity] = EntityVectors(
                vocab=entity, index=np.arange(matrix.shape[0], dtype=np.int32), vectors=matrix,
                bias=biases.float().cpu().numpy(), space="ratings",
            )
        return published


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


def y_range_for(cfg: MFConfig, manifest: Manifest) -> tuple[float, float]:
    if cfg.y_range is not None:
        return cfg.y_range
    low, high = manifest.rating_range
    return (low - 0.5, high + 0.5)


def build_model(cfg: MFConfig, train: Interactions, sizes: dict[str, int], y_range: tuple[float, float],
                device: torch.device) -> BiasedMF:
    """The seeded, initialised model for ``cfg`` (with its implicit-feedback matrix from ``train``)."""
    implicit = ImplicitFeedback(*train.pairs(), sizes["user"], sizes["item"], device) if cfg.implicit else None
    model = BiasedMF(sizes["user"], sizes["item"], cfg.dim, y_range, implicit)
    model.reset_parameters(torch.Generator().manual_seed(cfg.seed), cfg.init_std)
    return model


def build(cfg: MFConfig, snapshot_dir: Path, manifest: Manifest, device: torch.device) -> Built:
    train = Interactions.from_dir(snapshot_dir / interactions_dir("train"), cfg.shuffle_buffer_rows)
    valid = Interactions.from_dir(snapshot_dir / interactions_dir("valid"), cfg.shuffle_buffer_rows)
    sizes = {entity: stats.size for entity, stats in manifest.vocab.items()}
    y_range = y_range_for(cfg, manifest)
    model = build_model(cfg, train, sizes, y_range, device)
    averaging = cfg.average_from < 1
    loop = LoopConfig(cfg.epochs, patience=cfg.patience, average_from=cfg.average_from if averaging else None,
                      restore_best=not averaging)
    return Built(
        MFLearner(model, cfg, train, valid, device), loop,
        {"dim": cfg.dim, "y_range": list(y_range), "sizes": sizes},
        f"{sizes['user']} users x {sizes['item']} items, dim {cfg.dim}, {train.rows} train / {valid.rows} valid ratings",
    )
