"""Signals (issue 12, case 6): SIGINT and SIGTERM stop a run before it publishes, stop what it started and
exit non-zero within seconds; SIGKILL leaves no server behind; a killed index's staging is swept. And a run
that fails prints one error line, without Prefect's tracebacks (case 10).

The `latentstore run` cases are real runs (their own Spark and temporary Prefect server) sharing one store:
the first one indexes, the next ones reuse its snapshot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.common.staging import owned_staging_dir, sweep
from jobs.config import load_config
from schemas.store import StoreLayout
from tests.helpers import index_snapshot, publish_vectors, small_ratings_toml, wait_for_stderr

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
#: Far more epochs than the test waits for: the signal always lands mid-training.
LONG_TRAINING = "patience = 1000\nbatch_size = 64"


@pytest.fixture(scope="module")
def long_run(spark, tmp_path_factory) -> tuple[Path, Path]:
    """A config that trains far longer than the tests wait, and a store that already holds its snapshot
    (indexed by the test session's Spark), so each run starts no JVM: its index stage finds the snapshot."""
    base = tmp_path_factory.mktemp("signals")
    config = base / "long.toml"
    config.write_text(small_ratings_toml("long", train=LONG_TRAINING).replace("epochs = 2", "epochs = 5000"))
    index_snapshot(load_config(config), base / "store")
    return config, base / "store"


def _server_of(run: subprocess.Popen) -> int:
    """The run's temporary Prefect server: its uvicorn child."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == run.pid \
                    and b"uvicorn" in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except (OSError, ValueError, IndexError):
            continue
    raise AssertionError(f"no temporary server under the run {run.pid}")


def _gone(pid: int, within: float) -> bool:
    """Whether process ``pid`` ends (or is a zombie nobody reaps) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.2)
    return False


def _run_until_training(config: Path, store: Path) -> tuple[subprocess.Popen, int]:
    """`latentstore run` in its own process group (as a terminal would start it), once it trains; and its
    server's pid."""
    process = subprocess.Popen([sys.executable, "-m", "latentstore.cli", "run", str(config), "--store", str(store)],
                               cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True, env={**os.environ, "COLUMNS": "200"})
    wait_for_stderr(process, "/5000  train_rmse", timeout=300)  # an epoch finished (a resumed run starts later)
    return process, _server_of(process)


@pytest.mark.parametrize("how, code", [("SIGINT to the group", 130), ("SIGTERM to the run", 143)])
def test_a_stop_signal_ends_the_run_before_it_publishes_and_stops_its_server(long_run, how, code):
    config, store = long_run
    process, server = _run_until_training(config, store)
    sent = time.monotonic()
    if how.endswith("group"):
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    else:
        process.send_signal(signal.SIGTERM)  # what a scheduler does on timeout
    _, err = process.communicate(timeout=60)
    took = time.monotonic() - sent
    assert process.returncode == code, err
    assert took < 20, f"took {took:.1f}s to stop"
    assert f"error: stopped by {signal.Signals(code - 128).name}; nothing was published" in err
    assert "Traceback" not in err
    assert not StoreLayout(store).models.exists()  # nothing published
    assert _gone(server, within=10)


def test_sigkill_of_the_run_leaves_no_server_behind(long_run):
    config, store = long_run
    process, server = _run_until_training(config, store)
    process.kill()
    process.wait(timeout=30)
    assert _gone(server, within=15)  # the kernel signals the server when its parent dies (Linux)


def test_a_failing_run_prints_one_error_line_and_no_traceback(long_run):
    config, store = long_run
    refused = config.with_name("refused.toml")
    refused.write_text(config.read_text().replace("epochs = 5000", "epochs = 1")
                       + "\n[publish.gate]\nfloors = { long = 0.01 }\n")
    result = subprocess.run([sys.executable, "-m", "latentstore.cli", "run", str(refused), "--store", str(store)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [errors[0]] and "quality gate refused long" in errors[0] and "floor 0.01" in errors[0]


DEFERRED = r"""
import os, signal, sys, time
from jobs.common import signals
signals.install()
try:
    with signals.deferred("the test's commit"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
        print("finished the deferred work", flush=True)
    print("not reached", flush=True)
except signals.Terminated:
    print("stopped after it", flush=True)
"""


def test_a_signal_inside_a_deferred_block_waits_for_its_end():
    done = subprocess.run([sys.executable, "-c", DEFERRED], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["finished the deferred work", "stopped after it"], done.stderr
    assert "SIGTERM received: finishing the test's commit first" in done.stderr


PUBLISH_PAUSED = r"""
import sys
from pathlib import Path
from jobs.common import signals
from tests.helpers import publish_vectors
signals.install()
publish_vectors(Path(sys.argv[1]), "m", {"item": {"a": [1.0, 0.0], "b": [0.0, 1.0]}}, publish={"gate": {"enabled": False}})
"""


def test_sigterm_before_the_commit_point_leaves_the_current_version_and_no_staging(tmp_path):
    store = tmp_path / "store"
    publish_vectors(store, "m", {"item": {"a": [1.0, 0.0], "b": [0.0, 1.0]}})
    layout = StoreLayout(store)
    writer = subprocess.Popen([sys.executable, "-c", PUBLISH_PAUSED, str(store)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "LATENTSTORE_PAUSE_AT": "publish:built"})
    wait_for_stderr(writer, "paused at publish:built")
    writer.send_signal(signal.SIGTERM)
    _, err = writer.communicate(timeout=30)
    assert writer.returncode != 0 and "Terminated" in err
    assert layout.pointer_file("m").read_text() == "1\n"
    assert list(layout.tmp.glob("*.duckdb")) == []  # its staging file went with it
    assert publish_vectors(store, "m", {"item": {"a": [1.0, 0.0], "b": [0.0, 1.0]}},
                           publish={"gate": {"enabled": False}}).version == 2  # it never reached the rename


KILLED_BUILDER = r"""
import sys, time
from pathlib import Path
from jobs.common.staging import owned_staging_dir
with owned_staging_dir(Path(sys.argv[1]), "snapshot-abc") as staging:
    (staging / "part-0.parquet").write_text("half")
    print(staging, flush=True)
    time.sleep(600)
"""


def test_staging_left_by_a_killed_builder_is_swept_and_a_live_one_is_kept(tmp_path):
    tmp = tmp_path / "tmp"
    builder = subprocess.Popen([sys.executable, "-c", KILLED_BUILDER, str(tmp)], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE)
    abandoned = Path(builder.stdout.readline().strip())
    with owned_staging_dir(tmp, "snapshot-def") as live:
        assert sweep(tmp, "snapshot") == []  # the builder still works: its directory stays
        builder.kill()
        builder.wait(timeout=30)
        assert sweep(tmp, "snapshot") == [abandoned.name]
        assert not abandoned.exists() and live.is_dir()
    assert sorted(p.name for p in tmp.iterdir()) == [live.name]  # the caller renames it away on success
