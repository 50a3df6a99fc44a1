"""Readers in other processes during publishes; two publishers at once; the writer lock."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import stages
from jobs.publish.lock import writer_lock
from jobs.store.registry import current_version
from schemas.store import StoreLayout
from tests.helpers import build_store, pipeline_config

pytestmark = [pytest.mark.spark, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
NO_GATE = {"gate": {"enabled": False}}  # different seeds of one model: the lock is under test, not quality

READER = r"""
import json, sys, time
import latentstore
store, seconds, until = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + seconds
seen = []
while time.monotonic() < deadline and not (seen and seen[-1].get("model", 0) >= until):
    try:
        con = latentstore.connect(store)
        model_version = con.execute("SELECT version FROM models WHERE model = 'race'").fetchone()[0]
        meta_version = con.execute("SELECT version FROM race.meta").fetchone()[0]
        view_versions = [v for (v,) in con.execute("SELECT DISTINCT version FROM embeddings WHERE model = 'race'").fetchall()]
        current = [v for (v,) in con.execute("SELECT version FROM versions WHERE model = 'race' AND is_current").fetchall()]
        rows = con.execute("SELECT count(*) FROM embeddings WHERE model = 'race'").fetchone()[0]
        con.close()
        seen.append({"model": model_version, "meta": meta_version, "view": view_versions, "current": current, "rows": rows})
    except Exception as exc:  # any error at all is a failure of the layout
        seen.append({"error": repr(exc)})
print(json.dumps(seen))
"""

PUBLISH = r"""
import sys
NO_GATE = {"gate": {"enabled": False}}  # different seeds of one model: the lock is under test, not quality
from jobs import stages
from schemas.store import StoreLayout
from tests.helpers import pipeline_config
base, store, seed, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
cfg = pipeline_config(__import__("pathlib").Path(base), name="race", train={"seed": seed}, publish=NO_GATE)
cfg = cfg.model_copy(update={"publish": cfg.publish.model_copy(update={"lock_timeout_seconds": timeout})})
layout = StoreLayout(store)
result = stages.publish(cfg, layout)
print(result["version"])
"""


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.fixture(scope="module")
def race_store(spark, tmp_path_factory):
    """A store with v1 current and four more finished runs ready to publish (seeds 1-4; a run is published once):
    each test publishes its own seeds, so they pass in any order."""
    base = tmp_path_factory.mktemp("race")
    store = base / "store"
    build_store(pipeline_config(base, name="race", publish=NO_GATE), store)
    for seed in (1, 2, 3, 4):
        stages.train(pipeline_config(base, name="race", train={"seed": seed}), StoreLayout(store))
    return base, store


def test_readers_never_fail_or_see_a_mix_during_publishes(race_store):
    base, store = race_store
    start = current_version(StoreLayout(store), "race")  # v1 when this test runs first; any order works
    readers = [_python(READER, store, 120, start + 2) for _ in range(2)]  # until they see both publishes
    time.sleep(2.0)  # let readers start looping on the current version
    for seed in (1, 2):
        publisher = _python(PUBLISH, base, store, seed, 60)
        out, err = publisher.communicate(timeout=120)
        assert publisher.returncode == 0, err
        time.sleep(1.0)
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err
        seen = json.loads(out)
        assert seen, "reader made no queries"
        assert [s for s in seen if "error" in s] == []
        for s in seen:
            assert s["model"] == s["meta"] and s["view"] == [s["model"]] and s["current"] == [s["model"]]
        versions = [s["model"] for s in seen]
        assert versions == sorted(versions), "a reader went back to an older version"
        assert versions[0] == start and versions[-1] == start + 2


def test_two_concurrent_publishers_are_serialised(race_store):
    base, store = race_store
    layout = StoreLayout(store)
    before = sorted(p.name for p in layout.model_dir("race").glob("*.duckdb"))
    with writer_lock(layout.lock_file, timeout=5):
        # while the lock is held, a publisher with no patience fails with a clear message...
        impatient = _python(PUBLISH, base, store, 3, 0)
        _, err = impatient.communicate(timeout=120)
        assert impatient.returncode != 0
        assert "(a publish, rollback or repair) is locked by pid" in err and "--lock-timeout" in err
        # ...and one that waits is blocked until the lock is released
        first = _python(PUBLISH, base, store, 3, 60)
        second = _python(PUBLISH, base, store, 4, 60)
        time.sleep(1.5)
        assert first.poll() is None and second.poll() is None
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [e for _, e in outs]
    after = sorted(p.name for p in layout.model_dir("race").glob("*.duckdb"))
    assert len(after) == len(before) + 2  # two new versions, none clobbered
    records = sorted(p.name for p in (layout.registry_versions / "race").glob("*.json"))
    assert records == [n.replace(".duckdb", ".json") for n in after]


def test_an_open_reader_keeps_its_version_and_a_new_one_sees_the_next(race_store):
    import latentstore

    base, store = race_store
    old = latentstore.connect(store)
    version_before = old.execute("SELECT version FROM race.meta").fetchone()[0]
    vectors_before = old.execute("SELECT key, vector FROM race.item ORDER BY key").fetchall()
    cfg = pipeline_config(base, name="race", train={"seed": 5}, publish=NO_GATE)
    stages.train(cfg, StoreLayout(store))
    published = stages.publish(cfg, StoreLayout(store))
    assert published["version"] > version_before
    assert old.execute("SELECT version FROM race.meta").fetchone()[0] == version_before
    assert old.execute("SELECT key, vector FROM race.item ORDER BY key").fetchall() == vectors_before
    old.close()
    new = latentstore.connect(store)
    assert new.execute("SELECT version FROM race.meta").fetchone()[0] == published["version"]
    new.close()
