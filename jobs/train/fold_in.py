"""Fold-in: start a run from a finished run's weights, with rows for what a rebuilt snapshot appended.

A rebuild keeps every index and appends new keys (jobs.index.vocab), so a table
trained on the parent snapshot is the first rows of the same table on the new
one. ``[train] warm_start = "current"`` (the run of the model's current version)
or a run id loads that run's final weights into the new model: tables grow by
the appended rows (fresh, seeded like any new table), everything else is copied.
Then, by ``fold_in``:

- ``"new"``: only the appended rows move. The steps see only the data that touch
  them (ratings of a new user or item, sessions with a new token); after every
  step the parent's rows, and every other weight, are put back, so they stay
  bitwise the parent's. Users' vectors are then computed as always (known users
  from their histories, with their new events for skipgram and gru).
- ``"all"``: every row trains, on all the data, for the run's epochs (a few).

The parent must be a run of the same family and shape on an ancestor of the
snapshot (the same vocabulary lineage), else a ConfigError says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.common.files import read_json
from jobs.store.registry import current_version
from schemas.errors import ConfigError
from schemas.snapshot import MANIFEST, Manifest
from schemas.store import StoreLayout

if TYPE_CHECKING:  # torch loads when a run trains, not when a flow resolves its config
    import torch
    from torch import nn

#: The final weights of a finished run, beside its vectors: what a fold-in starts from.
WEIGHTS = "weights.pt"
#: Settings that fix the shape of a family's weights: a warm start must have the same.
SHAPE = ("dim", "hidden", "layers")


@dataclass(frozen=True)
class WarmStart:
    run_id: str
    mode: str  # "new" or "all"
    weights: dict[str, torch.Tensor]  # the parent's final weights
    sizes: dict[str, int]  # rows of each vocabulary in the parent's snapshot

    def first_new(self, vocab: str) -> int:
        """The first index a rebuild appended to ``vocab``."""
        return self.sizes[vocab]

    def record(self, sizes: dict[str, int]) -> dict:
        """What the run's result says about it: the parent, the mode, the rows folded in per vocabulary."""
        return {"parent_run": self.run_id, "mode": self.mode,
                "rows_folded_in": {vocab: sizes[vocab] - self.sizes.get(vocab, 0) for vocab in sorted(sizes)}}


def resolve(cfg, store: StoreLayout, snapshot_id: str, result_name: str):
    """(``cfg`` with ``warm_start`` naming a run, that run when it trained on ``snapshot_id`` itself, else None).

    "current" becomes the run of the model's current version, so the run id, which hashes the config, changes
    with it. A parent that trained on this very snapshot is the result: nothing was appended since (an hourly
    fold-in on unchanged data must not train again and again)."""
    if cfg.warm_start == "current":
        version = current_version(store, cfg.name)
        if version is None:
            raise ConfigError(f"train.warm_start = \"current\" ({cfg.name}): {cfg.name} has no current version "
                              f"in {store.root}; train it in full first (no warm_start)")
        cfg = cfg.model_copy(update={"warm_start": read_json(store.version_record(cfg.name, version))["run_id"]})
    path = store.run_dir(cfg.warm_start) / result_name
    unchanged = path.is_file() and read_json(path)["snapshot_id"] == snapshot_id
    return cfg, cfg.warm_start if unchanged else None


def load(cfg, store: StoreLayout, manifest: Manifest, result_name: str) -> WarmStart:
    """The parent run of ``cfg.warm_start`` (a run id), checked against ``cfg`` and ``manifest``."""
    parent = store.run_dir(cfg.warm_start)
    if not (parent / result_name).is_file():
        raise ConfigError(f"train.warm_start = {cfg.warm_start!r} ({cfg.name}): no finished run at {parent}")
    result = read_json(parent / result_name)
    if result["model"] != cfg.model:
        raise ConfigError(f"train.warm_start ({cfg.name}): run {cfg.warm_start} is a {result['model']} model, this "
                          f"config trains {cfg.model}")
    for setting in SHAPE:
        theirs, ours = result["config"].get(setting), getattr(cfg, setting, None)
        if theirs != ours:
            raise ConfigError(f"train.warm_start ({cfg.name}): run {cfg.warm_start} has {setting} = {theirs}, this "
                              f"config {ours}; a fold-in keeps the parent's shape")
    lineage = ancestors(store, manifest)
    if result["snapshot_id"] not in lineage:
        raise ConfigError(
            f"train.warm_start ({cfg.name}): run {cfg.warm_start} trained on snapshot {result['snapshot_id']}, which "
            f"is not an ancestor of snapshot {manifest.snapshot_id} ({' <- '.join(lineage)}): its indices may mean "
            "other keys. Index the new data as a rebuild of that snapshot (index.parent), or train in full")
    return WarmStart(cfg.warm_start, cfg.fold_in, final_weights(parent), dict(result["params"]["sizes"]))


def ancestors(store: StoreLayout, manifest: Manifest) -> list[str]:
    """The snapshot and its parents, newest first (a rebuild's indices extend its parent's)."""
    chain, current = [manifest.snapshot_id], manifest
    while current.parent and current.parent not in chain:
        path = store.snapshot_dir(manifest.dataset, current.parent) / MANIFEST
        if not path.is_file():
            break
        current = Manifest.model_validate_json(path.read_text(encoding="utf-8"))
        chain.append(current.snapshot_id)
    return chain


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    import torch

    path = run_dir / WEIGHTS
    if not path.is_file():
        raise ConfigError(f"run {run_dir.name} kept no final weights ({path}): it finished before fold-in "
                          "existed; train it again, or warm start from a newer run")
    return torch.load(path, map_location="cpu", weights_only=True)


def nothing() -> None:
    """A learner's ``after_step`` when nothing is frozen."""


def fold_in_sessions(sessions, warm: WarmStart | None):
    """The sessions a sequence model steps over: all of them, or in ``new`` mode those with a new token."""
    return sessions if warm is None or warm.mode == "all" else sessions.with_tokens_from(warm.first_new("token"))


def save_final_weights(module: nn.Module, run_dir: Path) -> None:
    import torch

    tmp = run_dir / f".{WEIGHTS}.tmp"
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, tmp)
    tmp.replace(run_dir / WEIGHTS)


class Frozen:
    """The parent's rows of every weight, put back after each step (``fold_in = "new"``)."""

    def __init__(self, module: nn.Module, warm: WarmStart):
        # views of the parent's rows in the live weights (a 0-d weight whole); updates are in place, so they stay
        views = [tensor[:warm.weights[name].shape[0]] if tensor.dim() else tensor
                 for name, tensor in module.state_dict().items()]
        self.kept = [(view, view.clone()) for view in views]

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for view, saved in self.kept:
                view.copy_(saved)


def apply(module: nn.Module, warm: WarmStart) -> Frozen | None:
    """Copy the parent's weights into ``module`` (tables: their first rows); returns what to put back after
    each step in ``new`` mode (None in ``all`` mode)."""
    import torch

    state = module.state_dict()
    missing = sorted(set(state) ^ set(warm.weights))
    if missing:
        raise ConfigError(f"warm start from run {warm.run_id}: its weights differ from this model's ({missing})")
    with torch.no_grad():
        for name, tensor in state.items():
            old = warm.weights[name].to(tensor.device, tensor.dtype)
            if old.shape == tensor.shape:
                tensor.copy_(old)
            elif old.dim() and old.shape[1:] == tensor.shape[1:] and old.shape[0] <= tensor.shape[0]:
                tensor[:old.shape[0]].copy_(old)
            else:
                raise ConfigError(f"warm start from run {warm.run_id}: {name} is {tuple(old.shape)} there and "
                                  f"{tuple(tensor.shape)} here; a rebuild only appends rows")
    return None if warm.mode == "all" else Frozen(module, warm)
