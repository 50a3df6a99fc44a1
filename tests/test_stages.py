"""The stages layer without Spark, torch or Prefect: synthetic inputs and the pipeline's policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import stages
from jobs.index.job import plan
from schemas.errors import ConfigError
from schemas.store import StoreLayout
from tests.helpers import pipeline_config


def test_the_stage_generates_a_synthetic_input_and_the_index_job_reads_files_only(tmp_path):
    cfg = pipeline_config(tmp_path)  # small synthetic ratings
    store = StoreLayout(tmp_path / "store")
    with pytest.raises(ConfigError, match="the index job reads files"):
        plan(cfg.index)
    resolved = stages.resolve_input(cfg.index, store)
    assert resolved.input.synthetic is None and Path(resolved.input.path).parent == store.inputs
    assert resolved.data_config() == cfg.index.data_config()  # the snapshot's content key does not change
    assert stages.resolve_input(cfg.index, store) == resolved  # generated once, found again
    planned = stages.plan_index(cfg, store)
    assert planned.cfg == resolved and [f.path for f in planned.files] == [Path(resolved.input.path).name]
