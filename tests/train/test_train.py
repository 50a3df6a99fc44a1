"""Training: one epoch works, same seed -> same bits, a resumed run equals an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs.train.config import MFConfig
from jobs.train import mf
from jobs.train.data import Interactions
from jobs.train.job import CHECKPOINT, run
from schemas.snapshot import interactions_dir
from schemas.store import StoreLayout
from tests.helpers import index_snapshot, pipeline_config



@pytest.fixture(scope="module")
def snapshot(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    return index_snapshot(pipeline_config(base), base / "store")


def _train(tmp_path, snapshot, name, **overrides):
    cfg = MFConfig(**{"dim": 8, "epochs": 4, "batch_size": 128, "lr": 0.02, "threads": 1, "device": "cpu",
                         **overrides})
    directory, manifest = snapshot
    return run(cfg, StoreLayout(tmp_path / name), directory, manifest, resume=True), cfg


def _vectors(result):
    return {e: pq.read_table(result.path / "vectors" / f"{e}.parquet").to_pydict() for e in ("user", "item")}


devices = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _mean_predictor(snapshot) -> float:
    """Validation RMSE of predicting the training mean: 1.00 on this data; untrained vectors score 1.35."""
    directory, _ = snapshot
    train = pq.read_table(directory / interactions_dir("train"))["rating"].to_numpy()
    valid = pq.read_table(directory / interactions_dir("valid"))["rating"].to_numpy()
    return float(np.sqrt(np.mean((valid - train.mean()) ** 2)))


@pytest.mark.parametrize("device", devices)
def test_training_learns_and_writes_vectors(tmp_path, snapshot, device):
    result, cfg = _train(tmp_path, snapshot, "s", device=device)
    metrics = result.result["metrics"]
    assert metrics["epochs_run"] == cfg.epochs and len(metrics["history"]) == cfg.epochs
    directory, manifest = snapshot
    assert 0 < metrics["valid_rmse"] < _mean_predictor(snapshot)
    vectors = _vectors(result)
    assert len(vectors["item"]["index"]) == manifest.vocab["item"].size
    assert len(vectors["user"]["vector"][0]) == cfg.dim
    assert result.result["runtime"]["device"].startswith(device)


def test_same_seed_gives_bitwise_equal_vectors(tmp_path, snapshot):
    first, _ = _train(tmp_path, snapshot, "a")
    second, _ = _train(tmp_path, snapshot, "b")
    assert _vectors(first) == _vectors(second)
    assert first.result["metrics"]["history"] == [
        {**h, "seconds": s["seconds"]} for h, s in zip(second.result["metrics"]["history"], first.result["metrics"]["history"])
    ]
    other, _ = _train(tmp_path, snapshot, "c", seed=7)
    assert _vectors(other) != _vectors(first)


def test_resumed_run_equals_uninterrupted_run(tmp_path, snapshot):
    straight, cfg = _train(tmp_path, snapshot, "straight")
    directory, manifest = snapshot
    store = StoreLayout(tmp_path / "killed")
    partial = run(cfg, store, directory, manifest, stop_after_epochs=2)
    assert partial.result == {"partial": True, "epochs_done": 2}
    assert (partial.path / CHECKPOINT).is_file()
    resumed = run(cfg, store, directory, manifest, resume=True)
    assert resumed.run_id == straight.run_id
    assert _vectors(resumed) == _vectors(straight)
    assert [h["valid_rmse"] for h in resumed.result["metrics"]["history"]] == [
        h["valid_rmse"] for h in straight.result["metrics"]["history"]
    ]
    # a finished run is not trained again
    again = run(cfg, store, directory, manifest)
    assert again.reused and _vectors(again) == _vectors(straight)


def test_without_resume_a_stale_checkpoint_is_ignored(tmp_path, snapshot):
    straight, cfg = _train(tmp_path, snapshot, "straight")
    directory, manifest = snapshot
    store = StoreLayout(tmp_path / "restart")
    run(cfg, store, directory, manifest, stop_after_epochs=1)
    fresh = run(cfg, store, directory, manifest, resume=False)
    assert fresh.result["metrics"]["epochs_run"] == 4
    assert _vectors(fresh) == _vectors(straight)


KILLABLE = r"""
import sys, time
from pathlib import Path
from jobs.index.snapshots import read_manifest
from jobs.train.config import MFConfig
from jobs.train import mf
from jobs.train.data import Interactions
from jobs.train import loop
from jobs.train.job import run
from schemas.snapshot import interactions_dir
from schemas.store import StoreLayout

original = loop.EpochLoop.save_checkpoint
def slow_checkpoint(self):  # give the test time to kill us between epochs
    original(self)
    print(f"checkpoint {self.state.epochs_done}", flush=True)
    time.sleep(0.5)
loop.EpochLoop.save_checkpoint = slow_checkpoint
snapshot, store = Path(sys.argv[1]), StoreLayout(sys.argv[2])
cfg = MFConfig(dim=8, epochs=4, batch_size=128, lr=0.02, threads=1, device="cpu")
run(cfg, store, snapshot, read_manifest(snapshot))
"""


@pytest.mark.slow
def test_a_process_killed_with_sigkill_resumes_to_the_same_vectors(tmp_path, snapshot):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    straight, cfg = _train(tmp_path, snapshot, "straight")
    directory, manifest = snapshot
    store = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", KILLABLE, str(directory), str(store)],
                             cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    for line in child.stdout:
        if line.startswith("checkpoint 2"):
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    resumed = run(cfg, StoreLayout(store), directory, manifest, resume=True)
    assert resumed.result["metrics"]["epochs_run"] == 4
    assert _vectors(resumed) == _vectors(straight)


@pytest.mark.parametrize("overrides", [{"implicit": False}, {"shuffle_buffer_rows": 300}],
                         ids=["no-implicit-feedback", "streamed-from-parquet"])
def test_plain_mf_and_mf_streamed_in_blocks_learn(tmp_path, snapshot, overrides):
    """Without the implicit term the model has no implicit table; with a buffer smaller than the data it
    reads the snapshot in blocks (how Interactions streams is tested below) and still learns."""
    directory, _ = snapshot
    rows = pq.ParquetDataset(directory / interactions_dir("train")).read().num_rows
    result, cfg = _train(tmp_path, snapshot, "s", **overrides)
    assert 0 < result.result["metrics"]["valid_rmse"] < _mean_predictor(snapshot)
    built = mf.build(cfg, directory, snapshot[1], torch.device("cpu"))
    assert (built.learner.module.implicit_tables() != []) == cfg.implicit
    assert (built.learner.train_data._cached is None) == (cfg.shuffle_buffer_rows <= rows // 4)  # several blocks an epoch


def _rows(batches) -> list[tuple]:
    return [row for b in batches for row in zip(b.users.tolist(), b.items.tolist(), b.ratings.tolist())]


def test_interactions_larger_than_the_buffer_stream_every_row_once_an_epoch(tmp_path):
    rng = np.random.default_rng(0)
    for part, size in enumerate((230, 170, 101)):
        pq.write_table(pa.table({"user": rng.integers(0, 50, size).astype(np.int32),
                                 "item": rng.integers(0, 30, size).astype(np.int32),
                                 "rating": rng.uniform(1, 5, size).astype(np.float32)}), tmp_path / f"part-{part}.parquet")
    whole = Interactions.from_dir(tmp_path, buffer_rows=10**9)
    streamed = Interactions.from_dir(tmp_path, buffer_rows=64)
    assert streamed._cached is None and whole.rows == streamed.rows == 501
    epoch = list(streamed.batches(batch_size=32, seed=3, epoch=1))
    assert [len(b) for b in epoch[:-1]] == [32] * (len(epoch) - 1) and len(epoch) == streamed.steps_per_epoch(32)
    assert sorted(_rows(epoch)) == sorted(_rows(whole.in_order(1000)))  # every row once
    assert _rows(epoch) == _rows(streamed.batches(32, seed=3, epoch=1))  # the same on every run (and a resume)
    assert _rows(epoch) != _rows(streamed.batches(32, seed=3, epoch=2))  # reshuffled each epoch
    assert sorted(_rows(streamed.in_order(7))) == sorted(_rows(epoch))
