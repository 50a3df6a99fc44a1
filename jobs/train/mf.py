"""Biased matrix factorisation (fast.ai's EmbeddingDotBias), optionally with implicit feedback.

    rating ~ low + (high - low) * sigmoid(user . item + user_bias + item_bias)

With ``implicit`` the user vector is ``p_u + |N(u)|^-1/2 sum_j y_j`` (SVD++);
the published user vector is that sum, so ``user . item + biases`` still
scores a user and an item.
"""

from __future__ import annotations

import torch
from torch import nn

from jobs.train.implicit import ImplicitFeedback


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
