"""The rows of a table that a batch touches, found on the host while the device trains.

A batch's lookups become ``Rows``: the distinct table rows (what the step gathers
and the optimiser updates) and, per position, its slot among them. Built with
numpy from the batch's indices, so the device never has to find distinct values
(``torch.unique`` on CUDA waits for the host).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Rows:
    rows: torch.Tensor  # int64 [k]: distinct table rows, ascending
    slots: torch.Tensor  # int64 [n]: position i looks up rows[slots[i]]

    @classmethod
    def of(cls, indices: np.ndarray, table_size: int) -> "Rows":
        rows, slots = distinct(indices, table_size)
        return cls(torch.from_numpy(rows), torch.from_numpy(slots))

    def to(self, device: torch.device) -> "Rows":
        return Rows(to_device(self.rows, device), to_device(self.slots, device))

    def at(self, positions: torch.Tensor) -> "Rows":
        """The same rows for a subset of the positions (a data-parallel rank's share)."""
        return Rows(self.rows, self.slots[positions])


def distinct(indices: np.ndarray, table_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values ascending, slot of each index among them), int64.

    A mark per table row when the table is small next to the batch (linear time), else a sort."""
    indices = np.asarray(indices, dtype=np.int64)
    if table_size <= 8 * indices.size:
        seen = np.zeros(table_size, dtype=bool)
        seen[indices] = True
        rows = np.flatnonzero(seen)
        slot_of = np.empty(table_size, dtype=np.int64)
        slot_of[rows] = np.arange(rows.size)
        return rows, slot_of[indices]
    rows, slots = np.unique(indices, return_inverse=True)
    return rows.astype(np.int64), slots.astype(np.int64).reshape(-1)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``: through pinned memory and without waiting, on CUDA."""
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)
