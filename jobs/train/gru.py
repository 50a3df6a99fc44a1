"""GRU next-event model over sessions (GRU4Rec-style): embedding -> GRU -> scores of every token.

    state_t = GRU(embedding(token_1..t));   score(next = j) = state_t . output_j + bias_j

Trained on every position of every training session (cross-entropy over all
tokens, or a sampled softmax over the target and a shared set of negatives,
corrected by their sampling probability), with AdamW, a warm-up then cosine
learning rate, dropout, and early stopping on validation HR@10 (the best epoch's
weights are kept). Sessions of similar length are batched together, so little
is padding.

Published (tokens seen in training only): ``token`` (the input embeddings), ``user`` (the final state over the
user's last ``user_events`` events: a vector in the GRU's state space, of size
``hidden``, not comparable with token vectors) and ``next_token`` (the output
layer: a token's score as the user's next event is user . vector + bias, the
query the ``next_events`` SQL macro runs). Validation ranks each held-out event by
that score after the events before it, the user's history across sessions.

Data-parallel: each rank trains on its sessions of every batch (``jobs.train.distributed``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jobs.train import distributed, ranking
from jobs.train.config import GRUConfig
from jobs.train.fold_in import WarmStart, fold_in_sessions, nothing as _nothing
from jobs.train.loop import EntityVectors, LoopConfig, Metric, Trainable
from jobs.train.precision import Precision
from jobs.train.progress import Progress
from jobs.train.rows import to_device
from jobs.train.sequences import Histories, Ragged, Sessions, epoch_rng, torch_generator
from schemas.snapshot import HISTORIES_DIR, SESSIONS_DIR, Manifest
from schemas.vocab import UNKNOWN_INDEX

#: The loss "auto" uses a full softmax up to this many tokens.
FULL_SOFTMAX_MAX_TOKENS = 50_000
#: Batches are formed from groups of this many batches' worth of sessions sorted by length.
_LENGTH_GROUPS = 32
_WARMUP = 0.1
#: Trains under torchrun with several processes (see jobs.train.distributed).
DATA_PARALLEL = True


class GRU4Rec(nn.Module):
    def __init__(self, n_tokens: int, dim: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(n_tokens, dim)
        self.gru = nn.GRU(dim, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Embedding(n_tokens, hidden)
        self.output_bias = nn.Embedding(n_tokens, 1)

    def reset_parameters(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            self.embedding.weight.normal_(0.0, 0.05, generator=generator)
            self.output.weight.normal_(0.0, 0.05, generator=generator)
            self.output_bias.weight.zero_()
            bound = 1.0 / math.sqrt(self.gru.hidden_size)
            for weight in self.gru.parameters():
                weight.uniform_(-bound, bound, generator=generator)

    def states(self, tokens: torch.Tensor) -> torch.Tensor:
        """[batch, time] tokens -> [batch, time, hidden] states (right padding does not reach earlier states)."""
        out, _ = self.gru(self.dropout(self.embedding(tokens)))
        return self.dropout(out)

    forward = states  # what a training step calls (through DDP when data-parallel)

    def final_states(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[batch, hidden]: each sequence's state after its last token."""
        states = self.states(tokens)
        return states[torch.arange(tokens.shape[0], device=tokens.device), (lengths - 1).clamp(min=0)]

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        return states @ self.output.weight.T + self.output_bias.weight.squeeze(1)


def _schedule(progress: float) -> float:
    """Learning-rate factor: linear warm-up over the first 10% of training, then cosine to 0."""
    if progress < _WARMUP:
        return 0.04 + 0.96 * progress / _WARMUP
    return 0.5 * (1 + math.cos(math.pi * min((progress - _WARMUP) / (1 - _WARMUP), 1.0)))


def _batches(block: Ragged, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row groups of sessions with at least two events, similar lengths together, in random order."""
    usable = np.flatnonzero(block.lengths >= 2)
    groups = [usable[i:i + batch_size * _LENGTH_GROUPS] for i in range(0, usable.size, batch_size * _LENGTH_GROUPS)]
    batches = []
    for group in groups:
        group = group[np.argsort(block.lengths[group], kind="stable")]
        batches += [group[i:i + batch_size] for i in range(0, group.size, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _targets(batch: Ragged) -> int:
    """Events a batch of sessions asks to predict: every one after a session's first, but the unknown token."""
    later = np.ones(batch.values.size, bool)
    later[batch.offsets[:-1][batch.lengths > 0]] = False
    return int(np.count_nonzero(later & (batch.values != UNKNOWN_INDEX)))


class GRULearner:
    metric = Metric(f"valid_hr_at_{ranking.K}", "maximize")

    def __init__(self, cfg: GRUConfig, sessions: Sessions, histories: Histories, n_tokens: int,
                 device: torch.device, training: Sessions | None = None):
        """``sessions`` give the token counts; the steps go over ``training`` (default: the same; a fold-in
        of new tokens: the sessions that hold one)."""
        self.cfg, self.sessions, self.histories, self.device = cfg, sessions, histories, device
        self.training = training if training is not None else sessions
        self.after_step = _nothing  # a fold-in puts the parent's weights back here (jobs.train.fold_in)
        self.module = GRU4Rec(n_tokens, cfg.dim, cfg.hidden, cfg.layers, cfg.dropout)
        self.module.reset_parameters(torch.Generator().manual_seed(cfg.seed))
        self.module.to(device)
        self.train_module: nn.Module = self.module
        self.sampled = cfg.loss == "sampled" or (cfg.loss == "auto" and n_tokens > FULL_SOFTMAX_MAX_TOKENS)
        counts = sessions.token_counts(n_tokens).astype(np.float64)
        counts[UNKNOWN_INDEX] = 0
        self.trained = np.flatnonzero(counts > 0).astype(np.int32)  # the others keep their random initial vectors
        self.noise = torch.from_numpy((counts ** 0.75 / max((counts ** 0.75).sum(), 1e-12))).float().to(device)
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.precision = Precision(device, cfg.precision)
        self.sequences_done = 0  # drives the learning-rate schedule (exact however the data is blocked)
        self.cases = histories.cases(cfg.eval_users, cfg.seed)

    def _loss(self, states: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.sampled:
            return nn.functional.cross_entropy(self.module.scores(states).float(), targets)
        # sampled softmax: the target against negatives shared by the batch, logits minus log of
        # the expected count of each candidate in the sample (logQ correction); accidental hits masked
        count = self.cfg.sampled_negatives
        negatives = torch.multinomial(self.noise.cpu(), count, replacement=True, generator=generator).to(states.device)
        weights, bias = self.module.output.weight, self.module.output_bias.weight.squeeze(1)
        log_q = torch.log(self.noise * count + 1e-12)
        positive = (states * weights[targets]).sum(1) + bias[targets] - log_q[targets]
        negative = states @ weights[negatives].T + bias[negatives] - log_q[negatives]
        negative = negative.masked_fill(negatives[None, :] == targets[:, None], -math.inf)
        logits = torch.cat([positive[:, None], negative], 1).float()
        return nn.functional.cross_entropy(logits, torch.zeros_like(targets))

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        self.module.train()
        # every rank draws the same batches and negatives; dropout masks differ by rank (rank 0: as in one process)
        rng = epoch_rng(cfg.seed, epoch, 1)
        torch.manual_seed(int(rng.integers(0, 2**62)) + distributed.rank())  # the same on a resumed run
        generator = torch_generator(rng)
        total = max(cfg.epochs * self.training.sequences, 1)
        progress = Progress(f"epoch {epoch}/{cfg.epochs}", self.training.tokens, "events")
        loss_sum, predicted = torch.zeros((), dtype=torch.float64, device=self.device), 0
        for block in self.training.blocks(cfg.seed, epoch):
            for rows in _batches(block, cfg.batch_size, rng):
                lr = cfg.lr * _schedule(min(self.sequences_done / total, 1.0))  # progress before this batch
                self.sequences_done += len(rows)
                batch = block.take(rows)  # every rank forms the same batch
                progress.advance(int(batch.lengths.sum()))
                wanted = _targets(batch)
                if not wanted:
                    continue  # nothing to predict (only unknown tokens): no step, on any rank
                my_rows, has_rows = distributed.shard(len(rows))  # all of it in one process
                part = batch if my_rows.size == len(rows) else batch.take(my_rows)
                tokens, lengths = part.padded()
                tokens = to_device(tokens, self.device)
                inputs, targets = tokens[:, :-1], tokens[:, 1:]
                valid = (torch.arange(targets.shape[1], device=self.device)[None, :] < (to_device(lengths, self.device) - 1)[:, None])
                valid &= targets != UNKNOWN_INDEX
                count = _targets(part) if has_rows else 0  # counted on the host: no wait on the device
                if not count:  # this rank has nothing to predict but must take part in the step: a stand-in, weight 0
                    valid = torch.zeros_like(valid)
                    valid[0, 0] = True
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                with self.precision.autocast():
                    states = self.train_module(inputs)[valid]
                    loss = self._loss(states, targets[valid], generator)
                self.precision.step(loss * distributed.loss_weight(count, wanted), self.optimizer)
                self.after_step()
                loss_sum += loss.detach().double() * count  # stays on the device until the epoch ends
                predicted += count
        loss_sum, predicted = distributed.all_sum(float(loss_sum), predicted)
        return {"train_loss": loss_sum / max(predicted, 1), "lr": self.optimizer.param_groups[0]["lr"],
                "events_per_s": progress.rate}

    # -- validation and vectors --------------------------------------------------------------
    def _final_states(self, sequences: Ragged) -> tuple[torch.Tensor, torch.Tensor]:
        """Final state over each sequence's last ``user_events`` tokens; and which rows have any."""
        recent = sequences.last(self.cfg.user_events)
        tokens, lengths = recent.padded()
        with torch.no_grad(), self.precision.autocast():
            states = self.module.final_states(tokens.to(self.device), lengths.to(self.device)).float()
        return states, lengths > 0

    def evaluate(self) -> dict[str, float]:
        self.module.eval()

        def score(contexts: Ragged) -> torch.Tensor:
            states, found = self._final_states(contexts)
            scores = self.module.scores(states).float()
            scores[~found.to(scores.device)] = math.nan  # no event before it: no prediction (a miss)
            return scores

        metrics = ranking.evaluate(self.cases, score, self.module.output.weight.shape[0], self.cfg.exclude_seen)
        self.module.train()
        return metrics

    def entities(self) -> dict[str, EntityVectors]:
        self.module.eval()
        users, states = [], []
        for batch_users, recent, _ in self.histories.batches(1024):
            batch_states, found = self._final_states(recent)
            users.append(batch_users[found.numpy()])
            states.append(batch_states[found.to(batch_states.device)].cpu().numpy())
        index = self.trained
        return {
            "token": EntityVectors("token", index, self.module.embedding.weight.detach().float().cpu().numpy()[index],
                                   None, "token"),
            "user": EntityVectors("user", np.concatenate(users).astype(np.int32) if users else np.empty(0, np.int32),
                                  np.concatenate(states) if states else np.empty((0, self.cfg.hidden), np.float32),
                                  None, "state"),
            "next_token": EntityVectors("token", index, self.module.output.weight.detach().float().cpu().numpy()[index],
                                        self.module.output_bias.weight.detach().float().squeeze(1).cpu().numpy()[index],
                                        "state"),
        }

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "precision": self.precision.state_dict(),
                "sequences_done": self.sequences_done}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.precision.load_state_dict(state["precision"])
        self.sequences_done = state["sequences_done"]


def build(cfg: GRUConfig, snapshot_dir: Path, manifest: Manifest, device: torch.device,
          warm: WarmStart | None = None) -> Trainable:
    sessions = Sessions(snapshot_dir / SESSIONS_DIR, cfg.shuffle_buffer_sessions)
    histories = Histories(snapshot_dir / HISTORIES_DIR)
    sizes = {entity: stats.size for entity, stats in manifest.vocab.items()}
    learner = GRULearner(cfg, sessions, histories, sizes["token"], device, training=fold_in_sessions(sessions, warm))
    params = {"dim": cfg.dim, "hidden": cfg.hidden, "layers": cfg.layers, "sizes": sizes,
              "user_events": cfg.user_events, "loss": "sampled" if learner.sampled else "full",
              "spaces": {"token": "token", "user": "state", "next_token": "state"}}
    return Trainable(learner, LoopConfig(cfg.epochs, patience=cfg.patience, restore_best=True), params,
                 f"{sizes['token']} tokens, {sessions.sessions} sessions / {sessions.tokens} events, "
                 f"{len(learner.cases)} validation cases, dim {cfg.dim}, hidden {cfg.hidden}, "
                 f"{'sampled' if learner.sampled else 'full'} softmax")
