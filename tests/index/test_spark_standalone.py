"""The index stage on a real standalone Spark cluster gives the same snapshots as local mode.

A master and one worker (1 core, 1 GiB) run in the foreground on 127.0.0.1 (``spark-class``:
the sbin scripts would daemonise), each in its own process group, stopped by PID at the end.
The index job runs in a subprocess (this process already has its local session, and a JVM
keeps its first master) with ``index.spark.master = "spark://127.0.0.1:<port>"``; the same
configs with ``master = "local[2]"`` run in this process. Both kinds (ratings and events) must
give the same snapshot ids, manifests (but the time and Spark fields) and Parquet rows.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.config import load_config
from jobs.index.job import run
from jobs.index.snapshots import read_manifest
from jobs.stages import resolve_input
from schemas.store import StoreLayout
from tests.helpers import clicks_toml

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("ratings", "events")
READY_TIMEOUT = 120  # seconds for the master and the worker to come up (two JVMs on a busy machine)
JOB_TIMEOUT = 300
STOP_TIMEOUT = 20

# -XX:TieredStopAtLevel=1: faster start of short-lived JVMs (the daemons, the executor, the driver).
QUICK_JVM = "-XX:TieredStopAtLevel=1"
#: [index.spark] on the cluster: one executor of 512 MiB (the worker offers 1 core, 1 GiB).
CLUSTER_SPARK = f"""
[index.spark]
master = "{{master}}"
driver_memory = "1g"
shuffle_partitions = 2
[index.spark.conf]
"spark.executor.memory" = "512m"
"spark.cores.max" = "1"
"spark.driver.extraJavaOptions" = "{QUICK_JVM}"
"spark.executor.extraJavaOptions" = "{QUICK_JVM}"
"""
#: [index.spark] locally: what the shared session runs with (static settings of a running session cannot change).
LOCAL_SPARK = """
[index.spark]
master = "local[2]"
shuffle_partitions = 2
"""
#: The data part of each config (the snapshot id depends on it, never on [index.spark]).
CONFIGS = {
    "ratings": """
name = "stars"
[index.input.synthetic]
users = 150
items = 60
clusters = 3
ratings_per_user = 15
seed = 3
""",
    "events": clicks_toml(dirty=0.02) + """
[train]
model = "skipgram"
""",
}


# -- the cluster ----------------------------------------------------------------------------------

@dataclass
class Cluster:
    url: str  # spark://127.0.0.1:<port>
    webui: str  # the master's web UI
    work_dir: Path  # the worker's: one folder per application, one per executor in it
    logs: Path

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.webui}/json/", timeout=5) as response:
            return json.load(response)


def _free_ports(n: int) -> list[int]:
    """Ports the kernel hands out for port 0 (held together, so they differ)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tail(path: Path, lines: int = 25) -> str:
    if not path.is_file():
        return f"({path.name}: missing)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path} (last {len(text)} lines) ---\n" + "\n".join(text)


def _executor_logs(work_dir: Path) -> str:
    return "\n".join(_tail(p, 15) for p in sorted(work_dir.glob("app-*/*/stderr"))) or "(no executor started)"


def _daemon_env(tmp: Path) -> dict[str, str]:
    import pyspark

    spark_home = Path(pyspark.__file__).resolve().parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    env.update(
        SPARK_HOME=str(spark_home),
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_CONF_DIR=str(ROOT / "infra" / "spark"),  # quiet log4j: errors only
        PYSPARK_PYTHON=sys.executable,  # the venv, where the project is installed (editable)
        SPARK_WORKER_DIR=str(tmp / "work"),
        SPARK_LOG_DIR=str(tmp / "logs"),
        SPARK_PID_DIR=str(tmp),
        SPARK_DAEMON_JAVA_OPTS=QUICK_JVM,
        # The REST submission server would take the fixed port 6066.
        SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false",
    )
    return env


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=log.parent, start_new_session=True)  # own process group


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the group the process leads (its PID: spark-class execs java; the worker's executors
    and a driver's JVM are in it), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_ready(cluster: Cluster, procs: dict[str, subprocess.Popen]) -> None:
    """Poll the master's /json until it lists one ALIVE worker; fail early if a daemon exits."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer yet"
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                pytest.fail(f"spark {name} exited with {proc.returncode} while starting\n"
                            + "\n".join(_tail(cluster.logs / f"{n}.log") for n in procs))
        try:
            state = cluster.state()
            alive = [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]
            if state.get("status") == "ALIVE" and alive:
                return
            last = f"master {state.get('status')}, {len(alive)} alive workers"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    pytest.fail(f"standalone cluster not ready after {READY_TIMEOUT}s ({last})\n"
                + "\n".join(_tail(cluster.logs / f"{n}.log") for n in procs))


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    import pyspark

    tmp = tmp_path_factory.mktemp("standalone")
    (tmp / "work").mkdir()
    (tmp / "logs").mkdir()
    spark_class = str(Path(pyspark.__file__).resolve().parent / "bin" / "spark-class")
    port, webui_port, worker_webui_port = _free_ports(3)
    cluster = Cluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{webui_port}", tmp / "work", tmp / "logs")
    env = _daemon_env(tmp)
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["master"] = _start([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                  "--port", str(port), "--webui-port", str(webui_port)],
                                 env, cluster.logs / "master.log")
        procs["worker"] = _start([spark_class, "org.apache.spark.deploy.worker.Worker", cluster.url,
                                  "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
                                  "--webui-port", str(worker_webui_port), "--work-dir", str(cluster.work_dir)],
                                 env, cluster.logs / "worker.log")
        _wait_ready(cluster, procs)
        yield cluster
    finally:
        for name in ("worker", "master"):
            if name in procs:
                _stop(procs[name])


# -- the runs -------------------------------------------------------------------------------------

def _write_configs(folder: Path, spark: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, text in CONFIGS.items():
        paths[kind] = folder / f"{kind}.toml"
        paths[kind].write_text(text + spark)
    return paths


@dataclass
class ClusterJob:
    kind: str
    proc: subprocess.Popen
    stdout: Path
    stderr: Path


def _start_cluster_jobs(cluster: Cluster, tmp: Path) -> list[ClusterJob]:
    """``python -m jobs.index`` for each kind on the cluster, all at once (the master queues the applications
    for the worker's one core while the later drivers start), output to files, each in its own process group."""
    configs = _write_configs(tmp / "configs", CLUSTER_SPARK.replace("{master}", cluster.url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}  # not under spark-submit
    env.update(SPARK_LOCAL_IP="127.0.0.1", SPARK_CONF_DIR=str(ROOT / "infra" / "spark"), PYSPARK_PYTHON=sys.executable)
    jobs = []
    for kind, config in configs.items():
        out, err = tmp / f"{kind}.stdout", tmp / f"{kind}.stderr"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "jobs.index", str(config), "--store", str(tmp / "store")],
                                    stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env, cwd=tmp,
                                    start_new_session=True)
        jobs.append(ClusterJob(kind, proc, out, err))
    return jobs


def _finish(job: ClusterJob, cluster: Cluster, deadline: float) -> Path:
    """Wait for a cluster job; its snapshot directory, or a failure with its stderr and the executors' logs."""
    try:
        job.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _stop(job.proc)
        pytest.fail(f"index job ({job.kind}) on {cluster.url} still running after {JOB_TIMEOUT}s\n"
                    f"{_tail(job.stderr)}\n{_executor_logs(cluster.work_dir)}")
    if job.proc.returncode != 0:
        pytest.fail(f"index job ({job.kind}) on {cluster.url} failed with {job.proc.returncode}\n"
                    f"{_tail(job.stderr, 40)}\n{_executor_logs(cluster.work_dir)}")
    stdout = job.stdout.read_text()
    summary, _ = json.JSONDecoder().raw_decode(stdout[stdout.index("{"):])
    assert not summary["reused"]
    return Path(summary["path"])


@pytest.fixture(scope="module")
def snapshots(standalone_cluster, tmp_path_factory, request) -> dict[str, dict[str, Path]]:
    """kind -> {"cluster": snapshot directory, "local": snapshot directory}.

    The cluster jobs run in subprocesses while this process builds the local reference with the
    shared session (master local[2]), requested only now so that its start overlaps them too."""
    jobs = _start_cluster_jobs(standalone_cluster, tmp_path_factory.mktemp("on-cluster"))
    deadline = time.monotonic() + JOB_TIMEOUT
    try:
        request.getfixturevalue("spark")
        tmp = tmp_path_factory.mktemp("local")
        configs = _write_configs(tmp / "configs", LOCAL_SPARK)
        store = StoreLayout(tmp / "store")
        local = {kind: run(resolve_input(load_config(config).index, store), store).path
                 for kind, config in configs.items()}
        on_cluster = {job.kind: _finish(job, standalone_cluster, deadline) for job in jobs}
    finally:
        for job in jobs:  # only still running after a failure
            _stop(job.proc)
    return {kind: {"cluster": on_cluster[kind], "local": local[kind]} for kind in KINDS}


# -- comparing snapshots ----------------------------------------------------------------------------

def _tables(snapshot: Path) -> dict[str, list[Path]]:
    """Parquet files by folder relative to the snapshot (split=... partitions are their own folders)."""
    tables: dict[str, list[Path]] = {}
    for path in sorted(snapshot.rglob("*.parquet")):
        tables.setdefault(path.parent.relative_to(snapshot).as_posix(), []).append(path)
    return tables


def _content(snapshot: Path, files: list[Path]) -> tuple[set[str], list[str]]:
    """(schemas, rows in a canonical order): file names and row order depend on the partitioning.

    The store's root (in quarantined rows' source_file) is replaced by "<store>"."""
    store = str(snapshot.parents[2])  # <store>/snapshots/<dataset>/<id>
    schemas, rows = set(), []
    for path in files:
        table = pq.ParquetFile(path).read()
        schemas.add(str(table.schema.remove_metadata()))
        rows.extend(json.dumps(row, sort_keys=True).replace(store, "<store>") for row in table.to_pylist())
    return schemas, sorted(rows)


def _comparable(manifest) -> dict:
    data = manifest.model_dump(mode="json")
    data.pop("created_at")
    spark = data.pop("spark")
    return {**data, "spark_version": spark["version"]}


@pytest.mark.parametrize("kind", KINDS)
def test_a_standalone_cluster_builds_the_same_snapshot_as_local_mode(kind, snapshots, standalone_cluster):
    on_cluster, local = snapshots[kind]["cluster"], snapshots[kind]["local"]
    assert on_cluster.name == local.name  # the snapshot id: input content and data config, not the master
    cluster_manifest, local_manifest = read_manifest(on_cluster), read_manifest(local)
    assert cluster_manifest.kind == kind
    assert cluster_manifest.spark["master"] == standalone_cluster.url
    assert local_manifest.spark["master"] == "local[2]"
    assert _comparable(cluster_manifest) == _comparable(local_manifest)  # counts, vocabularies, splits, sessions
    assert cluster_manifest.counts.kept > 0 and cluster_manifest.counts.balanced()
    if kind == "events":
        assert cluster_manifest.counts.quarantined > 0  # the dirty rows took the quarantine path too

    cluster_tables, local_tables = _tables(on_cluster), _tables(local)
    assert set(cluster_tables) == set(local_tables)
    assert {"quarantine", "vocab/user"} <= set(cluster_tables)
    for name in sorted(cluster_tables):
        cluster_schemas, cluster_rows = _content(on_cluster, cluster_tables[name])
        local_schemas, local_rows = _content(local, local_tables[name])
        assert cluster_schemas == local_schemas, name
        assert cluster_rows == local_rows, f"{name}: {len(cluster_rows)} rows on the cluster, {len(local_rows)} locally"


def test_the_jobs_ran_on_the_cluster(snapshots, standalone_cluster):
    """The master finished one application per job, and the worker ran an executor for each."""
    deadline = time.monotonic() + 15  # the master records the end of an application asynchronously
    while True:
        apps = [a for a in standalone_cluster.state()["completedapps"] if a["name"] == "latentstore-index"]
        if len(apps) >= len(KINDS) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(apps) == len(KINDS) and {a["state"] for a in apps} == {"FINISHED"}, apps
    assert all(a["cores"] == 1 and a["memoryperexecutor"] == 512 for a in apps), apps
    executors = sorted(p.relative_to(standalone_cluster.work_dir).parts[0]
                       for p in standalone_cluster.work_dir.glob("app-*/*/stderr"))
    assert sorted(a["id"] for a in apps) == executors
