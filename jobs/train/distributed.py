"""Data-parallel training under ``torchrun``: every torch.distributed call of the train stage lives here.

    torchrun --nproc-per-node 2 -m jobs.train CONFIG --store DIR

torchrun starts one process per rank with WORLD_SIZE, RANK and LOCAL_RANK set.
Each rank reads the same snapshot and forms the same batches (they are seeded
by (seed, epoch)), then trains on its own rows of every batch (``shard``); DDP
averages the gradients, and ``loss_weight`` scales each rank's loss so that the
average is the gradient of the whole batch's mean loss. So an epoch covers the
same data, in as many optimiser steps of the same size, as in one process:
``batch_size`` and the learning-rate schedule keep their meaning. (Each rank still
reads the whole snapshot: the compute is shared out, not the reading.)

Rank 0 alone validates, checkpoints and writes the run; the others follow its
decisions (``broadcast``). Without torchrun (or with one process) every function
here is a no-op, so one code path serves both.

Sparse gradients: NCCL cannot all-reduce them; gloo can (checked with torch
2.13: ``nn.Embedding(sparse=True)`` + SparseAdam under DDP on gloo gives equal
weights on every rank). So embedding tables here never carry sparse gradients:
``mf`` updates its tables row-wise (``jobs.train.row_adamw``), all ranks taking
the same rows, whose dense gradients ``all_reduce_mean_`` averages; ``wrap`` leaves
such a module alone, and refuses one with sparse embeddings on NCCL rather than
let it fail inside the first all-reduce.
"""

from __future__ import annotations

import gc
import logging
import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from schemas.errors import ConfigError

log = logging.getLogger(__name__)


def launched_world_size() -> int:
    """Processes torchrun started for this job (its WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that validates, checkpoints and writes."""
    return rank() == 0


def backend() -> str | None:
    return dist.get_backend() if active() else None


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) when it started several processes; return this rank's device.

    gloo on CPU; NCCL on CUDA, where each rank trains on ``cuda:LOCAL_RANK``."""
    if launched_world_size() <= 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        log.info("rank %d of %d joined (%s)", dist.get_rank(), dist.get_world_size(), dist.get_backend())
    return device


def shutdown(wait: bool = True) -> None:
    """Leave the process group (the entry point's last step), after every rank got there when ``wait``.

    DDP wrappers of finished runs are collected first: a wrapper still alive (it sits in
    reference cycles) when the group goes or the interpreter exits made one rank in two
    abort ("terminate called without an active exception") with torch 2.13 on gloo."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        if wait:
            barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(value):
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not active():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(*values: float) -> list[float]:
    """Each value summed over the ranks (float64)."""
    if not active():
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if backend() == "nccl" else torch.device("cpu")
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average each tensor over the ranks, in place, as DDP averages gradients (dense, so NCCL can do it;
    one call for the list)."""
    if not active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size()
    for tensor, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        tensor.copy_(part.view_as(tensor))


def shard(count: int) -> tuple[np.ndarray, bool]:
    """This rank's rows of a batch of ``count`` rows that every rank formed alike: every
    world_size-th row from its rank on; and whether they are real rows.

    A rank left without a row (a batch shorter than the world) gets row 0 as a stand-in,
    because DDP needs every rank in every step: it must weigh that loss by 0."""
    rows = np.arange(rank(), count, world_size())
    if rows.size or not count:
        return rows, bool(rows.size)
    return np.zeros(1, np.int64), False


def loss_weight(mine: int, total: int) -> float:
    """Factor on this rank's mean loss over ``mine`` of a batch's ``total`` terms: DDP averages
    the ranks' gradients, so world_size * mine / total makes that the whole batch's mean
    (exactly 1.0 in one process)."""
    return world_size() * mine / total if total else 0.0


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when several processes train (else itself).

    The learner keeps the bare module for validation, checkpoints and vectors; only
    training steps call the wrapper, whose forward and backward synchronise the ranks."""
    if not active() or not any(p.requires_grad for p in module.parameters()):
        return module  # nothing for DDP to average: e.g. tables a row-wise optimiser updates (it all-reduces)
    if backend() == "nccl":
        sparse = [name for name, m in module.named_modules() if isinstance(m, nn.Embedding) and m.sparse]
        if sparse:
            raise ConfigError(f"embeddings {', '.join(sparse)} have sparse gradients, which NCCL cannot all-reduce: "
                              "train this model in one process (without torchrun) or on CPU (gloo)")
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
