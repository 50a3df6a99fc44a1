"""latentstore export: the Embedding Projector's files and Parquet, checked against the store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import latentstore
from tests.helpers import publish_vectors, write_csv

ROOT = Path(__file__).resolve().parents[2]
VECTORS = {"a": [0.1, 0.2, 0.3], "b": [1.0 / 3, -2.5, 1e-7], "c": [7.0, 8.0, 9.0], "d\tx": [0.0, 1.0, 0.0]}
COUNTS = {"a": 5, "b": 9, "c": 5, "d\tx": 1}


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentstore.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def store(tmp_path) -> Path:
    root = tmp_path / "store"
    publish_vectors(root, "m", {"item": VECTORS}, counts=COUNTS)
    return root


def _from_store(store: Path) -> list[tuple]:
    con = latentstore.connect(store)
    rows = con.execute("SELECT key, vector, bias, count FROM m.item ORDER BY count DESC, key").fetchall()
    con.close()
    return rows


def test_projector_files_match_the_store_row_for_row_with_escaped_labels(store, tmp_path):
    labels = write_csv(tmp_path / "labels.csv", ["id", "title", "genres"],
                       [["a", "Tab\there", "x|y"], ["b", "Two\nlines", "back\\slash"], ["c", "plain", ""]])
    out = tmp_path / "projector"
    result = _cli("export", out, "--store", store, "--model", "m", "--entity", "item", "--labels", labels,
                  "--key-column", "id", "--label-column", "title", "--label-column", "genres")
    assert result.returncode == 0, result.stderr
    assert "4 rows of m.item v1 written" in result.stdout
    expected = _from_store(store)
    vectors = (out / "vectors.tsv").read_text().splitlines()
    assert [[np.float32(x) for x in line.split("\t")] for line in vectors] == \
        [[np.float32(x) for x in row[1]] for row in expected]  # exact float32 values, in the store's order
    metadata = (out / "metadata.tsv").read_text().split("\n")
    assert metadata[0] == "key\tcount\ttitle\tgenres" and metadata[-1] == ""
    assert metadata[1:-1] == ["b\t9\tTwo\\nlines\tback\\\\slash", "a\t5\tTab\\there\tx|y", "c\t5\tplain\t",
                              "d\\tx\t1\t\t"]  # most frequent first; a key without a label: empty fields
    assert all(line.count("\t") == 3 for line in metadata[1:-1])
    assert (out / "projector_config.pbtxt").read_text() == (
        'embeddings {\n  tensor_name: "m.item"\n  tensor_path: "vectors.tsv"\n  metadata_path: "metadata.tsv"\n}\n')


def test_parquet_has_every_row_with_its_vector_bias_and_lineage(store, tmp_path):
    out = tmp_path / "out" / "items.parquet"
    result = _cli("export", out, "--store", store, "--model", "m", "--entity", "item", "--format", "parquet",
                  "--min-count", 5)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out).to_pylist()
    expected = [row for row in _from_store(store) if row[3] >= 5]
    assert [(r["key"], tuple(r["vector"]), r["bias"], r["count"]) for r in table] == \
        [(k, tuple(v), b, c) for k, v, b, c in expected]
    con = latentstore.connect(store)
    run_id, snapshot_id = con.execute("SELECT run_id, snapshot_id FROM versions WHERE model = 'm'").fetchone()
    con.close()
    assert {(r["model"], r["entity"], r["version"], r["run_id"], r["snapshot_id"]) for r in table} == \
        {("m", "item", 1, run_id, snapshot_id)}
    assert all(r["created_at"] for r in table)
    assert [p.name for p in out.parent.iterdir()] == ["items.parquet"]  # no temporary file left


def test_export_errors_name_the_option(store, tmp_path):
    wrong = _cli("export", tmp_path / "x.csv", "--store", store, "--model", "m", "--format", "parquet")
    assert wrong.returncode == 2 and "name it .parquet" in wrong.stderr
    missing = _cli("export", tmp_path / "p", "--store", store, "--model", "m", "--labels", tmp_path / "none.csv",
                   "--label-column", "title")
    assert missing.returncode == 2 and "labels file not found" in missing.stderr
    labels = write_csv(tmp_path / "l.csv", ["key", "title"], [["a", "x"]])
    column = _cli("export", tmp_path / "p", "--store", store, "--model", "m", "--labels", labels,
                  "--label-column", "genre")
    assert column.returncode == 2 and "no column 'genre' (--label-column)" in column.stderr
    empty = _cli("export", tmp_path / "q", "--store", store, "--model", "m", "--min-count", 100)
    assert empty.returncode == 2 and "nothing to export" in empty.stderr
