"""Implicit feedback for ``mf`` (SVD++, Koren 2008): which items a user rated says something
about their taste beyond the ratings themselves.

    user vector = p_u + |N(u)|^-1/2 * sum_{j in N(u)} y_j

where N(u) are the items u rated in the training split and y_j a second
table of item vectors. The sum for every user is one sparse-dense product
per step, whose backward pass uses the transposed matrix built once here.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


class _SparseProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dense: torch.Tensor, matrix: torch.Tensor, transposed: torch.Tensor) -> torch.Tensor:
        ctx.transposed = transposed
        return matrix @ dense

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.transposed @ grad, None, None


class ImplicitFeedback:
    """The row-normalised user x item matrix of the training split (CSR) and its transpose."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, device: torch.device):
        rows = torch.from_numpy(np.asarray(users, dtype=np.int64))
        cols = torch.from_numpy(np.asarray(items, dtype=np.int64))
        per_user = torch.bincount(rows, minlength=n_users).clamp(min=1).float()
        values = per_user[rows].rsqrt()
        coo = torch.sparse_coo_tensor(
            torch.stack([rows, cols]), values, (n_users, n_items), check_invariants=False
        ).coalesce()
        with warnings.catch_warnings():  # "sparse CSR support is in beta": matmul is all we use
            warnings.simplefilter("ignore", UserWarning)
            self.matrix = coo.to_sparse_csr().to(device)
            self.transposed = coo.t().coalesce().to_sparse_csr().to(device)
        self.nnz = int(values.numel())

    def user_terms(self, item_vectors: torch.Tensor) -> torch.Tensor:
        """[n_users, dim]: each user's normalised sum of the vectors of the items they rated."""
        return _SparseProduct.apply(item_vectors.float(), self.matrix, self.transposed)
