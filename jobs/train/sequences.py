"""Token sequences of an events snapshot, streamed from Parquet (see schemas.events).

- ``Sessions``: the training sessions as shuffled blocks of concatenated token ids.
  Shuffling is seeded per (seed, epoch): an epoch's blocks are the same whether
  training ran straight through or resumed. Data within the buffer is read once
  and kept; larger data streams file by file, so memory stays bounded by
  ``buffer_sessions``.
- ``Histories``: each indexed user's last events, for validation cases (a
  held-out event and everything before it) and for user vectors.

A sequence batch is ``Ragged``: one flat tensor of tokens plus offsets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from schemas.vocab import UNKNOWN_INDEX

_READ_ROWS = 1 << 14


@dataclass(frozen=True)
class Ragged:
    """Variable-length sequences: ``values[offsets[i]:offsets[i + 1]]`` is sequence ``i``."""

    values: np.ndarray  # int64
    offsets: np.ndarray  # int64, len = sequences + 1

    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_arrow(cls, lists: pa.Array | pa.ChunkedArray) -> "Ragged":
        if isinstance(lists, pa.ChunkedArray):
            lists = lists.combine_chunks() if lists.num_chunks != 1 else lists.chunk(0)
        offsets = lists.offsets.to_numpy().astype(np.int64)
        values = lists.values.to_numpy(zero_copy_only=False).astype(np.int64)[offsets[0]:offsets[-1]]
        return cls(values, offsets - offsets[0])

    @classmethod
    def concat(cls, parts: list["Ragged"]) -> "Ragged":
        if not parts:
            return cls(np.empty(0, np.int64), np.zeros(1, np.int64))
        shifts = np.cumsum([0] + [p.values.size for p in parts[:-1]])
        offsets = np.concatenate([parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, shifts)])
        return cls(np.concatenate([p.values for p in parts]), offsets)

    def take(self, rows: np.ndarray) -> "Ragged":
        """Sequences ``rows`` in that order."""
        lengths = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        source = np.repeat(self.offsets[:-1][rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Ragged(self.values[source], offsets)

    def last(self, count: int) -> "Ragged":
        """The last ``count`` tokens of every sequence (all of a shorter one)."""
        starts = np.maximum(self.offsets[:-1], self.offsets[1:] - count)
        lengths = self.offsets[1:] - starts
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        source = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Ragged(self.values[source], offsets)

    def padded(self, fill: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """([n, longest] tokens right-padded with ``fill``, [n] lengths)."""
        lengths = self.lengths
        width = int(lengths.max()) if lengths.size else 0
        out = np.full((len(self), max(width, 1)), fill, np.int64)
        rows = np.repeat(np.arange(len(self)), lengths)
        out[rows, np.arange(self.values.size) - np.repeat(self.offsets[:-1], lengths)] = self.values
        return torch.from_numpy(out), torch.from_numpy(lengths)


def epoch_rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    """The generator of one epoch (and sub-stream): the same on a resumed run."""
    return np.random.default_rng([seed, epoch, *stream])


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(0, 2**62)))


class Sessions:
    """The training sessions of a snapshot (``sessions/``), as shuffled blocks."""

    def __init__(self, directory: Path, buffer_sessions: int):
        self.files = sorted(directory.glob("*.parquet"))
        self.buffer = buffer_sessions
        lengths = [pq.read_table(f, columns=["length"])["length"] for f in self.files]
        self.sessions = sum(len(column) for column in lengths)
        self.tokens = sum(int(pc.sum(column).as_py() or 0) for column in lengths)
        #: sessions with a next event to predict (two events or more)
        self.sequences = sum(int(pc.sum(pc.greater_equal(column, 2)).as_py() or 0) for column in lengths)
        self._cached = self._read_all() if self.sessions <= buffer_sessions else None

    def _read_all(self) -> Ragged:
        return Ragged.concat([Ragged.from_arrow(pq.read_table(f, columns=["tokens"])["tokens"]) for f in self.files])

    def _unshuffled_blocks(self, rng: np.random.Generator) -> Iterator[Ragged]:
        """Blocks of at most ``buffer`` sessions (whole sessions), files in a seeded order."""
        if self._cached is not None:
            yield self._cached
            return
        pending, size = [], 0
        for index in rng.permutation(len(self.files)):
            batches = pq.ParquetFile(self.files[index]).iter_batches(batch_size=min(_READ_ROWS, self.buffer),
                                                                     columns=["tokens"])
            for batch in batches:
                part = Ragged.from_arrow(batch.column(0))
                while len(part):
                    room = self.buffer - size
                    pending.append(part.take(np.arange(min(room, len(part)))))
                    size += len(pending[-1])
                    part = part.take(np.arange(room, len(part))) if len(part) > room else part.take(np.arange(0))
                    if size >= self.buffer:
                        yield Ragged.concat(pending)
                        pending, size = [], 0
        if pending:
            yield Ragged.concat(pending)

    def blocks(self, seed: int, epoch: int) -> Iterator[Ragged]:
        """Blocks of whole sessions in a seeded random order."""
        rng = epoch_rng(seed, epoch)
        for block in self._unshuffled_blocks(rng):
            yield block.take(rng.permutation(len(block)))

    def with_tokens_from(self, first: int) -> "Sessions":
        """The sessions holding a token index ``first`` or above (tokens a rebuild appended), in memory: what
        a fold-in of new tokens trains on (jobs.train.fold_in); the counts are theirs."""
        kept = []
        for block in self._unshuffled_blocks(np.random.default_rng(0)):
            new = np.concatenate([[0], np.cumsum(block.values >= first)])
            kept.append(block.take(np.flatnonzero(new[block.offsets[1:]] > new[block.offsets[:-1]])))
        chosen = Ragged.concat(kept) if kept else Ragged(np.empty(0, np.int64), np.zeros(1, np.int64))
        sessions = object.__new__(Sessions)
        sessions.files, sessions.buffer, sessions._cached = [], max(len(chosen), 1), chosen
        sessions.sessions, sessions.tokens = len(chosen), int(chosen.values.size)
        sessions.sequences = int(np.count_nonzero(chosen.lengths >= 2))
        return sessions

    def token_counts(self, size: int) -> np.ndarray:
        """Occurrences of every token index in the training sessions."""
        counts = np.zeros(size, np.int64)
        for block in self._unshuffled_blocks(np.random.default_rng(0)):
            counts += np.bincount(block.values, minlength=size)[:size]
        return counts


@dataclass(frozen=True)
class Cases:
    """Validation cases: predict ``targets[i]`` from ``contexts`` sequence ``i`` (everything before it)."""

    contexts: Ragged
    targets: np.ndarray
    unknown_targets: int = 0  # held-out events of the unknown token: no model can predict them, not counted

    def __len__(self) -> int:
        return self.targets.size


class Histories:
    """Each indexed user's last events (``histories/``), the held-out ones last."""

    def __init__(self, directory: Path):
        self.files = sorted(directory.glob("*.parquet"))

    def batches(self, rows: int = _READ_ROWS) -> Iterator[tuple[np.ndarray, Ragged, np.ndarray]]:
        """(user indices, recent tokens, held-out counts) in batches of ``rows`` users."""
        for f in self.files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=rows, columns=["user", "recent", "held_out"]):
                yield (batch.column(0).to_numpy().astype(np.int64), Ragged.from_arrow(batch.column(1)),
                       batch.column(2).to_numpy().astype(np.int64))

    def cases(self, max_users: int, seed: int) -> Cases:
        """Every held-out event of at most ``max_users`` users (a seeded sample), with its context."""
        held = np.concatenate([pq.read_table(f, columns=["held_out"])["held_out"].to_numpy() for f in self.files]) \
            if self.files else np.empty(0, np.int64)
        eligible = np.flatnonzero(held > 0)
        if eligible.size > max_users:
            eligible = np.sort(np.random.default_rng([seed, 0xE7A1]).choice(eligible, max_users, replace=False))
        wanted = np.zeros(held.size, bool)
        wanted[eligible] = True
        contexts, targets, start, unknown = [], [], 0, 0
        for batch_users, recent, held_out in self.batches():
            take = np.flatnonzero(wanted[start:start + batch_users.size])
            start += batch_users.size
            for row in take:
                sequence = recent.values[recent.offsets[row]:recent.offsets[row + 1]]
                for j in range(int(held_out[row])):
                    cut = sequence.size - int(held_out[row]) + j
                    if sequence[cut] == UNKNOWN_INDEX:
                        unknown += 1
                        continue
                    contexts.append(sequence[:cut])
                    targets.append(sequence[cut])
        offsets = np.concatenate([[0], np.cumsum([c.size for c in contexts])]).astype(np.int64)
        values = np.concatenate(contexts) if contexts else np.empty(0, np.int64)
        return Cases(Ragged(values.astype(np.int64), offsets),
                     np.asarray(targets, np.int64), unknown)
