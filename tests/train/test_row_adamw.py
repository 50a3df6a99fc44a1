"""The row-wise AdamW against torch's dense AdamW on tiny tables."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from jobs.train.row_adamw import RowAdamW
from schemas.errors import TrainingDiverged


def _tables(seed: int, rows: int = 12, dim: int = 4) -> tuple[nn.Parameter, nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(rows, dim, generator=generator)
    return nn.Parameter(start.clone()), nn.Parameter(start.clone())


def _grads(seed: int, steps: int, rows: int = 12, dim: int = 4) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + 1)
    return [torch.randn(rows, dim, generator=generator) for _ in range(steps)]


def _run_pair(touched: list[torch.Tensor], betas, weight_decay: float, schedule: bool, dense_rows: int = 0):
    """Train a table with RowAdamW (only ``touched[step]`` rows get a gradient) and one with AdamW
    (the same gradient, zero elsewhere); return both."""
    ours, reference = _tables(0)
    grads = _grads(0, len(touched))
    row_opt = RowAdamW([ours], lr=0.05, betas=betas, weight_decay=weight_decay, dense_rows=dense_rows)
    dense_opt = torch.optim.AdamW([reference], lr=0.05, betas=betas, weight_decay=weight_decay)
    schedules = []
    if schedule:  # one-cycle: the learning rate and beta1 change every step
        schedules = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=len(touched), cycle_momentum=True)
                     for o in (row_opt, dense_opt)]
    for step, rows in enumerate(touched):
        mask = torch.zeros(12, 1)
        mask[rows] = 1.0
        target = grads[step] * mask
        row_opt.zero_grad()
        slab = row_opt.take(ours, rows)
        (slab * target[rows]).sum().backward()  # d/dslab = the gradient's rows
        row_opt.step()
        dense_opt.zero_grad()
        (reference * target).sum().backward()
        dense_opt.step()
        for s in schedules:
            s.step()
    row_opt.flush()  # rows not touched lately have their pending decay applied
    return ours.detach(), reference.detach()


def test_every_row_touched_every_step_equals_adamw_with_one_cycle_and_weight_decay():
    touched = [torch.arange(12)] * 25
    ours, reference = _run_pair(touched, betas=(0.9, 0.99), weight_decay=1.5, schedule=True)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_untouched_rows_catch_up_decay_and_moments_exactly_when_beta1_is_zero():
    # beta1 = 0: a dense AdamW moves no row without a gradient, so lazy and dense must agree exactly,
    # including the weight decay and the second moment decay of the steps a row missed
    generator = torch.Generator().manual_seed(3)
    touched = [torch.sort(torch.randperm(12, generator=generator)[:4]).values for _ in range(30)]
    ours, reference = _run_pair(touched, betas=(0.0, 0.99), weight_decay=0.8, schedule=False)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_a_row_never_touched_only_decays_as_dense_adamw_would():
    touched = [torch.tensor([0, 1, 2, 11])] + [torch.tensor([0, 1, 2])] * 9 + [torch.tensor([0, 1, 2, 11])]
    ours, reference = _run_pair(touched, betas=(0.9, 0.99), weight_decay=0.5, schedule=False)
    start, _ = _tables(0)
    decay = (1 - 0.05 * 0.5) ** 11
    torch.testing.assert_close(ours[3:11], start.detach()[3:11] * decay)  # never touched: decay alone
    torch.testing.assert_close(ours[:3], reference[:3], rtol=1e-5, atol=1e-6)  # touched every step: exact
    # lazy: the moves a dense AdamW makes from a stale momentum while the row has no gradient are not replayed
    assert not torch.allclose(ours[11], reference[11], rtol=1e-3, atol=1e-4)


def test_small_tables_take_the_dense_path_and_equal_adamw():
    touched = [torch.tensor([1, 5, 7])] * 15
    ours, reference = _run_pair(touched, betas=(0.9, 0.99), weight_decay=1.0, schedule=True, dense_rows=12)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_state_round_trips_through_a_checkpoint():
    table, _ = _tables(1)
    opt = RowAdamW([table], lr=0.01, weight_decay=0.1)
    rows = torch.tensor([2, 4])
    opt.take(table, rows).sum().backward()
    opt.step()
    clone = nn.Parameter(table.detach().clone())
    restored = RowAdamW([clone], lr=0.01, weight_decay=0.1)
    restored.load_state_dict(copy.deepcopy(opt.state_dict()))  # as through torch.save / torch.load
    for o, t in ((opt, table), (restored, clone)):
        o.take(t, rows).pow(2).sum().backward()
        o.step()
    torch.testing.assert_close(table.detach(), clone.detach(), rtol=0, atol=0)


def test_refuses_a_learning_rate_times_weight_decay_that_would_flip_signs():
    table, _ = _tables(2)
    opt = RowAdamW([table], lr=0.5, weight_decay=2.0)
    opt.take(table, torch.tensor([0])).sum().backward()
    with pytest.raises(TrainingDiverged, match="training diverged at step 1: .* lower train.lr or the weight decay"):
        opt.step()
    assert math.isfinite(float(table.detach().sum()))


def test_per_touch_decay_shrinks_a_row_once_per_step_that_uses_it():
    # a zero gradient leaves Adam's move at zero: what remains is the weight decay
    table = nn.Parameter(torch.ones(6, 2))
    opt = RowAdamW([table], lr=0.1, weight_decay=0.5, decay_per_touch=True)
    uses = [torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([1, 2]), torch.tensor([1])]
    for rows in uses:
        (opt.take(table, rows) * 0).sum().backward()
        opt.step()
    opt.flush()
    shrink = 1 - 0.1 * 0.5
    expected = torch.tensor([shrink, shrink**4, shrink, 1.0, 1.0, 1.0])
    torch.testing.assert_close(table.detach()[:, 0], expected)
