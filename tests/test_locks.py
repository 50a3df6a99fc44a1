"""Locks that say who holds them: the writer lock's --lock-timeout, and one trainer per run id (issue 12,
cases 5 and 7). Real processes, real flocks; snapshots written without Spark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.common.locks import exclusive
from jobs.publish.lock import writer_lock
from jobs.synthetic.config import SyntheticRatings
from jobs.synthetic.snapshot import write_ratings
from schemas.store import StoreLayout
from tests.helpers import publish_vectors, wait_for_stderr

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "latentstore.cli"]
TWO_D = {"item": {"a": [1, 0], "b": [0.9, 0.1], "c": [0, 1], "d": [0.1, 0.9]}}

TRAINER = r"""
import json, logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from jobs.index.snapshots import read_manifest
from jobs.train.config import MFConfig
from jobs.train.job import run
from schemas.store import StoreLayout
snapshot, store = Path(sys.argv[1]), StoreLayout(sys.argv[2])
cfg = MFConfig(name="m", dim=8, epochs=int(sys.argv[3]), threads=1, device="cpu", batch_size=256, patience=1000)
result = run(cfg, store, snapshot, read_manifest(snapshot))
print(json.dumps({"run_id": result.run_id, "reused": result.reused, "finished_at": result.result["finished_at"]}))
"""


def _start(*args, code: str | None = None) -> subprocess.Popen:
    command = [sys.executable, "-c", code, *map(str, args)] if code else [*CLI, *map(str, args)]
    return subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "COLUMNS": "200"})


def test_a_writer_waiting_for_the_lock_names_its_holder_and_gives_up_after_lock_timeout(tmp_path):
    store = tmp_path / "store"
    publish_vectors(store, "m", TWO_D)
    publish_vectors(store, "m", TWO_D)
    layout = StoreLayout(store)
    with writer_lock(layout.lock_file, timeout=5):
        waiting = _start("rollback", "--store", store, "--model", "m", "--to", 1, "--lock-timeout", 1)
        seen = wait_for_stderr(waiting, "waiting for store")
        assert f"locked by pid {os.getpid()} on " in seen and "--lock-timeout" in seen
        _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 3, err
    assert f"error: store {layout.root} (a publish, rollback or repair) is locked by pid {os.getpid()}" in err
    assert "gave up after 1s (--lock-timeout SECONDS waits longer)" in err and "Traceback" not in err
    assert layout.pointer_file("m").read_text() == "2\n"  # nothing changed
    # with the lock free, the same command goes through
    done = subprocess.run([*CLI, "rollback", "--store", str(store), "--model", "m", "--to", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_one_trainer_per_run_the_second_waits_and_reuses_the_first_ones_result(tmp_path):
    snapshot = tmp_path / "snapshot"
    write_ratings(snapshot, SyntheticRatings(users=400, items=100, ratings_per_user=30))
    store = tmp_path / "store"
    first = _start(snapshot, store, 120, code=TRAINER)  # long enough to find it training
    wait_for_stderr(first, "training mf")
    second = _start(snapshot, store, 120, code=TRAINER)
    seen = wait_for_stderr(second, "waiting for training run")
    assert f"locked by pid {first.pid} on " in seen
    out_first, err_first = first.communicate(timeout=300)
    assert first.returncode == 0, err_first
    result_file = next(store.glob("runs/*/result.json"))
    written = result_file.stat().st_mtime_ns
    out_second, err_second = second.communicate(timeout=300)
    assert second.returncode == 0, err_second
    one, two = json.loads(out_first.splitlines()[-1]), json.loads(out_second.splitlines()[-1])
    assert one["run_id"] == two["run_id"] and not one["reused"] and two["reused"]
    assert two["finished_at"] == one["finished_at"]
    assert result_file.stat().st_mtime_ns == written  # the finished run was not rewritten


def test_a_trainer_gives_up_after_its_lock_timeout(tmp_path):
    snapshot = tmp_path / "snapshot"
    write_ratings(snapshot, SyntheticRatings(users=50, items=20, ratings_per_user=5))
    from jobs.index.snapshots import read_manifest
    from jobs.train.config import MFConfig
    from jobs.train.job import run, run_id_for
    from schemas.errors import StoreLockedError

    cfg = MFConfig(name="m", dim=4, epochs=1, threads=1, device="cpu")
    manifest = read_manifest(snapshot)
    layout = StoreLayout(tmp_path / "store")
    run_id = run_id_for(manifest.snapshot_id, cfg)
    with exclusive(layout.run_lock(run_id), 0, "test"):
        # flocks of one process on two open files conflict too: this is what another trainer sees
        with pytest.raises(StoreLockedError, match=rf"training run {run_id} is locked by pid {os.getpid()}"):
            run(cfg, layout, snapshot, manifest, lock_timeout=0.5)
    assert not layout.run_dir(run_id).exists() or not (layout.run_dir(run_id) / "result.json").exists()
