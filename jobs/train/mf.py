"""Biased matrix factorisation (fast.ai's EmbeddingDotBias): vectors and biases only."""

from __future__ import annotations

import torch
from torch import nn


class BiasedMF(nn.Module):
    """rating ~ low + (high - low) * sigmoid(user . item + user_bias + item_bias)."""

    def __init__(self, n_users: int, n_items: int, dim: int, y_range: tuple[float, float]):
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.low, self.high = y_range

    def reset_parameters(self, generator: torch.Generator, std: float) -> None:
        with torch.no_grad():
            for table in (self.user, self.item, self.user_bias, self.item_bias):
                table.weight.normal_(0.0, std, generator=generator)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        score = (self.user(users) * self.item(items)).sum(dim=1)
        score = score + self.user_bias(users).squeeze(1) + self.item_bias(items).squeeze(1)
        return self.low + (self.high - self.low) * torch.sigmoid(score)

    def vector_tables(self) -> list[nn.Parameter]:
        return [self.user.weight, self.item.weight]

    def bias_tables(self) -> list[nn.Parameter]:
        return [self.user_bias.weight, self.item_bias.weight]

    def entities(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per entity: (vectors [n, dim], biases [n])."""
        return {
            "user": (self.user.weight.detach(), self.user_bias.weight.detach().squeeze(1)),
            "item": (self.item.weight.detach(), self.item_bias.weight.detach().squeeze(1)),
        }
