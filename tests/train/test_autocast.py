"""Every model family trains under bf16 autocast on CPU: the code path CUDA's mixed precision takes.

A dtype combination a GPU kernel refuses (a float32 sparse matrix times a bf16
tensor, say) fails here too, in CI, which has no GPU. Real training through the
train job on snapshots written without Spark (jobs.synthetic.snapshot).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from jobs.synthetic.config import SyntheticEvents, SyntheticRatings
from jobs.synthetic.snapshot import write_events, write_ratings
from jobs.train.config import GRUConfig, MFConfig, SkipgramConfig
from jobs.train.job import run
from jobs.train.precision import Precision
from schemas.snapshot import interactions_dir
from schemas.store import StoreLayout

SMALL = {"epochs": 2, "threads": 1, "device": "cpu", "precision": "bf16"}
MF = {**SMALL, "epochs": 6, "lr": 0.05, "implicit": True}


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    base = tmp_path_factory.mktemp("autocast")
    ratings = write_ratings(base / "ratings", SyntheticRatings(users=300, items=120, ratings_per_user=20))
    events = write_events(base / "events", SyntheticEvents(users=150, items=40))
    return {"ratings": (base / "ratings", ratings), "events": (base / "events", events)}


def test_bf16_on_cpu_really_autocasts():
    precision = Precision(torch.device("cpu"), "bf16")
    with precision.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with Precision(torch.device("cpu")).autocast():  # auto on CPU: float32, bitwise reproducible
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("config", [
    MFConfig(dim=8, batch_size=128, **MF),  # tables larger than a batch: row-wise updates
    MFConfig(dim=8, batch_size=512, **MF),  # tables smaller than a batch: dense updates
    MFConfig(dim=8, batch_size=128, implicit_max_items=5, **MF),
    SkipgramConfig(dim=8, **SMALL),
    GRUConfig(dim=8, hidden=16, **SMALL),
    GRUConfig(dim=8, hidden=16, loss="sampled", sampled_negatives=32, **SMALL),
], ids=["mf-rows", "mf-dense", "mf-sampled-bags", "skipgram", "gru-full", "gru-sampled"])
def test_one_epoch_under_bf16_autocast_trains_finite_vectors(tmp_path, snapshots, config):
    directory, manifest = snapshots["ratings" if config.model == "mf" else "events"]
    result = run(config, StoreLayout(tmp_path / "store"), directory, manifest)
    metrics = result.result["metrics"]
    history = metrics["history"][0]
    assert all(math.isfinite(v) for k, v in history.items() if k.startswith("train_"))
    name, value = result.result["primary_metric"]["name"], result.result["primary_metric"]["value"]
    assert math.isfinite(value), name
    for table, described in result.result["entities"].items():
        assert described["rows"] > 0, table
    if config.model == "mf":  # and learns: better than predicting the training mean
        train = pq.read_table(directory / interactions_dir("train"))["rating"].to_numpy()
        valid = pq.read_table(directory / interactions_dir("valid"))["rating"].to_numpy()
        assert value < float(np.sqrt(np.mean((valid - train.mean()) ** 2)))
