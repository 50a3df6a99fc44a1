"""Faults: kill -9 of a writer at named steps and at random moments; readers during publish, rollback, retention.

Writers are real subprocesses publishing hand-made vectors through the real publish
job (no Spark: a publish takes well under a second), paused at a named step with
LATENTSTORE_PAUSE_AT (jobs.common.faults) or killed at a random time.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

import latentstore
from jobs.store.registry import events, known_versions, pointers
from schemas.store import StoreLayout
from tests.helpers import publish_vectors

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TABLE = {"item": {f"k{i}": [float(i % 7), float(i % 5), 1.0 + i % 3] for i in range(40)}}
NO_GATE = {"gate": {"enabled": False}, "keep_versions": 3, "retention_grace_seconds": 0}

WRITER = r"""
import sys
from pathlib import Path
from tests.helpers import publish_vectors
store, what, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
table = {"item": {f"k{i}": [float((i * 7 + n) % 11), float(i % 5), 1.0] for i in range(40)} for n in range(count)}
config = {"gate": {"enabled": False}, "keep_versions": 3, "retention_grace_seconds": 0}
print("ready", flush=True)
for n in range(count):
    if what == "rollback" and n % 2:
        from jobs.publish.job import rollback
        from jobs.store.registry import current_version
        from schemas.store import StoreLayout
        layout = StoreLayout(store)
        rollback(layout, "m", current_version(layout, "m") - 1)
    else:
        publish_vectors(store, "m", {"item": {f"k{i}": [float((i * 7 + n) % 11), float(i % 5), 1.0] for i in range(40)}},
                        publish=config)
    print(f"done {n}", flush=True)
"""


def _writer(store: Path, what: str = "publish", count: int = 1, pause_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ}
    env.pop("LATENTSTORE_PAUSE_AT", None)
    if pause_at:
        env["LATENTSTORE_PAUSE_AT"] = pause_at
    return subprocess.Popen([sys.executable, "-c", WRITER, str(store), what, str(count)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when_paused(process: subprocess.Popen, step: str) -> None:
    for line in process.stderr:
        if line.startswith(f"latentstore: paused at {step}"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"the writer never reached {step}"


def check_consistent(store: Path) -> dict[str, int]:
    """What any reader must find whatever the crash: a queryable store, complete files, a sane registry."""
    layout = StoreLayout(store)
    con = latentstore.connect(store)  # current.sql: every file it attaches exists and opens
    visible = dict(con.execute("SELECT model, version FROM models").fetchall())
    for model, version in visible.items():
        assert con.execute(f"SELECT count(*) FROM {model}.item").fetchone()[0] == 40
        assert con.execute(f"SELECT version FROM {model}.meta").fetchone()[0] == version
    con.close()
    for path in layout.models.glob("*/*.duckdb"):  # no torn file is ever in models/
        check = duckdb.connect(str(path), read_only=True)
        assert check.execute("SELECT count(*) FROM meta").fetchone()[0] == 1
        check.close()
    for model, version in pointers(layout).items():
        assert layout.version_file(model, version).is_file() and layout.version_record(model, version).is_file()
    return visible


@pytest.mark.parametrize("step, committed", [
    ("publish:built", False),      # the staging file is written
    ("publish:renamed", False),    # the file is in models/, no record
    ("publish:recorded", False),   # the record is written, the pointer not switched
    ("publish:switched", True),    # the pointer switched (the commit), its event not yet written
    ("publish:sql", True),         # current.sql regenerated, retention not yet run
])
def test_kill_9_at_each_publish_step(tmp_path, step, committed):
    store = tmp_path / "store"
    publish_vectors(store, "m", TABLE, publish=NO_GATE)
    writer = _writer(store, pause_at=step)
    _kill_when_paused(writer, step)
    layout = StoreLayout(store)
    visible = check_consistent(store)
    # readers see the previous version until current.sql names the new one (regenerated after the commit;
    # a commit a crash left invisible becomes visible with the next writer)
    assert visible == {"m": 2 if step == "publish:sql" else 1}
    assert pointers(layout) == {"m": 2 if committed else 1}
    after = publish_vectors(store, "m", TABLE, publish=NO_GATE)  # recovers, then publishes
    # v2 exists unless the kill came before its file reached models/; an abandoned v2 keeps its number
    assert after.version == (2 if step == "publish:built" else 3)
    assert check_consistent(store) == {"m": after.version}
    assert not list(layout.tmp.glob("*.duckdb*"))  # staging files cleaned
    assert known_versions(layout, "m") == list(range(1, after.version + 1))
    history = events(layout, "m")
    moves = [(e["event"], e["to_version"]) for e in history if e["to_version"] is not None]
    expected = [("publish", 1), *([("recovered", 2)] if step == "publish:switched" else []),
                *([("publish", 2)] if committed and step != "publish:switched" else []), ("publish", after.version)]
    assert moves == expected
    abandoned = [e["version"] for e in history if e["event"] == "abandoned"]
    assert abandoned == ([2] if step in ("publish:renamed", "publish:recorded") else [])
    if abandoned:
        assert not layout.version_file("m", 2).is_file()  # an abandoned version's file is gone
    con = latentstore.connect(store)
    assert dict(con.execute("SELECT version, status FROM versions WHERE model = 'm'").fetchall()) == {
        1: "retained", **({2: "abandoned"} if step == "publish:recorded" else {2: "retained"} if committed else {}),
        after.version: "current"}
    con.close()


def test_kill_9_during_rollback_and_during_retention(tmp_path):
    store = tmp_path / "store"
    layout = StoreLayout(store)
    for _ in range(3):
        publish_vectors(store, "m", TABLE, publish=NO_GATE)
    writer = _writer(store, what="rollback", count=2, pause_at="rollback:switched")
    _kill_when_paused(writer, "rollback:switched")
    assert pointers(layout) == {"m": 3}  # the writer published v4, then rolled back: killed after the switch
    check_consistent(store)
    # retention killed while it holds the lock on a file it is about to remove: the file stays, next time it goes
    writer = _writer(store, pause_at="retention:locked")
    _kill_when_paused(writer, "retention:locked")
    check_consistent(store)
    survivor = publish_vectors(store, "m", TABLE, publish=NO_GATE)
    check_consistent(store)
    files = sorted(v for v in known_versions(layout, "m") if layout.version_file("m", v).is_file())
    assert len(files) <= 3 + 1 and survivor.version in files  # keep 3, plus the current one if older


def test_kill_9_at_random_moments(tmp_path):
    from jobs.publish.recovery import recover

    store = tmp_path / "store"
    layout = StoreLayout(store)
    publish_vectors(store, "m", TABLE, publish=NO_GATE)
    warm = _writer(store, count=3)
    assert warm.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    warm.communicate(timeout=120)
    busy = time.perf_counter() - started  # how long a writer takes for 3 operations, once imported
    rng, repaired = random.Random(42), 0
    for round_ in range(10):
        writer = _writer(store, what="rollback" if round_ % 3 == 2 else "publish", count=3)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, busy))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
        check_consistent(store)
        repaired += bool(recover(layout))  # a kill mid-write leaves something for the next writer to repair
    final = publish_vectors(store, "m", TABLE, publish=NO_GATE)
    assert check_consistent(store) == {"m": final.version}
    assert not list(layout.tmp.glob("*.duckdb*"))
    assert repaired >= 1, "no kill landed inside a write: the test did not test anything"


READER = r"""
import json, sys, time
import latentstore
store, seconds = sys.argv[1], float(sys.argv[2])
deadline, seen, errors, slowest = time.monotonic() + seconds, [], [], 0.0
while time.monotonic() < deadline:
    tick = time.monotonic()
    try:
        con = latentstore.connect(store)
        version = con.execute("SELECT version FROM models WHERE model = 'm'").fetchone()[0]
        assert con.execute("SELECT version FROM m.meta").fetchone()[0] == version
        assert con.execute("SELECT count(*) FROM embeddings WHERE model = 'm'").fetchone()[0] == 40
        con.execute("SELECT * FROM most_similar('m', 'item', 'k1', k := 3)").fetchall()
        con.close()
        seen.append(version)
    except Exception as exc:
        errors.append(repr(exc))
    slowest = max(slowest, time.monotonic() - tick)
print(json.dumps({"seen": seen, "errors": errors, "slowest": slowest}))
"""


def test_readers_never_fail_while_publishes_rollbacks_and_retention_run(tmp_path):
    store = tmp_path / "store"
    layout = StoreLayout(store)
    retain = {"gate": {"enabled": False}, "keep_versions": 2, "retention_grace_seconds": 1.0}
    publish_vectors(store, "m", TABLE, publish=retain)
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(store), "14"], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    time.sleep(2.5)
    from jobs.publish.job import rollback

    removed = 0
    for n in range(10):
        if n % 4 == 3:
            rollback(layout, "m", pointers(layout)["m"] - 1)
        else:
            result = publish_vectors(store, "m", TABLE, publish=retain)
            removed += len(result.retention["removed"])
        time.sleep(0.6)
    outs = [reader.communicate(timeout=120) for reader in readers]
    assert removed >= 2, "retention never ran during the test"
    for (out, err), reader in zip(outs, readers):
        assert reader.returncode == 0, err
        report = json.loads(out)
        assert report["errors"] == []
        assert len(report["seen"]) > 20 and len(set(report["seen"])) >= 3  # readers saw the versions move
