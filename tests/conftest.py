"""Shared fixtures: one Spark session, one Prefect harness, small stores built once.

Environment first: Prefect and Spark read it at import/start time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="latentstore-tests-"))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("SPARK_CONF_DIR", str(ROOT / "infra" / "spark"))
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect-home")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch shares 2 cores with Spark and DuckDB here

import pytest  # noqa: E402

from tests.helpers import build_store, pipeline_config  # noqa: E402

#: Engine fixtures and the marker a test using them (directly or through another fixture) gets.
ENGINE_MARKERS = {"spark": "spark", "prefect_harness": "prefect"}


#: Files that take minutes as one unit (the README top to bottom): started first, so that on several workers
#: (`make test` runs files on 2) they do not end the run alone.
LONGEST_FIRST = ("test_movielens.py",)


def pytest_collection_modifyitems(items):
    """Markers from what a test really uses, not from its file: `make test-fast` deselects `spark` and
    `prefect`, so a pure test beside Spark tests still runs there, and a test that starts an engine
    through a fixture never does. And the longest files first."""
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: the rest keep their order
    for item in items:
        for fixture, marker in ENGINE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for the whole run (start-up costs 10-25 s)."""
    from jobs.index.config import SparkConfig
    from jobs.index.spark import spark_session

    session = spark_session(
        SparkConfig(
            master="local[2]",
            shuffle_partitions=2,
            conf={"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1", "spark.sql.adaptive.enabled": "true"},
        ),
        app_name="latentstore-tests",
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def seed() -> int:
    return 42


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


@pytest.fixture(scope="session")
def published_store(spark, session_tmp):
    """A small synthetic store: items (80) below the HNSW threshold, users (200) above it."""
    store = session_tmp / "published"
    cfg = pipeline_config(store.parent, name="shop", hnsw_min_rows=100)
    summary = build_store(cfg, store)
    return store, cfg, summary
