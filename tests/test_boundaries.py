"""Each heavy library behind one door: importing a stage pulls in only its own engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pyspark", "torch", "duckdb", "prefect")


@pytest.mark.parametrize(
    "module, allowed",
    [
        ("schemas", set()),
        ("jobs.config", set()),
        ("jobs.index.job", set()),
        ("jobs.index.rules", {"pyspark"}),
        ("jobs.index.events", {"pyspark"}),
        ("jobs.synthetic.events", set()),
        ("jobs.train.loop", {"torch"}),
        ("jobs.train.mf", {"torch"}),
        ("jobs.train.skipgram", {"torch"}),
        ("jobs.train.gru", {"torch"}),
        ("jobs.publish.job", {"duckdb"}),
        ("latentstore.client", {"duckdb"}),
        ("latentstore.cli", set()),
    ],
)
def test_imports_stay_behind_their_door(module, allowed):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    loaded = set(filter(None, out.strip().split(",")))
    assert loaded <= allowed, f"{module} imports {loaded - allowed}"


def test_flows_only_wire_jobs():
    source = (ROOT / "flows" / "pipeline.py").read_text()
    for engine in ("pyspark", "torch", "duckdb"):
        assert f"import {engine}" not in source and f"from {engine}" not in source
