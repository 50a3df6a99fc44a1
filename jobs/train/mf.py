"""Biased matrix factorisation (fast.ai's EmbeddingDotBias), optionally with implicit feedback.

    rating ~ low + (high - low) * sigmoid(user . item + user_bias + item_bias)

With ``implicit`` the user vector is ``p_u + |N(u)|^-1/2 sum_j y_j`` (SVD++);
the published user vector is that sum, so ``user . item + biases`` still
scores a user and an item.

Data-parallel: each rank trains on its rows of every batch (``jobs.train.distributed``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jobs.train import distributed
from jobs.train.config import MFConfig
from jobs.train.data import Batch, Interactions
from jobs.train.fold_in import WarmStart, nothing as _nothing
from jobs.train.implicit import Bags, ImplicitFeedback
from jobs.train.loop import EntityVectors, LoopConfig, Metric, Trainable
from jobs.train.precision import Precision
from jobs.train.prefetch import prefetched
from jobs.train.progress import Progress
from jobs.train.row_adamw import RowAdamW
from jobs.train.rows import Rows, to_device
from schemas.snapshot import Manifest, interactions_dir

_EVAL_BATCH = 1 << 16
#: Share of training the one-cycle schedule spends raising the learning rate (OneCycleLR's default).
WARM_UP_SHARE = 0.3
#: Trains under torchrun with several processes (see jobs.train.distributed).
DATA_PARALLEL = True


Take = Callable[[nn.Parameter, torch.Tensor], torch.Tensor]


def gather(table: nn.Parameter, rows: torch.Tensor) -> torch.Tensor:
    """Plain row lookup (evaluation); training steps take rows through the optimiser instead."""
    return table[rows]


@dataclass(frozen=True)
class MFBatch:
    """A batch of ratings as the rows each table gives it (found on the host, see jobs.train.rows)."""

    users: Rows
    items: Rows
    bags: Bags | None  # the implicit terms of ``users.rows``, in that order (None without implicit feedback)
    ratings: torch.Tensor
    bag_of_user: torch.Tensor | None = None  # when ``bags`` hold every user: the bag of each of ``users.rows``

    def __len__(self) -> int:
        return self.ratings.shape[0]

    def to(self, device: torch.device) -> "MFBatch":
        return MFBatch(self.users.to(device), self.items.to(device),
                       self.bags.to(device) if self.bags is not None else None, to_device(self.ratings, device),
                       to_device(self.bag_of_user, device) if self.bag_of_user is not None else None)

    def at(self, positions: np.ndarray) -> "MFBatch":
        """This rank's positions of a batch every rank formed alike: the same rows, so the same slabs."""
        index = torch.from_numpy(positions)
        return MFBatch(self.users.at(index), self.items.at(index), self.bags, self.ratings[index], self.bag_of_user)


class BiasedMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int, y_range: tuple[float, float], implicit: bool = False):
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.item_implicit = nn.Embedding(n_items, dim) if implicit else None
        self.low, self.high = y_range

    def reset_parameters(self, generator: torch.Generator, std: float) -> None:
        with torch.no_grad():
            for table in self.vector_tables() + self.implicit_tables() + self.bias_tables():
                table.normal_(0.0, std, generator=generator)

    def forward(self, batch: MFBatch, take: Take = gather) -> torch.Tensor:
        """Predicted ratings of a batch; ``take`` gathers each table's rows (and lets training update them)."""
        users, items = batch.users, batch.items
        user_vectors = take(self.user.weight, users.rows)
        if batch.bags is not None:
            sums = batch.bags.sums(take(self.item_implicit.weight, batch.bags.items.rows))
            user_vectors = user_vectors + (sums if batch.bag_of_user is None else sums[batch.bag_of_user])
        item_vectors = take(self.item.weight, items.rows)
        user_bias = take(self.user_bias.weight, users.rows)
        item_bias = take(self.item_bias.weight, items.rows)
        score = (user_vectors[users.slots] * item_vectors[items.slots]).sum(dim=1)
        score = score + user_bias[users.slots, 0] + item_bias[items.slots, 0]
        return self.squash(score)

    def squash(self, score: torch.Tensor) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.sigmoid(score)

    def user_vectors(self, implicit: ImplicitFeedback | None) -> torch.Tensor:
        """Every user's vector, the exact implicit term included: what is published and validated."""
        vectors = self.user.weight.detach()
        if implicit is None or self.item_implicit is None:
            return vectors
        return vectors + implicit.user_terms(self.item_implicit.weight.detach()).to(vectors.dtype)

    def predict(self, users: torch.Tensor, items: torch.Tensor, user_vectors: torch.Tensor) -> torch.Tensor:
        score = (user_vectors[users] * self.item.weight[items]).sum(dim=1)
        score = score + self.user_bias.weight[users, 0] + self.item_bias.weight[items, 0]
        return self.squash(score)

    def vector_tables(self) -> list[nn.Parameter]:
        return [self.user.weight, self.item.weight]

    def implicit_tables(self) -> list[nn.Parameter]:
        return [self.item_implicit.weight] if self.item_implicit is not None else []

    def bias_tables(self) -> list[nn.Parameter]:
        return [self.user_bias.weight, self.item_bias.weight]


class MFLearner:
    """Trains ``BiasedMF`` on ratings: MSE, row-wise AdamW (``jobs.train.row_adamw``: a step updates the
    batch's rows only) with decoupled weight decay, a one-cycle schedule over all epochs, validation RMSE."""

    metric = Metric("valid_rmse", "minimize")

    def __init__(self, model: BiasedMF, cfg: MFConfig, train: Interactions, valid: Interactions | None,
                 device: torch.device, implicit: ImplicitFeedback | None = None):
        self.module = model.to(device)
        self.train_module: nn.Module = self.module
        self.cfg, self.train_data, self.device, self.implicit = cfg, train, device, implicit
        self.valid_data = valid if valid is not None and valid.rows else None
        self.after_step = _nothing  # a fold-in puts the parent's weights back here (jobs.train.fold_in)
        self.sizes = (model.user.weight.shape[0], model.item.weight.shape[0])
        # without a budget (exact bags always) a step still cuts its own bags: a whole matrix per step
        # would cost the data, not the batch
        matrix_fits = (implicit is not None and implicit.max_items is None and cfg.implicit_budget is not None
                       and implicit.nnz <= cfg.implicit_budget * cfg.batch_size)
        self.every_bag = implicit.bags(np.arange(self.sizes[0])).to(device) if matrix_fits else None
        groups = [
            {"params": model.vector_tables(), "weight_decay": cfg.weight_decay},
            {"params": model.implicit_tables(), "weight_decay": cfg.implicit_weight_decay},
            {"params": model.bias_tables(), "weight_decay": cfg.bias_weight_decay},
        ]
        self.optimizer = RowAdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.99),
                                  dense_rows=cfg.batch_size, decay_per_touch=True)
        steps = train.steps_per_epoch(cfg.batch_size)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=cfg.lr, pct_start=WARM_UP_SHARE,
                                                            total_steps=max(cfg.epochs * steps, 1))
        # no loss scaling: the row-wise optimiser reads the slabs' gradients itself, and bf16 needs none
        self.precision = Precision(device, cfg.precision, loss_scaling=False)

    def batch(self, rated: Batch, rng: np.random.Generator) -> MFBatch:
        """Rows and implicit bags of a batch, found on the host (the same on every rank).

        When the whole user x item matrix is within a step's budget (MovieLens 100K: 90k entries against
        131k at batch 2048), every user's bag is made once and reused: one product per step, no host work."""
        users = Rows.of(rated.users.numpy(), self.sizes[0])
        items = Rows.of(rated.items.numpy(), self.sizes[1])
        if self.implicit is None:
            return MFBatch(users, items, None, rated.ratings)
        if self.every_bag is not None:
            return MFBatch(users, items, self.every_bag, rated.ratings, users.rows)
        return MFBatch(users, items, self.implicit.bags(users.rows.numpy(), rng), rated.ratings)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        total = torch.zeros((), dtype=torch.float64, device=self.device)  # summed on the device: no per-step sync
        count = 0
        rng = np.random.default_rng([self.cfg.seed, epoch, 0x1B])  # implicit-term samples
        progress = Progress(f"epoch {epoch}/{self.cfg.epochs}", self.train_data.rows, "ratings")
        ratings = self.train_data.batches(self.cfg.batch_size, self.cfg.seed, epoch)  # the same on every rank
        for size, batch in prefetched(ratings, lambda rated: (len(rated), self.batch(rated, rng))):
            rows, has_rows = distributed.shard(size)  # all of it in one process
            batch = (batch if rows.size == size else batch.at(rows)).to(self.device)
            mine = len(batch) if has_rows else 0  # this rank's ratings in the loss
            with self.precision.autocast():
                predicted = self.train_module(batch, self.optimizer.take)
            loss = nn.functional.mse_loss(predicted.float(), batch.ratings)
            self.precision.step(loss * distributed.loss_weight(mine, size), self.optimizer)
            self.after_step()
            self.schedule.step()
            total += loss.detach() * mine
            count += mine
            progress.advance(size)
        self.optimizer.flush()  # rows the last steps skipped catch up: validation and vectors read whole tables
        self.after_step()
        total, count = distributed.all_sum(float(total), count)
        return {"train_rmse": math.sqrt(total / max(count, 1)), "lr": self.schedule.get_last_lr()[0]}

    def evaluate(self) -> dict[str, float]:
        if not self.valid_data:
            return {}
        return {"valid_rmse": rmse(self.module, self.valid_data, self.device, self.implicit)}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "precision": self.precision.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.precision.load_state_dict(state["precision"])

    def entities(self) -> dict[str, EntityVectors]:
        with torch.no_grad():
            tables = {
                "user": (self.module.user_vectors(self.implicit), self.module.user_bias.weight),
                "item": (self.module.item.weight, self.module.item_bias.weight),
            }
        published = {}
        for entity, (vectors, biases) in tables.items():
            matrix = vectors.detach().float().cpu().numpy()
            published[entity] = EntityVectors(
                vocab=entity, index=np.arange(matrix.shape[0], dtype=np.int32), vectors=matrix,
                bias=biases.detach().float().squeeze(1).cpu().numpy(), space="ratings",
            )
        return published


def rmse(model: BiasedMF, data: Interactions, device: torch.device, implicit: ImplicitFeedback | None) -> float:
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    with torch.no_grad():
        user_vectors = model.user_vectors(implicit)
        for batch in data.in_order(_EVAL_BATCH):
            batch = batch.to(device)
            err = model.predict(batch.users, batch.items, user_vectors).float() - batch.ratings
            total += (err * err).sum()
            count += len(batch)
    return math.sqrt(float(total) / count) if count else float("nan")


def y_range_for(cfg: MFConfig, manifest: Manifest) -> tuple[float, float]:
    if cfg.y_range is not None:
        return cfg.y_range
    low, high = manifest.rating_range
    return (low - 0.5, high + 0.5)


def build_model(cfg: MFConfig, sizes: dict[str, int], y_range: tuple[float, float]) -> BiasedMF:
    """The seeded, initialised model for ``cfg``."""
    model = BiasedMF(sizes["user"], sizes["item"], cfg.dim, y_range, cfg.implicit)
    model.reset_parameters(torch.Generator().manual_seed(cfg.seed), cfg.init_std)
    return model


def implicit_feedback(cfg: MFConfig, train: Interactions, sizes: dict[str, int]) -> ImplicitFeedback | None:
    """Each user's rated items of the training split, when ``cfg.implicit``; its per-step cap on a bag
    from ``implicit_max_items``, else from ``implicit_budget`` and the batch size."""
    if not cfg.implicit:
        return None
    users, items = train.pairs()
    cap = cfg.implicit_max_items
    if cap is None and cfg.implicit_budget is not None:
        counts = np.bincount(users, minlength=sizes["user"])
        cap = bag_cap(counts, cfg.batch_size, cfg.implicit_budget)
    return ImplicitFeedback(users, items, sizes["user"], sizes["item"], cap)


def bag_cap(counts: np.ndarray, batch_size: int, budget: float) -> int | None:
    """The largest per-user bag size whose expected cost per step stays within ``budget`` x ``batch_size``
    lookups (None when every bag fits whole). A user with n of the N ratings is in a batch of B with
    probability 1 - (1 - B/N)^n."""
    counts = counts[counts > 0].astype(np.float64)
    share = min(batch_size / max(counts.sum(), 1.0), 1.0)
    present = 1.0 - np.exp(counts * np.log1p(-share)) if share < 1 else np.ones_like(counts)
    cost = lambda cap: float(np.sum(present * np.minimum(counts, cap)))  # noqa: E731
    allowed = budget * batch_size
    if counts.size == 0 or cost(counts.max()) <= allowed:
        return None
    low, high = 1, int(counts.max())
    while low < high:  # the largest cap within the budget
        middle = (low + high + 1) // 2
        low, high = (middle, high) if cost(middle) <= allowed else (low, middle - 1)
    return low


#: The batch-size rule: about this many steps per epoch, within [min, max] (max per device type).
AUTO_STEPS_PER_EPOCH, AUTO_MIN_BATCH, AUTO_MAX_BATCH = 48, 2048, {"cpu": 1 << 16, "cuda": 1 << 18}
#: The learning rate whatever the batch (lr = base x (batch / 2048) ** power; power 0). Measured: a larger
#: lr at a larger batch helped plain MF on 2.8M ratings (0.03 at 65,536: RMSE 0.599 against 0.639) but not
#: the default with implicit feedback (0.537 either way), and 0.03 made a 22.5M-rating run drift after its
#: warm-up (validation RMSE 0.575 after epoch 1, then 0.603, 0.624), so it stays at 0.015.
AUTO_BASE_LR, AUTO_LR_POWER = 0.015, 0.0


def scaled(cfg: MFConfig, train_rows: int, device: torch.device) -> MFConfig:
    """``cfg`` with its batch size and learning rate filled in where left to the data and device.

    Fewer, larger steps where there is more data (a step's fixed cost is amortised over more ratings;
    on a GPU a small batch leaves it idle). Measured on 2.8M synthetic ratings without implicit feedback:
    batch 2048 RMSE 0.644 at 0.22M ratings/s, batch 65,536 0.599 at 0.81M/s."""
    batch = cfg.batch_size
    if batch is None:
        wanted = 1 << max(int(math.ceil(math.log2(max(train_rows, 1) / AUTO_STEPS_PER_EPOCH))), 0)
        batch = min(max(wanted, AUTO_MIN_BATCH), AUTO_MAX_BATCH.get(device.type, AUTO_MAX_BATCH["cpu"]))
    lr = cfg.lr if cfg.lr is not None else AUTO_BASE_LR * (max(batch, AUTO_MIN_BATCH) / AUTO_MIN_BATCH) ** AUTO_LR_POWER
    return cfg.model_copy(update={"batch_size": batch, "lr": lr})


def build(cfg: MFConfig, snapshot_dir: Path, manifest: Manifest, device: torch.device,
          warm: WarmStart | None = None) -> Trainable:
    train = Interactions.from_dir(snapshot_dir / interactions_dir("train"), cfg.shuffle_buffer_rows)
    valid = Interactions.from_dir(snapshot_dir / interactions_dir("valid"), cfg.shuffle_buffer_rows)
    steps = train  # a fold-in of new keys steps over their ratings only (the implicit term keeps them all)
    if warm is not None and warm.mode == "new":
        steps = train.touching(warm.first_new("user"), warm.first_new("item"))
    cfg = scaled(cfg, steps.rows, device)
    sizes = {entity: stats.size for entity, stats in manifest.vocab.items()}
    y_range = y_range_for(cfg, manifest)
    model = build_model(cfg, sizes, y_range)
    averaging = cfg.average_from < 1
    # no early stop while the one-cycle schedule still climbs to its peak and a little after (seen on 21M
    # ratings: validation RMSE 0.581, 0.561, 0.576, 0.573 over epochs 1-4, then better as it anneals)
    warm_up = math.ceil(WARM_UP_SHARE * cfg.epochs) + 1
    loop = LoopConfig(cfg.epochs, patience=cfg.patience, patience_from=warm_up,
                      average_from=cfg.average_from if averaging else None,
                      restore_best=not averaging)
    implicit = implicit_feedback(cfg, train, sizes)
    return Trainable(
        MFLearner(model, cfg, steps, valid, device, implicit), loop,
        {"dim": cfg.dim, "y_range": list(y_range), "sizes": sizes, "batch_size": cfg.batch_size, "lr": cfg.lr,
         "implicit_max_items": implicit.max_items if implicit else None},
        f"{sizes['user']} users x {sizes['item']} items, dim {cfg.dim}, {steps.rows} train / {valid.rows} valid "
        f"ratings, batch {cfg.batch_size}, lr {cfg.lr:.4g}",
    )
