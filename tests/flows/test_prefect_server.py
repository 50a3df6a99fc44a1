"""A real Prefect server, work pools, workers and the deployments of infra/prefect.yaml.

Starts `prefect server start` on a free port with its own PREFECT_HOME, creates the
two process work pools (the GPU one from infra/work-pools/gpu-process.json),
deploys every deployment of infra/prefect.yaml with `prefect deploy`, starts a
worker per pool, runs the nightly deployment with its train stage sent to the
`train-gpu` deployment on the other pool, and checks the store was published.
Everything is stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import latentstore
from tests.helpers import small_ratings_toml

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}



def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """Background processes started in their own process groups, stopped by PID."""

    def __init__(self, logs: Path):
        self.logs, self.started = logs, []

    def start(self, name: str, command: list[str], env: dict) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.started.append((name, process, log))
        return process

    def tail(self, name: str, lines: int = 40) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop_all(self) -> None:
        for _, process, _ in reversed(self.started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process, log in reversed(self.started):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect-home"), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_API_HOST": "127.0.0.1",
           "PREFECT_SERVER_API_PORT": str(port), "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_WORKER_QUERY_SECONDS": "2",
           "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PREFECT_LOGGING_LEVEL": "INFO", "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_KEY", None)
    processes = Processes(home)
    server = processes.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                        "--port", str(port)], env)
    try:
        _wait(lambda: _healthy(port), 180, "the Prefect server to answer /api/health",
              lambda: processes.tail("server"), server)
        yield env, processes, home
    finally:
        processes.stop_all()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _wait(ready, timeout: float, what: str, logs, process=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except OSError:  # a poll the busy server did not answer in time: ask again until the deadline
            pass
        if process is not None and process.poll() is not None:
            pytest.fail(f"process exited with {process.returncode} while waiting for {what}:\n{logs()}")
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{logs()}")


def _prefect(env: dict, *args: str) -> str:
    done = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


#: What Prefect's own client retries: the server's SQLite is busy under load (it answers 503), not broken.
_RETRIED_STATUS = {429, 502, 503}


def _api(env: dict, method: str, path: str, body: dict | None = None, attempts: int = 5):
    request = urllib.request.Request(f"{env['PREFECT_API_URL']}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            if error.code not in _RETRIED_STATUS or attempt == attempts - 1:
                raise
            time.sleep(2 ** attempt)


def test_deployments_from_infra_run_on_workers_and_publish(server, tmp_path):
    env, processes, home = server
    _prefect(env, "work-pool", "create", "latentstore", "--type", "process")
    # The real GPU template must be accepted as is; locally its working_dir (/app in the image) is this checkout.
    _prefect(env, "work-pool", "create", "latentstore-gpu", "--type", "process",
             "--base-job-template", str(ROOT / "infra" / "work-pools" / "gpu-process.json"))
    template = json.loads((ROOT / "infra" / "work-pools" / "gpu-process.json").read_text())
    template["variables"]["properties"]["working_dir"]["default"] = str(ROOT)
    template["variables"]["properties"]["cuda_visible_devices"]["default"] = ""
    local_template = tmp_path / "gpu-local.json"
    local_template.write_text(json.dumps(template))
    _prefect(env, "work-pool", "update", "latentstore-gpu", "--base-job-template", str(local_template))

    _prefect(env, "--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "--all")
    deployments = {d["name"]: d for d in _api(env, "POST", "/deployments/filter", {})}
    expected = {f"{c}-{kind}" for c in ("default", "synthetic-events", "movielens", "movielens-sequences")
                for kind in ("nightly", "hourly-publish", "hourly-fold-in")} | {"train-gpu", "movielens-sequences-nightly-gpu"}
    assert set(deployments) == expected
    nightly, hourly = deployments["default-nightly"], deployments["default-hourly-publish"]
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert [s["schedule"]["cron"] for s in hourly["schedules"]] == ["15 * * * *"]
    assert hourly["parameters"]["stages"] == ["publish"]
    fold_in = deployments["default-hourly-fold-in"]
    assert fold_in["parameters"]["fold_in"] == "new" and "stages" not in fold_in["parameters"]
    assert [s["schedule"]["cron"] for s in fold_in["schedules"]] == ["45 * * * *"]
    assert nightly["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert nightly["pull_steps"] == [{"prefect.deployments.steps.set_working_directory":
                                      {"directory": "{{ $LATENTSTORE_HOME }}"}}]
    assert deployments["train-gpu"]["work_pool_name"] == "latentstore-gpu"

    worker_env = {**env, "LATENTSTORE_HOME": str(ROOT)}
    for pool in ("latentstore", "latentstore-gpu"):
        processes.start(f"worker-{pool}", [str(BIN / "prefect"), "worker", "start", "--pool", pool,
                                           "--type", "process"], worker_env)

    config = tmp_path / "nightly.toml"
    config.write_text(small_ratings_toml("nightly", master="local[1]"))
    store = tmp_path / "store"
    parameters = {"config_path": str(config), "store": str(store),
                  "train_deployment": "latentstore-pipeline/train-gpu"}
    runs = [_api(env, "POST", f"/deployments/{nightly['id']}/create_flow_run", {"parameters": parameters})
            for _ in range(2)]  # the second collides with the first: cancelled, not queued

    def states() -> list[str]:
        return [_api(env, "GET", f"/flow_runs/{run['id']}")["state"]["type"] for run in runs]

    _wait(lambda: all(s in FINAL for s in states()), 420, "both nightly runs to finish",
          lambda: "\n\n".join(processes.tail(name) for name in ("worker-latentstore", "worker-latentstore-gpu")))
    assert sorted(states()) == ["CANCELLED", "COMPLETED"], (
        states(), processes.tail("worker-latentstore", 80), processes.tail("worker-latentstore-gpu", 80))

    trained_on_gpu_pool = _api(env, "POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [
        deployments["train-gpu"]["id"]]}}})
    assert [r["state"]["type"] for r in trained_on_gpu_pool] == ["COMPLETED"]
    assert trained_on_gpu_pool[0]["parameters"]["stages"] == ["train"]
    assert trained_on_gpu_pool[0]["work_pool_name"] == "latentstore-gpu"

    con = latentstore.connect(store)
    assert con.execute("SELECT model, version FROM versions WHERE is_current").fetchall() == [("nightly", 1)]
    assert con.execute("SELECT count(*) FROM nightly.item").fetchone()[0] == 50
    con.close()

    # the hourly fold-in on unchanged input: the same snapshot, the current run reused, nothing new published
    hourly_fold_in = _api(env, "POST", f"/deployments/{fold_in['id']}/create_flow_run", {"parameters": {
        "config_path": str(config), "store": str(store)}})
    _wait(lambda: _api(env, "GET", f"/flow_runs/{hourly_fold_in['id']}")["state"]["type"] in FINAL, 300,
          "the hourly fold-in to finish", lambda: processes.tail("worker-latentstore"))
    assert _api(env, "GET", f"/flow_runs/{hourly_fold_in['id']}")["state"]["type"] == "COMPLETED", \
        processes.tail("worker-latentstore", 80)
    con = latentstore.connect(store)
    assert con.execute("SELECT model, version FROM versions").fetchall() == [("nightly", 1)]
    con.close()


def test_latentstore_serve_schedules_and_runs_a_deployment_without_a_work_pool(server, tmp_path):
    env, processes, home = server
    config = tmp_path / "served.toml"
    config.write_text(small_ratings_toml("served", master="local[1]"))  # its own Spark settings: index isolated
    store = tmp_path / "store"
    serve = processes.start("serve", [str(BIN / "latentstore"), "serve", str(config), "--store", str(store),
                                      "--cron", "0 3 * * *", "--max-lateness-minutes", "60"], env)

    def deployment():
        found = _api(env, "POST", "/deployments/filter", {"deployments": {"name": {"any_": ["served-served"]}}})
        return found[0] if found else None

    _wait(lambda: deployment() is not None, 120, "latentstore serve to register its deployment",
          lambda: processes.tail("serve"), serve)
    served = deployment()
    assert [s["schedule"]["cron"] for s in served["schedules"]] == ["0 3 * * *"]
    assert served["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert served["parameters"]["isolate_index"] is True and served["parameters"]["max_lateness_minutes"] == 60

    run = _api(env, "POST", f"/deployments/{served['id']}/create_flow_run", {})
    _wait(lambda: _api(env, "GET", f"/flow_runs/{run['id']}")["state"]["type"] in FINAL, 300,
          "the served run to finish", lambda: processes.tail("serve"), serve)
    assert _api(env, "GET", f"/flow_runs/{run['id']}")["state"]["type"] == "COMPLETED", processes.tail("serve", 80)
    con = latentstore.connect(store)
    assert con.execute("SELECT model, version FROM versions WHERE is_current").fetchall() == [("served", 1)]
    con.close()
    os.killpg(serve.pid, signal.SIGTERM)
    serve.wait(timeout=30)
