"""word2vec skip-gram with negative sampling over sessions (item2vec), on torch tensors.

Training follows word2vec: every token predicts the tokens within a window
reduced at random (1..window) around it in its session; frequent tokens are
subsampled (``sample``); each (token, context) pair is contrasted with
``negatives`` tokens drawn from unigram counts ** ``ns_exponent``; plain SGD
with a learning rate decaying linearly over all epochs.

Why it is fast on a CPU without autograd. The gradients of this loss are
closed-form, so a step is: gather the input rows of a batch of pairs, then for
the target and each negative column in turn gather its output rows, compute the
sigmoid of the dot products and scatter-add both updates (``index_add_``). Each
column works on [batch, dim] tensors that stay in cache; materialising the
whole [batch, 1 + negatives, dim] block as an autograd loop would costs 2.5x
more time here (measured: 4.8M vs 1.9M pairs/s). Pairs are generated with
slices, not gathers, over a block's concatenated sessions.

Rows repeated within a batch get their updates summed (a batched, not a
sequential, SGD). The step is gather/scatter bound, so on CUDA it runs in
float32 as well: mixed precision would only add casts.

Published: ``token`` (the input vectors of the tokens seen in training) and ``user`` (the unit mean of the unit
vectors of the user's last ``user_events`` tokens: in the token space, so the
tokens nearest a user are the model's guess at their next events). Validation
ranks each held-out event by cosine to that mean over the events before it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jobs.train import ranking
from jobs.train.config import SkipgramConfig
from jobs.train.fold_in import WarmStart, fold_in_sessions, nothing as _nothing
from jobs.train.loop import EntityVectors, LoopConfig, Metric, Trainable
from jobs.train.progress import Progress
from jobs.train.rows import to_device
from jobs.train.sequences import Histories, Ragged, Sessions, epoch_rng, torch_generator
from schemas.snapshot import HISTORIES_DIR, SESSIONS_DIR, Manifest
from schemas.vocab import UNKNOWN_INDEX

#: Tokens of concatenated sessions turned into pairs at once (bounds the memory of a block's pairs).
PAIR_CHUNK_TOKENS = 1 << 20
#: Not under torchrun with several processes: its SGD updates bypass autograd, so DDP has no
#: gradients to average (the train job refuses it with a ConfigError). It is fast in one process.
DATA_PARALLEL = False


class SkipGram(nn.Module):
    """Two tables: input vectors (what is published) and output (context) vectors."""

    def __init__(self, n_tokens: int, dim: int):
        super().__init__()
        self.input = nn.Parameter(torch.empty(n_tokens, dim), requires_grad=False)
        self.output = nn.Parameter(torch.zeros(n_tokens, dim), requires_grad=False)

    def reset_parameters(self, generator: torch.Generator) -> None:
        dim = self.input.shape[1]
        with torch.no_grad():  # word2vec's initialisation
            self.input.copy_((torch.rand(self.input.shape, generator=generator) - 0.5) / dim)
            self.output.zero_()


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """word2vec's subsampling: keep a token with probability (sqrt(f / t) + 1) * t / f,
    f its count and t = sample * total. The unknown token is always dropped."""
    keep = np.ones(counts.size)
    if sample > 0:
        threshold = sample * counts.sum()
        seen = counts > 0
        keep[seen] = np.minimum(1.0, (np.sqrt(counts[seen] / threshold) + 1) * threshold / counts[seen])
    keep[UNKNOWN_INDEX] = 0.0
    return keep


def negative_table(counts: np.ndarray, exponent: float) -> torch.Tensor:
    """A table of token ids in proportion to counts ** exponent: a uniform index into it is a
    negative sample (a cache-sized table instead of a binary search per draw)."""
    weights = counts.astype(np.float64) ** exponent
    weights[UNKNOWN_INDEX] = 0.0
    if weights.sum() == 0:
        weights[:] = 1.0
        weights[UNKNOWN_INDEX] = 0.0
    size = int(min(max(1 << 20, 16 * counts.size), 1 << 26))
    cumulative = np.cumsum(weights / weights.sum())
    table = np.searchsorted(cumulative, (np.arange(size) + 0.5) / size).clip(max=counts.size - 1)
    return torch.from_numpy(table.astype(np.int64))


def pairs(block: Ragged, keep: torch.Tensor, window: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(input token, target token) pairs of a block of sessions, word2vec style."""
    tokens = torch.from_numpy(block.values)
    session = torch.from_numpy(np.repeat(np.arange(len(block)), block.lengths))
    kept = torch.rand(tokens.numel(), generator=generator, dtype=torch.float64) < keep[tokens]
    tokens, session = tokens[kept], session[kept]
    reach = window - torch.randint(0, window, (tokens.numel(),), generator=generator)  # 1..window per token
    inputs, targets = [], []
    for offset in range(1, window + 1):
        same = session[:-offset] == session[offset:]
        left, right = tokens[:-offset], tokens[offset:]
        forward = same & (reach[:-offset] >= offset)  # the left token sees the right one
        backward = same & (reach[offset:] >= offset)
        inputs += [right[forward], left[backward]]
        targets += [left[forward], right[backward]]
    return torch.cat(inputs), torch.cat(targets)


def _chunks(block: Ragged, tokens: int) -> list[Ragged]:
    """Whole sessions, about ``tokens`` tokens per chunk."""
    bounds = np.searchsorted(block.offsets, np.arange(tokens, block.offsets[-1], tokens))
    edges = np.unique(np.concatenate([[0], bounds, [len(block)]]))
    return [block.take(np.arange(a, b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class SkipgramLearner:
    metric = Metric(f"valid_hr_at_{ranking.K}", "maximize")

    def __init__(self, cfg: SkipgramConfig, sessions: Sessions, histories: Histories, n_tokens: int,
                 device: torch.device, training: Sessions | None = None):
        """``sessions`` give the token counts; the steps go over ``training`` (default: the same; a fold-in
        of new tokens: the sessions that hold one)."""
        self.cfg, self.sessions, self.histories, self.device = cfg, sessions, histories, device
        self.training = training if training is not None else sessions
        self.after_step = _nothing  # a fold-in puts the parent's weights back here (jobs.train.fold_in)
        self.module = SkipGram(n_tokens, cfg.dim)
        self.module.reset_parameters(torch.Generator().manual_seed(cfg.seed))
        self.module.to(device)
        counts = sessions.token_counts(n_tokens)
        self.trained = np.flatnonzero(counts > 0).astype(np.int32)  # tokens absent from training keep random vectors
        self.keep = torch.from_numpy(keep_probabilities(counts, cfg.sample))
        self.table = negative_table(counts, cfg.ns_exponent).to(device)
        self.cases = histories.cases(cfg.eval_users, cfg.seed)

    def _lr(self, progress: float) -> float:
        return max(self.cfg.min_lr, self.cfg.lr - (self.cfg.lr - self.cfg.min_lr) * progress)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        words_per_epoch = max(self.training.tokens, 1)
        done = (epoch - 1) * words_per_epoch
        total = cfg.epochs * words_per_epoch
        progress = Progress(f"epoch {epoch}/{cfg.epochs}", words_per_epoch, "words")
        loss_sum, pair_count = torch.zeros((), device=self.device), 0
        for b, block in enumerate(self.training.blocks(cfg.seed, epoch)):
            for c, chunk in enumerate(_chunks(block, PAIR_CHUNK_TOKENS)):
                generator = torch_generator(epoch_rng(cfg.seed, epoch, b, c))
                inputs, targets = pairs(chunk, self.keep, cfg.window, generator)
                order = torch.randperm(inputs.numel(), generator=generator)
                inputs, targets = to_device(inputs[order], self.device), to_device(targets[order], self.device)
                # negatives drawn where they are used: a host tensor copied every step would make a GPU wait
                draws = generator if self.device.type == "cpu" else torch.Generator(self.device).manual_seed(
                    int(torch.randint(0, 2**62, (1,), generator=generator)))
                words = int(chunk.values.size)
                steps = max(1, math.ceil(inputs.numel() / cfg.batch_size))
                for step, start in enumerate(range(0, inputs.numel(), cfg.batch_size)):
                    lr = self._lr((done + words * step / steps) / total)
                    batch_inputs, batch_targets = inputs[start:start + cfg.batch_size], targets[start:start + cfg.batch_size]
                    negatives = self.table[
                        (torch.rand(cfg.negatives, batch_inputs.numel(), generator=draws, device=self.device)
                         * self.table.numel()).long()
                    ]
                    loss_sum += self._step(batch_inputs, batch_targets, negatives, lr)
                    self.after_step()
                pair_count += inputs.numel()
                done += words
                progress.advance(words)
        return {"train_loss": float(loss_sum) / max(pair_count, 1), "lr": self._lr(min(done / total, 1.0)),
                "words_per_s": progress.rate}

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor, lr: float) -> torch.Tensor:
        """One SGD step on (input, target) pairs with their negatives; returns the summed loss (a tensor,
        so that no step waits on a conversion to Python)."""
        table_in, table_out = self.module.input.data, self.module.output.data
        vin = table_in[inputs]
        grad_in = torch.zeros_like(vin)
        logits = []
        for column in range(negatives.shape[0] + 1):
            rows = targets if column == 0 else negatives[column - 1]
            vout = table_out[rows]
            logit = (vout * vin).sum(1, keepdim=True)
            logits.append(logit)
            probability = torch.sigmoid(logit)
            gradient = (1.0 - probability).mul_(lr) if column == 0 else probability.neg_().mul_(lr)
            grad_in.addcmul_(gradient, vout)
            table_out.index_add_(0, rows, vin * gradient)
        table_in.index_add_(0, inputs, grad_in)
        positive, negative = logits[0], torch.cat(logits[1:], 1)
        return -(nn.functional.logsigmoid(positive).sum() + nn.functional.logsigmoid(-negative).sum())

    # -- validation and vectors --------------------------------------------------------------
    def _unit_vectors(self) -> torch.Tensor:
        vectors = self.module.input.data
        return vectors / vectors.norm(dim=1, keepdim=True).clamp(min=1e-12)

    def _profiles(self, sequences: Ragged, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit mean of the unit vectors of each sequence's last known tokens; and which rows have one."""
        recent = _known(sequences).last(self.cfg.user_events)
        rows = torch.from_numpy(np.repeat(np.arange(len(recent)), recent.lengths)).to(unit.device)
        sums = torch.zeros(len(recent), unit.shape[1], device=unit.device)
        sums.index_add_(0, rows, unit[torch.from_numpy(recent.values).to(unit.device)])
        found = torch.from_numpy(recent.lengths > 0).to(unit.device)
        return sums / sums.norm(dim=1, keepdim=True).clamp(min=1e-12), found

    def evaluate(self) -> dict[str, float]:
        unit = self._unit_vectors()

        def score(contexts: Ragged) -> torch.Tensor:
            profiles, found = self._profiles(contexts, unit)
            scores = profiles @ unit.T
            scores[~found] = math.nan  # no known token before the event: no prediction (a miss)
            return scores

        return ranking.evaluate(self.cases, score, unit.shape[0], self.cfg.exclude_seen)

    def entities(self) -> dict[str, EntityVectors]:
        tokens = self.module.input.data.float().cpu().numpy()
        unit = self._unit_vectors()
        users, vectors = [], []
        for batch_users, recent, _ in self.histories.batches():
            profiles, found = self._profiles(recent, unit)
            users.append(batch_users[found.cpu().numpy()])
            vectors.append(profiles[found].float().cpu().numpy())
        return {
            "token": EntityVectors("token", self.trained, tokens[self.trained], None, "token"),
            "user": EntityVectors("user", np.concatenate(users).astype(np.int32) if users else np.empty(0, np.int32),
                                  np.concatenate(vectors) if vectors else np.empty((0, tokens.shape[1]), np.float32),
                                  None, "token"),
        }

    def state_dict(self) -> dict:
        return {}  # plain SGD: the weights (saved by the loop) and (seed, epoch) are all it needs

    def load_state_dict(self, state: dict) -> None:
        pass


def _known(sequences: Ragged) -> Ragged:
    """The sequences without the unknown token."""
    keep = sequences.values != UNKNOWN_INDEX
    kept_before = np.concatenate([[0], np.cumsum(keep)])
    return Ragged(sequences.values[keep], kept_before[sequences.offsets].astype(np.int64))


def build(cfg: SkipgramConfig, snapshot_dir: Path, manifest: Manifest, device: torch.device,
          warm: WarmStart | None = None) -> Trainable:
    sessions = Sessions(snapshot_dir / SESSIONS_DIR, cfg.shuffle_buffer_sessions)
    histories = Histories(snapshot_dir / HISTORIES_DIR)
    sizes = {entity: stats.size for entity, stats in manifest.vocab.items()}
    learner = SkipgramLearner(cfg, sessions, histories, sizes["token"], device,
                              training=fold_in_sessions(sessions, warm))
    params = {"dim": cfg.dim, "sizes": sizes, "window": cfg.window, "negatives": cfg.negatives,
              "user_events": cfg.user_events, "spaces": {"token": "token", "user": "token"}}
    return Trainable(learner, LoopConfig(cfg.epochs), params,
                 f"{sizes['token']} tokens, {sessions.sessions} sessions / {sessions.tokens} events, "
                 f"{len(learner.cases)} validation cases, dim {cfg.dim}")
