"""Implicit feedback for ``mf`` (SVD++, Koren 2008): which items a user rated says something
about their taste beyond the ratings themselves.

    user vector = p_u + |N(u)|^-1/2 * sum_{j in N(u)} y_j

where N(u) are the items u rated in the training split and y_j a second table of
item vectors. A training step needs the term for its batch's users only: each
is a *bag* of the user's items. The bags are cut on the host from the users'
item lists (CSR, built once), so a step costs the batch's bags, not the whole
user x item matrix. Forward, ``nn.functional.embedding_bag`` sums each bag
with per-item weights (a gather and a weighted sum). Backward, the gradient of
the item rows is the bags' transpose times the gradient of the sums: a float32
sparse x dense product whose transpose the host sorted (a radix sort) while the
device worked, instead of the sort embedding_bag's own backward runs on every step
(profiled on MovieLens 100K, one CPU thread: an epoch's steps took 0.13 s instead of 0.33 s). Both run in float32 whatever the autocast dtype, so
nothing depends on a sparse kernel accepting bf16 (cuSPARSE and MKL do not).

A user with more than ``max_items`` items gets, per step, ``max_items`` of them
drawn uniformly (with replacement) and weighted by |N(u)| / max_items: the same
sum in expectation, at a cost bounded by batch x max_items. Published vectors and
validation always use the exact sum.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from jobs.train.rows import Rows, to_device

_ALL_USERS_CHUNK = 1 << 14


class _BagSum(torch.autograd.Function):
    """Weighted bag sums; the backward multiplies by the host-made transpose (see the module doc)."""

    @staticmethod
    def forward(ctx, slab, slots, offsets, weights, transposed: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
        ctx.transposed, ctx.rows, ctx.dtype = transposed, slab.shape[0], slab.dtype
        with torch.autocast(device_type=slab.device.type, enabled=False):
            return functional.embedding_bag(slots, slab.float(), offsets, mode="sum", per_sample_weights=weights)

    @staticmethod
    def backward(ctx, grad):
        crow, col, values = ctx.transposed
        with torch.autocast(device_type=grad.device.type, enabled=False), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta": a product is all we use
            matrix = torch.sparse_csr_tensor(crow, col, values, (ctx.rows, grad.shape[0]), check_invariants=False)
            return (matrix @ grad.float().contiguous()).to(ctx.dtype), None, None, None, None


@dataclass(frozen=True)
class Bags:
    """The implicit terms of some users: bag ``b`` is ``items.slots[offsets[b]:offsets[b + 1]]``."""

    items: Rows  # rows of the implicit item table, and each bag entry's slot among them
    offsets: torch.Tensor  # int64 [bags]
    weights: torch.Tensor  # float32 [entries]
    transposed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # CSR (slot -> bag, weight) for the
    # backward; None where no gradient is wanted

    def to(self, device: torch.device) -> "Bags":
        transposed = tuple(to_device(t, device) for t in self.transposed) if self.transposed else None
        return Bags(self.items.to(device), to_device(self.offsets, device), to_device(self.weights, device),
                    transposed)

    def sums(self, item_slab: torch.Tensor) -> torch.Tensor:
        """[bags, dim] float32: each bag's weighted sum of the item vectors (``item_slab`` holds ``items.rows``)."""
        if self.transposed is None:
            return functional.embedding_bag(self.items.slots, item_slab.float(), self.offsets, mode="sum",
                                            per_sample_weights=self.weights)
        return _BagSum.apply(item_slab, self.items.slots, self.offsets, self.weights, self.transposed)


def _transpose(slots: np.ndarray, bag_of_entry: np.ndarray, weights: np.ndarray, rows: int):
    """CSR of the entries by slot: (row pointers, bag of each entry, weight). A radix sort for small tables."""
    keys = slots.astype(np.uint16) if rows <= np.iinfo(np.uint16).max else slots
    order = np.argsort(keys, kind="stable")
    crow = np.concatenate([[0], np.cumsum(np.bincount(slots, minlength=rows))]).astype(np.int64)
    return (torch.from_numpy(crow), torch.from_numpy(bag_of_entry[order].astype(np.int64)),
            torch.from_numpy(weights[order]))


class ImplicitFeedback:
    """Each user's rated items in the training split (CSR on the host), weighted |N(u)|^-1/2."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                 max_items: int | None = None):
        users = np.asarray(users, dtype=np.int64)
        order = np.argsort(users, kind="stable")
        counts = np.bincount(users, minlength=n_users)[:n_users]
        self.indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.indices = np.asarray(items, dtype=np.int64)[order]
        self.counts = counts
        self.scale = (1.0 / np.sqrt(np.maximum(counts, 1))).astype(np.float32)
        self.n_items, self.max_items = n_items, max_items
        self.nnz = int(self.indices.size)

    def bags(self, users: np.ndarray, rng: np.random.Generator | None = None, trainable: bool = True) -> Bags:
        """Bags of ``users`` (distinct user indices); sampled down to ``max_items`` when ``rng`` is given;
        ready for a backward pass when ``trainable``."""
        counts = self.counts[users]
        lengths, weights = counts, self.scale[users]
        if rng is not None and self.max_items is not None and (counts > self.max_items).any():
            lengths = np.minimum(counts, self.max_items)
            weights = weights * (counts / np.maximum(lengths, 1)).astype(np.float32)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        total = int(lengths.sum())
        within = np.arange(total, dtype=np.int64) - np.repeat(offsets, lengths)
        sampled = np.repeat(counts > lengths, lengths)
        if sampled.any():  # uniform draws within each long list
            within[sampled] = (rng.random(int(sampled.sum())) * np.repeat(counts, lengths)[sampled]).astype(np.int64)
        items = Rows.of(self.indices[np.repeat(self.indptr[users], lengths) + within], self.n_items)
        entry_weights = np.repeat(weights, lengths).astype(np.float32)
        transposed = None
        if trainable:
            bag_of_entry = np.repeat(np.arange(users.size, dtype=np.int64), lengths)
            transposed = _transpose(items.slots.numpy(), bag_of_entry, entry_weights, items.rows.numel())
        return Bags(items, torch.from_numpy(offsets), torch.from_numpy(entry_weights), transposed)

    def user_terms(self, item_vectors: torch.Tensor, users: np.ndarray | None = None) -> torch.Tensor:
        """[users, dim]: the exact implicit term of ``users`` (all users when None), in chunks."""
        users = np.arange(self.counts.size) if users is None else np.asarray(users, dtype=np.int64)
        parts = []
        for start in range(0, users.size, _ALL_USERS_CHUNK):
            bags = self.bags(users[start:start + _ALL_USERS_CHUNK], trainable=False).to(item_vectors.device)
            parts.append(bags.sums(item_vectors[bags.items.rows]))
        if not parts:
            return item_vectors.new_zeros(0, item_vectors.shape[1])
        return torch.cat(parts)
