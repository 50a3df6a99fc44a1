"""The epoch loop's early stopping: worse epochs during a warm-up do not count."""

from __future__ import annotations

import torch
from torch import nn

from jobs.train.loop import EpochLoop, LoopConfig, Metric


class ScriptedLearner:
    """Validation RMSE from a script, one value per epoch (the loop is what is under test)."""

    metric = Metric("valid_rmse", "minimize")

    def __init__(self, values: list[float]):
        self.values, self.epoch = values, 0
        self.module = self.train_module = nn.Linear(1, 1)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.epoch = epoch
        with torch.no_grad():
            self.module.weight.fill_(float(epoch))
        return {"train_rmse": 1.0}

    def evaluate(self) -> dict[str, float]:
        return {"valid_rmse": self.values[self.epoch - 1]}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def entities(self) -> dict:
        return {}


RISING_THEN_BETTER = [0.58, 0.56, 0.58, 0.57, 0.575, 0.55, 0.54, 0.56, 0.57, 0.58]


def test_worse_epochs_during_the_warm_up_do_not_stop_training():
    fit = EpochLoop(ScriptedLearner(RISING_THEN_BETTER), LoopConfig(10, patience=3, patience_from=4)).fit()
    assert fit.state.best_epoch == 7 and fit.state.best_value == 0.54
    assert fit.state.stopped_early and fit.state.epochs_done == 10  # 8, 9, 10 worse than epoch 7


def test_without_a_warm_up_the_same_run_stops_at_the_third_worse_epoch():
    fit = EpochLoop(ScriptedLearner(RISING_THEN_BETTER), LoopConfig(10, patience=3)).fit()
    assert fit.state.stopped_early and fit.state.epochs_done == 5 and fit.state.best_value == 0.56


class _RunsCode:
    """What a tampered checkpoint could hold: an object whose unpickling runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_unpickle_code_is_refused_and_runs_nothing(tmp_path):
    import pytest

    from jobs.synthetic.ratings import SyntheticRatings
    from jobs.synthetic.snapshot import write_ratings
    from jobs.train.config import MFConfig
    from jobs.train.job import CHECKPOINT, run
    from schemas.errors import StoreError
    from schemas.store import StoreLayout

    manifest = write_ratings(tmp_path / "snapshot", SyntheticRatings(users=60, items=20, ratings_per_user=8))
    cfg = MFConfig(name="m", dim=4, epochs=2, threads=1, device="cpu")
    store = StoreLayout(tmp_path / "store")
    partial = run(cfg, store, tmp_path / "snapshot", manifest, stop_after_epochs=1)
    honest = torch.load(partial.path / CHECKPOINT, weights_only=True)  # a real checkpoint loads this way
    marker = tmp_path / "code-ran"
    torch.save({**honest, "best_weights": _RunsCode(marker)}, partial.path / CHECKPOINT)
    with pytest.raises(StoreError, match=rf"{CHECKPOINT} is not a checkpoint of tensors and plain data"):
        run(cfg, store, tmp_path / "snapshot", manifest)
    assert not marker.exists()
