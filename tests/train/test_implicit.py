"""The implicit-feedback term from the batch's bags against the full user x item product."""

from __future__ import annotations

import numpy as np
import torch

from jobs.train.implicit import ImplicitFeedback


def _ratings(seed: int, users: int = 30, items: int = 40, per_user: int = 9):
    rng = np.random.default_rng(seed)
    pairs = {(u, int(i)) for u in range(1, users) for i in rng.choice(np.arange(1, items), rng.integers(1, per_user),
                                                                       replace=False)}
    u, i = map(np.array, zip(*sorted(pairs)))
    return u, i, users, items


def _full_product(u: np.ndarray, i: np.ndarray, users: int, items: int) -> torch.Tensor:
    """The dense normalised user x item matrix: row u is |N(u)|^-1/2 on the items u rated."""
    matrix = torch.zeros(users, items)
    matrix[torch.from_numpy(u), torch.from_numpy(i)] = 1.0
    return matrix / matrix.sum(1, keepdim=True).clamp(min=1).sqrt()


def test_batch_bags_equal_the_full_product_forward_and_backward():
    u, i, users, items = _ratings(0)
    implicit = ImplicitFeedback(u, i, users, items)
    table = torch.randn(items, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    batch_users = np.array([3, 7, 8, 20, 29])
    upstream = torch.randn(batch_users.size, 6, generator=torch.Generator().manual_seed(2))

    bags = implicit.bags(batch_users)
    slab = table[bags.items.rows].clone().requires_grad_()
    (bags.sums(slab) * upstream).sum().backward()

    reference_table = table.clone().requires_grad_()
    full = _full_product(u, i, users, items) @ reference_table
    torch.testing.assert_close(bags.sums(table[bags.items.rows]), full[batch_users].detach(), rtol=1e-5, atol=1e-6)
    (full[batch_users] * upstream).sum().backward()
    expected = reference_table.grad[bags.items.rows]
    torch.testing.assert_close(slab.grad, expected, rtol=1e-5, atol=1e-6)
    untouched = np.setdiff1d(np.arange(items), bags.items.rows.numpy())
    assert torch.count_nonzero(reference_table.grad[untouched]) == 0  # the bags hold every row with a gradient


def test_every_users_term_equals_the_full_product_and_users_without_items_get_zero():
    u, i, users, items = _ratings(3)
    keep = u != 5
    implicit = ImplicitFeedback(u[keep], i[keep], users, items)
    table = torch.randn(items, 4, generator=torch.Generator().manual_seed(4))
    terms = implicit.user_terms(table)
    torch.testing.assert_close(terms, _full_product(u[keep], i[keep], users, items) @ table, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(terms[[0, 5]]) == 0


def test_sampled_bags_are_the_exact_sum_in_expectation():
    u, i, users, items = _ratings(5, per_user=30)
    implicit = ImplicitFeedback(u, i, users, items, max_items=4)
    table = torch.randn(items, 3, generator=torch.Generator().manual_seed(6))
    batch_users = np.arange(1, users)
    exact = implicit.user_terms(table)[batch_users]
    rng = np.random.default_rng(7)
    draws = []
    for _ in range(2000):
        bags = implicit.bags(batch_users, rng)
        assert int(bags.offsets.numel()) == batch_users.size
        assert bags.items.slots.numel() <= 4 * batch_users.size  # the cap bounds a step's cost
        draws.append(bags.sums(table[bags.items.rows]))
    draws = torch.stack(draws)
    # one draw is noisy; the mean of many is the exact sum within its standard error (no bias)
    assert (draws[0] - exact).abs().max() > 0.1
    standard_error = draws.std(0) / len(draws) ** 0.5
    assert ((draws.mean(0) - exact).abs() <= 4.5 * standard_error + 1e-6).all()


def test_the_bag_cap_is_the_largest_within_the_budget_and_none_when_all_fits():
    from jobs.train.mf import bag_cap

    counts = np.array([0, 3, 5, 200, 400, 1000])
    assert bag_cap(counts, batch_size=10_000, budget=1000) is None  # every bag whole fits

    def cost(cap):  # as simulated: every user is in a batch of the whole data
        return np.minimum(counts, cap).sum()

    cap = bag_cap(counts, batch_size=int(counts.sum()), budget=400 / counts.sum())
    assert cost(cap) <= 400 < cost(cap + 1)
