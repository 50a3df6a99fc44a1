"""Data-parallel training: ``torchrun --nproc-per-node 2 -m jobs.train`` against one process, on CPU (gloo).

Real processes on a real snapshot: two ranks reach the quality of one, rank 0
alone writes the run (and records world_size and backend), the run id differs
from the one-process run, and skipgram refuses to run data-parallel.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs import stages
from jobs.common.files import read_json
from jobs.config import load_config
from jobs.index.snapshots import latest_id
from jobs.train.fold_in import WEIGHTS
from jobs.train.job import CHECKPOINT, RESULT, run_id_for
from schemas.store import StoreLayout
from tests.helpers import index_snapshot

pytestmark = [pytest.mark.spark, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

RATINGS = """
name = "ddp_ratings"
[index.input.synthetic]
users = 3000
items = 400
clusters = 4
ratings_per_user = 30
noise = 0.3
seed = 7
[index.spark]
master = "local[2]"
[train]
model = "mf"
dim = 8
epochs = 4
batch_size = 512
lr = 0.02
threads = 1
device = "cpu"
"""

EVENTS = """
name = "ddp_events"
[index]
kind = "events"
[index.input]
columns = { user = "user_id", timestamp = "ts", type = "event" }
[index.input.synthetic]
users = 1200
segments = 4
page_types = 4
portals = 4
search_categories = 8
items = 16
sessions_per_user = 5
events_per_session = 8
seed = 11
[index.events]
templates = { page_view = "{type}:{page_type}:{portal}", scroll = "{type}:{page_type}:{pixels}", search = "{type}:{category}", purchase = "{type}:{item}" }
buckets = { pixels = { log_start = 250.0, log_base = 2.0, unit = "px" } }
[index.spark]
master = "local[2]"
[[train]]
model = "gru"
epochs = 4
dim = 16
hidden = 32
threads = 1
device = "cpu"
[[train]]
model = "skipgram"
epochs = 1
threads = 1
device = "cpu"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(config: Path, store: Path, processes: int, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    """``python -m jobs.train`` (one process) or ``torchrun --nproc-per-node N -m jobs.train``; and its wall time."""
    if processes == 1:
        launcher = [sys.executable, "-m", "jobs.train"]
    else:
        launcher = [str(BIN / "torchrun"), "--nproc-per-node", str(processes), "--master-port", str(_free_port()),
                    "-m", "jobs.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run([*launcher, str(config), "--store", str(store), *extra], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    return done, time.perf_counter() - started


def _summary(done: subprocess.CompletedProcess) -> dict:
    """The JSON summary on stdout: one document, so only rank 0 printed one."""
    assert done.returncode == 0, done.stderr[:6000]
    return json.loads(done.stdout)


def _checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def stores(spark, tmp_path_factory):
    """One store holding a ratings and an events snapshot, and the two configs as files."""
    base = tmp_path_factory.mktemp("ddp")
    store = base / "store"
    configs = {}
    for name, text in (("ratings", RATINGS), ("events", EVENTS)):
        configs[name] = base / f"{name}.toml"
        configs[name].write_text(text)
        index_snapshot(load_config(configs[name]), store)
    return store, configs


@pytest.fixture(scope="module")
def mf_runs(stores):
    """The ratings model trained by one process, then by two."""
    store, configs = stores
    one, one_seconds = _train(configs["ratings"], store, 1)
    two, two_seconds = _train(configs["ratings"], store, 2)
    return {1: (_summary(one), one_seconds), 2: (_summary(two), two_seconds)}


def test_mf_on_two_processes_matches_one_and_rank_0_alone_writes(stores, mf_runs, capsys):
    store, configs = stores
    (single, one_seconds), (double, two_seconds) = mf_runs[1], mf_runs[2]
    assert (single["world_size"], single["backend"]) == (1, None)
    assert (double["world_size"], double["backend"]) == (2, "gloo")
    cfg = load_config(configs["ratings"]).model()
    assert single["run_id"] == run_id_for(single["snapshot_id"], cfg)  # one-process ids as before
    assert double["run_id"] == run_id_for(single["snapshot_id"], cfg, 2) != single["run_id"]

    rmse_one, rmse_two = single["metrics"]["valid_rmse"], double["metrics"]["valid_rmse"]
    assert abs(rmse_two - rmse_one) <= 0.05 * rmse_one, (rmse_one, rmse_two)
    run_dir = Path(double["path"])
    result = read_json(run_dir / RESULT)
    assert result["runtime"]["world_size"] == 2 and result["runtime"]["backend"] == "gloo"
    assert result["metrics"]["epochs_run"] == 4 and [h["epoch"] for h in result["metrics"]["history"]] == [1, 2, 3, 4]
    # rank 0 alone wrote: one run directory per world size, one set of vectors, nothing else
    ratings_runs = [p.name for p in (store / "runs").iterdir() if read_json(p / RESULT)["dataset"] == "ddp_ratings"]
    assert sorted(ratings_runs) == sorted([single["run_id"], double["run_id"]])
    assert sorted(p.name for p in run_dir.iterdir()) == [CHECKPOINT, RESULT, "vectors", WEIGHTS]
    assert sorted(p.name for p in (run_dir / "vectors").iterdir()) == ["item.parquet", "user.parquet"]
    assert pq.read_metadata(run_dir / "vectors" / "user.parquet").num_rows == result["entities"]["user"]["rows"]
    with capsys.disabled():
        print(f"\nmf valid RMSE: 1 process {rmse_one:.5f} (train {single['metrics']['train_seconds']:.1f} s, "
              f"wall {one_seconds:.1f} s), 2 processes {rmse_two:.5f} (train {double['metrics']['train_seconds']:.1f} s, "
              f"wall {two_seconds:.1f} s)")


KILL_RANK_0_AFTER_EPOCH_2 = """
import os, runpy, sys
from jobs.train import loop

original = loop.EpochLoop.save_checkpoint
def save_then_die(self):
    original(self)
    if self.checkpoint is not None and self.state.epochs_done == 2:  # rank 0 alone checkpoints
        os._exit(3)
loop.EpochLoop.save_checkpoint = save_then_die
runpy.run_module("jobs.train", run_name="__main__")
"""


def test_a_data_parallel_run_killed_after_a_checkpoint_resumes_to_the_same_vectors(stores, mf_runs, tmp_path):
    store, configs = stores
    straight = Path(mf_runs[2][0]["path"])
    expected = {p.name: pq.read_table(p).to_pydict() for p in sorted((straight / "vectors").glob("*.parquet"))}
    history = read_json(straight / RESULT)["metrics"]["history"]
    shutil.rmtree(straight)
    killer = tmp_path / "kill_rank_0.py"
    killer.write_text(KILL_RANK_0_AFTER_EPOCH_2)
    killed = subprocess.run([str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", str(_free_port()),
                             str(killer), str(configs["ratings"]), "--store", str(store)], check=False, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0 and not (straight / RESULT).exists()
    assert _checkpoint(straight / CHECKPOINT)["loop"]["epochs_done"] == 2

    resumed, _ = _train(configs["ratings"], store, 2)
    summary = _summary(resumed)
    assert summary["run_id"] == straight.name and not summary["reused"]
    assert {p.name: pq.read_table(p).to_pydict() for p in sorted((straight / "vectors").glob("*.parquet"))} == expected
    again = read_json(straight / RESULT)["metrics"]["history"]
    assert [h["valid_rmse"] for h in again] == [h["valid_rmse"] for h in history]

    # publish finds the data-parallel run without being told its id
    published = stages.publish(load_config(configs["ratings"]), StoreLayout(store))
    assert published["version"] == 1 and published["model"] == "ddp_ratings"


def test_gru_on_two_processes_reaches_the_hit_rate_of_one(stores, capsys):
    store, configs = stores
    one, one_seconds = _train(configs["events"], store, 1, "--model", "ddp_events_gru")
    two, two_seconds = _train(configs["events"], store, 2, "--model", "ddp_events_gru")
    single, double = _summary(one), _summary(two)
    assert (double["world_size"], double["backend"]) == (2, "gloo") and double["run_id"] != single["run_id"]
    hr_one, hr_two = single["metrics"]["valid_hr_at_10"], double["metrics"]["valid_hr_at_10"]
    tokens = read_json(Path(single["path"]) / RESULT)["params"]["sizes"]["token"] - 1  # without the unknown token
    assert hr_one > 2 * 10 / tokens, hr_one  # the planted structure is learnt: well above chance
    assert abs(hr_two - hr_one) <= 0.03, (hr_one, hr_two)
    run_dir = Path(double["path"])
    assert sorted(p.name for p in (run_dir / "vectors").iterdir()) == ["next_token.parquet", "token.parquet",
                                                                       "user.parquet"]
    with capsys.disabled():
        print(f"\ngru valid HR@10: 1 process {hr_one:.4f} (train {single['metrics']['train_seconds']:.1f} s, "
              f"wall {one_seconds:.1f} s), 2 processes {hr_two:.4f} (train {double['metrics']['train_seconds']:.1f} s, "
              f"wall {two_seconds:.1f} s)")


def test_skipgram_refuses_two_processes_with_a_clear_error(stores):
    store, configs = stores
    done, _ = _train(configs["events"], store, 2, "--model", "ddp_events_skipgram")
    assert done.returncode != 0
    assert "error: train.model = 'skipgram' (ddp_events_skipgram) cannot train data-parallel" in done.stderr
    assert "run it with one process" in done.stderr
    cfg = load_config(configs["events"])
    snapshot = latest_id(StoreLayout(store), cfg.index.dataset)
    assert not StoreLayout(store).run_dir(run_id_for(snapshot, cfg.model("ddp_events_skipgram"), 2)).exists()
