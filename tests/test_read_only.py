"""Store files honour the umask and version files are read-only (issue 12, case 9)."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import numpy as np
import pytest

import latentstore
from jobs.common.files import atomic_write_text, staging_dir
from schemas.store import StoreLayout
from tests.helpers import publish_vectors


def _vectors(prefix: str, n: int, seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    return {f"{prefix}{i:02d}": rng.normal(size=4).tolist() for i in range(n)}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """demo.item (30 keys) and demo.user (20 keys, HNSW index), published by the real publish job."""
    root = tmp_path_factory.mktemp("read-only") / "store"
    publish_vectors(root, "demo", {"item": _vectors("i", 30, 1), "user": _vectors("u", 20, 2)},
                    publish={"hnsw_min_rows": 20})
    return root


# -- file modes (case 9) ------------------------------------------------------------------------------------

@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_writes_honour_the_umask(tmp_path, umask_022):
    atomic_write_text(tmp_path / "plain", "x")
    atomic_write_text(tmp_path / "frozen", "x", read_only=True)
    assert (_mode(tmp_path / "plain"), _mode(tmp_path / "frozen")) == (0o644, 0o444)
    assert _mode(staging_dir(tmp_path / "tmp", "snapshot")) == 0o755
    os.umask(0o027)
    atomic_write_text(tmp_path / "plain", "y")  # a replace gets the mode anew
    atomic_write_text(tmp_path / "frozen", "y", read_only=True)  # replacing a read-only file works
    assert (_mode(tmp_path / "plain"), _mode(tmp_path / "frozen")) == (0o640, 0o440)
    assert (tmp_path / "frozen").read_text() == "y"


def test_store_files_honour_the_umask_and_versions_are_read_only(tmp_path, umask_022):
    from jobs.publish.job import rollback

    root = tmp_path / "store"
    layout = StoreLayout(root)
    keep = {"keep_versions": 2}
    for seed in range(3):  # the third publish removes v1 (a read-only file) by retention
        publish_vectors(root, "demo", {"item": _vectors("i", 5, seed)}, publish=keep)
    rollback(layout, "demo", 2)  # replaces the pointer
    assert sorted(p.name for p in layout.model_dir("demo").glob("*.duckdb")) == ["v000002.duckdb", "v000003.duckdb"]
    assert layout.pointer_file("demo").read_text() == "2\n"
    for path in (layout.format_file, layout.current_sql, layout.pointer_file("demo"),
                 *layout.registry_versions.rglob("*.json"), *layout.registry_events.glob("*.json")):
        assert _mode(path) in (0o644, 0o444), (path, oct(_mode(path)))  # readable by all, writable by none but us
    for path in layout.model_dir("demo").glob("*.duckdb"):
        assert _mode(path) == 0o444, (path, oct(_mode(path)))
    con = latentstore.connect(root)
    assert con.execute("SELECT version FROM models").fetchone()[0] == 2
    con.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file modes")
def test_a_version_file_cannot_be_opened_for_writing(store):
    with pytest.raises(PermissionError):
        open(StoreLayout(store).version_file("demo", 1), "r+b")
    with pytest.raises(duckdb.Error):
        duckdb.connect(str(StoreLayout(store).version_file("demo", 1)))
