"""Batches of (user, item, rating) streamed from a snapshot's Parquet.

Shuffling is seeded per epoch (``seed``, ``epoch``), so an epoch's batches are
the same whether training ran straight through or resumed from a checkpoint.
Data that fits in the shuffle buffer is read once and kept in memory; larger
data streams block by block (a block is shuffled, its rows batched), so memory
stays bounded by the buffer size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

_READ_ROWS = 1 << 16


@dataclass(frozen=True)
class Batch:
    users: torch.Tensor
    items: torch.Tensor
    ratings: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        non_blocking = device.type == "cuda"
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in (self.users, self.items, self.ratings)))

    def __len__(self) -> int:
        return self.users.shape[0]

    def take(self, rows: np.ndarray) -> "Batch":
        index = torch.from_numpy(rows)
        return Batch(self.users[index], self.items[index], self.ratings[index])


def _columns(table: pa.Table | pa.RecordBatch) -> Batch:
    return Batch(
        torch.from_numpy(table.column("user").to_numpy().astype(np.int64)),
        torch.from_numpy(table.column("item").to_numpy().astype(np.int64)),
        torch.from_numpy(table.column("rating").to_numpy().astype(np.float32)),
    )


def _concat(parts: list[Batch]) -> Batch:
    return Batch(*(torch.cat([getattr(p, f) for p in parts]) for f in ("users", "items", "ratings")))


class Interactions:
    """One split of a snapshot (or arrays in memory), as shuffled batches."""

    def __init__(self, files: list[Path] | None = None, data: Batch | None = None, buffer_rows: int = 2_000_000):
        self.files = sorted(files or [])
        self.buffer_rows = buffer_rows
        self.rows = len(data) if data is not None else sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
        self._cached = data
        if self._cached is None and self.rows <= buffer_rows:
            self._cached = self._read_all()

    @classmethod
    def from_dir(cls, directory: Path, buffer_rows: int) -> "Interactions":
        return cls(files=list(directory.glob("*.parquet")), buffer_rows=buffer_rows)

    def _read_all(self) -> Batch:
        parts = [_columns(pq.read_table(f, columns=["user", "item", "rating"])) for f in self.files]
        return _concat(parts) if parts else Batch(*(torch.empty(0, dtype=d) for d in (torch.long,) * 2 + (torch.float,)))

    def _blocks(self, rng: np.random.Generator) -> Iterator[Batch]:
        if self._cached is not None:
            yield self._cached
            return
        pending: list[Batch] = []
        size = 0
        for index in rng.permutation(len(self.files)):
            for record_batch in pq.ParquetFile(self.files[index]).iter_batches(
                batch_size=_READ_ROWS, columns=["user", "item", "rating"]
            ):
                pending.append(_columns(record_batch))
                size += record_batch.num_rows
                if size >= self.buffer_rows:
                    yield _concat(pending)
                    pending, size = [], 0
        if pending:
            yield _concat(pending)

    def batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[Batch]:
        """Shuffled batches; a block's remainder carries into the next block."""
        rng = np.random.default_rng([seed, epoch])
        carry: Batch | None = None
        for block in self._blocks(rng):
            if carry is not None:
                block = _concat([carry, block])
            order = torch.from_numpy(rng.permutation(len(block)))
            full = len(block) - len(block) % batch_size
            for start in range(0, full, batch_size):
                take = order[start : start + batch_size]
                yield Batch(block.users[take], block.items[take], block.ratings[take])
            rest = order[full:]
            carry = Batch(block.users[rest], block.items[rest], block.ratings[rest]) if len(rest) else None
        if carry is not None:
            yield carry

    def in_order(self, batch_size: int) -> Iterator[Batch]:
        """Unshuffled batches, for evaluation."""
        if self._cached is not None:
            data = self._cached
            for start in range(0, len(data), batch_size):
                yield Batch(*(t[start : start + batch_size] for t in (data.users, data.items, data.ratings)))
            return
        for f in self.files:
            for record_batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=["user", "item", "rating"]):
                yield _columns(record_batch)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """All (user, item) index pairs, e.g. to build the implicit-feedback matrix."""
        users, items = [], []
        for batch in self.in_order(_READ_ROWS):
            users.append(batch.users.numpy())
            items.append(batch.items.numpy())
        if not users:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(users), np.concatenate(items)

    def touching(self, first_user: int, first_item: int) -> "Interactions":
        """The ratings of a user from ``first_user`` on or of an item from ``first_item`` on (what a rebuild
        appended), in memory: what a fold-in of new keys trains on."""
        parts = []
        for batch in self.in_order(_READ_ROWS):
            keep = (batch.users >= first_user) | (batch.items >= first_item)
            parts.append(Batch(batch.users[keep], batch.items[keep], batch.ratings[keep]))
        data = _concat(parts) if parts else self._read_all()
        return Interactions(data=data, buffer_rows=max(len(data), 1))

    def steps_per_epoch(self, batch_size: int) -> int:
        return -(-self.rows // batch_size)
