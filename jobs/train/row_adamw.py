"""AdamW for embedding tables, one step touching only the rows a batch used.

Dense AdamW updates every row of every table on every step, whatever the batch:
O(vocabulary x dim) per step. Here a training step *takes* the rows it needs
(``take(table, rows)``: a gathered leaf tensor, the "slab"), autograd fills the
slab's gradient, and ``step()`` updates those rows alone (TorchRec's row-wise
fused update, without sparse tensors): O(rows in the batch x dim).

What a row misses while the batch does not touch it is caught up exactly when it
is next touched, for everything that does not depend on the missed gradients:

- decoupled weight decay: the row is scaled by prod(1 - lr_s * wd) over the
  missed steps (learning-rate schedules included);
- the moment estimates: m by prod(beta1_s), v by prod(beta2_s) (beta1 cycles under OneCycleLR).

The products are kept as running sums of logs (float64) per group, and each row
remembers the sums at its last update. What is *not* replayed are the moves a
dense AdamW would still make on an untouched row from its stale momentum (the
"lazy" Adam of TF's LazyAdam and torch's SparseAdam). So with every row touched on
every step, or with beta1 = 0, a step equals ``torch.optim.AdamW`` (the tests hold it
to that).

``decay_per_touch=True`` decays a row once per step that touches it instead
(classic SGD matrix factorisation regularises a row per rating it appears in).
Why it exists: with per-step decay, a row's shrinkage between two of its
updates grows with the number of steps between them, i.e. with the data's size
over the batch's, so a default tuned on a small set underfits a large one
(measured on 2.8M synthetic ratings, batch 2048: RMSE 0.954 against 0.69 at batch
65536). Per touch, the ratio of decays to updates is one whatever the batch.

A table with no more rows than ``dense_rows`` (the learner passes its batch size:
a step costs that much anyway) is updated whole, exactly as AdamW, from an
ordinary gradient: for small tables that is cheaper than finding rows.

Nothing here reads a value back from the device, so a CUDA step never waits on
the host. Under data parallelism every rank takes the same rows (the whole
batch's), so the slab gradients are all-reduced densely (NCCL included) and
averaged like DDP averages the whole tables' gradients.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from jobs.train import distributed
from schemas.errors import TrainingDiverged

_DECAY, _BETA1, _BETA2 = range(3)


class RowAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, dense_rows: int = 0, decay_per_touch: bool = False):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "decay_per_touch": decay_per_touch}
        super().__init__(params, defaults)
        self._taken: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        for group in self.param_groups:
            group.setdefault("step", 0)
            for table in group["params"]:
                if table.dim() != 2:
                    raise ValueError(f"RowAdamW updates rows of 2-D tables; got a tensor of shape {tuple(table.shape)}")
                # a small table is a dense parameter (its gradient all-reduced by DDP when data-parallel);
                # a large one is updated here from its slabs alone, never by autograd
                table.requires_grad_(table.shape[0] <= dense_rows)

    def take(self, table: nn.Parameter, rows: torch.Tensor) -> torch.Tensor:
        """The rows ``rows`` (distinct) of ``table``, whose gradient ``step`` applies."""
        if table.requires_grad:
            return table[rows]  # dense: autograd fills table.grad
        if any(t is table for t, _, _ in self._taken):
            raise RuntimeError("a table was taken twice in one step: take all its rows at once")
        slab = table.detach()[rows].requires_grad_()
        self._taken.append((table, rows, slab))
        return slab

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears the dense tables' gradients; slabs are new every step (``step`` forgets them)."""
        super().zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, closure=None):
        taken, self._taken = self._taken, []
        grads = [slab.grad if slab.grad is not None else torch.zeros_like(slab) for _, _, slab in taken]
        distributed.all_reduce_mean_(grads)
        group_of = {id(t): g for g in self.param_groups for t in g["params"]}
        for group in self.param_groups:
            self._advance(group)
            for table in group["params"]:
                if table.requires_grad and table.grad is not None:
                    self._update_dense(table, table.grad, group)
        for (table, rows, _), grad in zip(taken, grads):
            self._update_rows(table, rows, grad, group_of[id(table)])
        return None

    def _advance(self, group: dict) -> None:
        """One more step for every table of the group: the running log-products move on."""
        lr, wd = group["lr"], group["weight_decay"]
        if lr * wd >= 1:  # the decay factor 1 - lr * wd would flip (or zero) every weight
            raise TrainingDiverged(f"training diverged at step {group['step'] + 1}: learning rate {lr:g} x weight "
                                   f"decay {wd:g} >= 1 would flip the weights' sign; lower train.lr or the weight decay")
        beta1, beta2 = group["betas"]
        group["step"] += 1
        for table in group["params"]:
            if table.requires_grad:
                continue  # dense: updated every step, nothing to catch up
            logs = self._state(table)["logs"]  # a device tensor: updating it with Python scalars never syncs
            logs[_DECAY] += 0.0 if group["decay_per_touch"] else math.log1p(-lr * wd)
            logs[_BETA1] += math.log(beta1) if beta1 > 0 else -math.inf
            logs[_BETA2] += math.log(beta2)

    def _state(self, table: nn.Parameter) -> dict:
        state = self.state[table]
        if not state:
            state["exp_avg"] = torch.zeros_like(table, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(table, memory_format=torch.preserve_format)
            state["logs"] = torch.zeros(3, dtype=torch.float64, device=table.device)
            state["marks"] = torch.zeros(table.shape[0], 3, dtype=torch.float64, device=table.device)
        return state

    @torch.no_grad()
    def flush(self) -> None:
        """Catch every row up to the current step (O(table): call it before reading the tables,
        e.g. at the end of an epoch, not every step). What was pending is applied exactly as the
        row's next touch would have."""
        for group in self.param_groups:
            for table in group["params"]:
                if table.requires_grad or not self.state[table]:
                    continue
                state = self.state[table]
                missed = _missed(state["logs"], state["marks"]).to(table.dtype)
                table.data.mul_(missed[:, _DECAY, None])
                state["exp_avg"].mul_(missed[:, _BETA1, None])
                state["exp_avg_sq"].mul_(missed[:, _BETA2, None])
                state["marks"].copy_(state["logs"].expand_as(state["marks"]))

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # torch casts floating state to the parameter's dtype: the running log-products must stay float64
        tables = [t for g in self.param_groups for t in g["params"]]
        for index, saved in state_dict["state"].items():
            for key in ("logs", "marks"):
                if key in saved:
                    self.state[tables[index]][key] = saved[key].to(tables[index].device, torch.float64)

    def _update_dense(self, table: nn.Parameter, grad: torch.Tensor, group: dict) -> None:
        """AdamW on the whole table: every row counts as touched this step."""
        state = self._state(table)
        lr, eps, step, wd = group["lr"], group["eps"], group["step"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        table.data.mul_(1 - lr * wd)
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1, bias2 = 1 - beta1**step, 1 - beta2**step
        denominator = (state["exp_avg_sq"].sqrt() / math.sqrt(bias2)).add_(eps)
        table.data.addcdiv_(state["exp_avg"], denominator, value=-lr / bias1)

    def _update_rows(self, table: nn.Parameter, rows: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        state = self._state(table)
        lr, eps, step = group["lr"], group["eps"], group["step"]
        beta1, beta2 = group["betas"]
        # what the rows missed since their last update, this step's factors included
        missed = _missed(state["logs"], state["marks"][rows])
        if group["decay_per_touch"]:
            missed[:, _DECAY] = 1.0 - lr * group["weight_decay"]
        missed = missed.to(table.dtype)
        grad = grad.to(table.dtype)
        weights = table.data[rows].mul_(missed[:, _DECAY, None])
        exp_avg = state["exp_avg"][rows].mul_(missed[:, _BETA1, None]).add_(grad, alpha=1 - beta1)
        exp_avg_sq = state["exp_avg_sq"][rows].mul_(missed[:, _BETA2, None]).addcmul_(grad, grad, value=1 - beta2)
        bias1, bias2 = 1 - beta1**step, 1 - beta2**step
        denominator = (exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(eps)
        weights.addcdiv_(exp_avg, denominator, value=-lr / bias1)
        table.data.index_copy_(0, rows, weights)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        state["marks"].index_copy_(0, rows, state["logs"].expand(rows.shape[0], 3).contiguous())


def _missed(logs: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
    """[rows, 3] factors (decay, beta1, beta2) accrued since each row's marks. With beta1 = 0 both logs
    are -inf and exp(-inf - -inf) is nan: the moment is simply forgotten, a factor of 0."""
    return torch.nan_to_num(torch.exp(logs[None, :] - marks), nan=0.0)
