"""A publish and a connect on a store with a long history: time independent of the registry's size.

An hourly deployment adds one version, a few events and, with retention, a
``removed`` event every hour: 10,000 versions is about a year. This builds a
store whose registry holds ``--versions`` versions (records and events written by
the registry's own writers, compacted as publishes compact them; the retained
files are real, the older ones removed as retention removes them), then times
real publishes (the publish job: recovery, gate, version file, switch, retention)
and read-client connects, against the same on a store with 10 versions, in one
run.

    .venv/bin/python benchmarks/registry.py            # 10 and 10,000 versions
    .venv/bin/python benchmarks/registry.py --versions 1000

Writes benchmarks/results/registry.json: per history size ``publish_seconds``
and ``connect_seconds`` (medians), ``event_files`` and ``event_segments``; and the
ratios large / small (targets: about 1, i.e. independent of the history).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result  # noqa: E402
from jobs.common.files import read_json  # noqa: E402
from jobs.publish.config import PublishConfig  # noqa: E402
from jobs.publish.recovery import recover_store  # noqa: E402
from jobs.publish.registry import append_event, write_version_record  # noqa: E402
from schemas.store import StoreLayout  # noqa: E402
from tests.external import Vectors, publish_external  # noqa: E402

MODEL = "hourly"
REPEATS = 5
CONFIG = PublishConfig(keep_versions=3, retention_grace_seconds=0, gate={"enabled": False})


def _vectors(seed: int) -> dict[str, Vectors]:
    rng = np.random.default_rng(seed)
    keys = [f"k{i:04d}" for i in range(500)]
    return {"item": Vectors(keys, rng.normal(size=(500, 16)).astype(np.float32))}


def _publish(store: StoreLayout, work: Path, seed: int):
    return publish_external(store, MODEL, _vectors(seed), work / uuid.uuid4().hex[:12], CONFIG, metric=1.0)


def build(root: Path, versions: int) -> StoreLayout:
    """A store whose registry holds ``versions`` versions: v1 real, then records and events of hourly
    publishes whose files retention removed, and a rollback to v1 (the pointer must name a real file)."""
    store = StoreLayout(root / "store")
    first = _publish(store, root, seed=0)
    record = read_json(store.version_record(MODEL, first.version))
    for version in range(2, versions):
        write_version_record(store, {**record, "version": version, "run_id": f"run-{version}",
                                     "file": record["file"].replace("v000001", f"v{version:06d}")})
        append_event(store, MODEL, "publish", from_version=version - 1, to_version=version, run_id=f"run-{version}")
        append_event(store, MODEL, "removed", version=version - 1, details={"keep_versions": 3})
        if version % 100 == 0:
            recover_store(store)  # what each real publish does first: compaction included
    append_event(store, MODEL, "rollback", from_version=max(versions - 1, 1), to_version=first.version,
                 run_id=record["run_id"])
    recover_store(store)
    return store


def measure(versions: int) -> dict:
    import latentstore

    root = Path(tempfile.mkdtemp(prefix=f"registry-{versions}-"))
    try:
        started = time.perf_counter()
        store = build(root, versions)
        built = time.perf_counter() - started
        publishes, connects = [], []
        for seed in range(1, REPEATS + 1):
            started = time.perf_counter()
            _publish(store, root, seed)
            publishes.append(time.perf_counter() - started)
            started = time.perf_counter()
            con = latentstore.connect(store.root)
            con.execute("SELECT count(*) FROM versions").fetchone()
            con.close()
            connects.append(time.perf_counter() - started)
        con = latentstore.connect(store.root)
        recorded = con.execute("SELECT count(*) FROM versions").fetchone()[0]
        events = con.execute("SELECT count(*) FROM registry_events").fetchone()[0]
        con.close()
        return {
            "versions": recorded,
            "events": events,
            "event_files": len(list(store.registry_events.glob("*.json"))),
            "event_segments": len(list(store.event_segments.glob("*.jsonl"))),
            "build_seconds": round(built, 2),
            "publish_seconds": round(statistics.median(publishes), 4),
            "connect_seconds": round(statistics.median(connects), 4),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=10_000)
    args = parser.parse_args()
    small, large = measure(10), measure(args.versions)
    result = {
        "small": small,
        "large": large,
        "publish_ratio": round(large["publish_seconds"] / small["publish_seconds"], 2),
        "connect_ratio": round(large["connect_seconds"] / small["connect_seconds"], 2),
        "repeats": REPEATS,
    }
    print(write_result("registry", result))
    print(result)


if __name__ == "__main__":
    main()
