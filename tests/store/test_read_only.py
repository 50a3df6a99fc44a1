"""Read paths that cannot write (issue 12, cases 1 and 9): every attack on a reader's connection fails with a
clear error and leaves every file of the store as it was; store files honour the umask, version files are
read-only; a store copied to another path and made read-only opens from there."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

import latentstore
from jobs.common.files import atomic_write_text, staging_dir
from schemas.store import StoreLayout
from tests.helpers import publish_vectors, write_csv

ROOT = Path(__file__).resolve().parents[2]
DUCKDB_CLI = Path(sys.executable).parent / "duckdb"


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


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file of the store: content hash and mode."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(*args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentstore.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _attacks(root: Path) -> dict[str, tuple[str, str]]:
    """name -> (SQL, what DuckDB's error says) for the locked connection."""
    version_file = StoreLayout(root).version_file("demo", 1)
    return {
        "copy onto the pointer": (f"COPY (SELECT 99) TO '{root}/models/demo/CURRENT' (HEADER false)",
                                  "Permission Error"),
        "reattach a version read-write": (f"DETACH demo; ATTACH '{version_file}' AS rw; DROP TABLE rw.item",
                                          "Permission Error"),
        "attach or replace": (f"ATTACH OR REPLACE '{version_file}' AS demo", "Error"),
        "write into an attached version": ("CREATE TABLE demo.hack AS SELECT 1", "read-only"),
        "copy database into a version": ("ATTACH ':memory:' AS scratch; CREATE TABLE scratch.t AS SELECT 1; "
                                         "COPY FROM DATABASE scratch TO demo", "read-only"),
        "export": (f"EXPORT DATABASE '{root}/exported'", "Permission Error"),
        "read another file": (f"SELECT * FROM read_csv('{root}/models/demo/CURRENT')", "Permission Error"),
        "install": ("INSTALL vss", "Permission Error"),
        "load": ("LOAD httpfs", "Permission Error"),
        "turn external access back on": ("SET enable_external_access = true", "configuration has been locked"),
        "turn the file system back on": ("SET disabled_filesystems = ''", "configuration has been locked"),
        "unlock": ("SET lock_configuration = false", "configuration has been locked"),
        "reset": ("RESET enable_external_access", "configuration has been locked"),
        "spill into the store": (f"SET temp_directory = '{root}'", "configuration has been locked"),
    }


@pytest.mark.parametrize("attack", list(_attacks(Path("/s"))))
def test_connect_refuses_the_attack_and_the_store_is_unchanged(store, attack):
    sql, error = _attacks(store)[attack]
    before = _snapshot(store)
    con = latentstore.connect(store)
    try:
        with pytest.raises(duckdb.Error, match=error):
            con.execute(sql)
    finally:
        con.close()
    assert _snapshot(store) == before
    assert not (store / "exported").exists()
    con = latentstore.connect(store)  # and the store still opens, its version intact
    assert con.execute("SELECT count(*) FROM demo.item").fetchone()[0] == 30
    con.close()


def test_the_locked_connection_still_answers_everything_it_should(store):
    import pyarrow as pa

    con = latentstore.connect(store)
    try:
        assert con.execute("SELECT model, version, is_current, status FROM versions").fetchall() == [
            ("demo", 1, True, "current")]
        assert con.execute("SELECT event FROM registry_events").fetchall() == [("publish",)]
        assert con.execute("SELECT version_at('demo', now())").fetchone()[0] == 1
        assert len(con.execute("SELECT * FROM most_similar('demo', 'item', 'i00', k := 5)").fetchall()) == 5
        con.execute("SET VARIABLE q = (SELECT unit FROM demo.user WHERE key = 'u00')")  # the documented fast path
        plan = "\n".join(r[1] for r in con.execute(
            "EXPLAIN SELECT * FROM demo_user_nearest(getvariable('q'), k := 3)").fetchall())
        assert "HNSW_INDEX_SCAN" in plan
        assert con.execute("SELECT key FROM demo_user_nearest(getvariable('q'), k := 1)").fetchone()[0] == "u00"
        mine = pa.table({"key": ["i01", "nobody"]})  # the user's own data comes in as Python objects
        con.register("mine", mine)
        assert con.execute("SELECT count(e.key) FROM mine m LEFT JOIN demo.item e USING (key)").fetchone()[0] == 1
    finally:
        con.close()
    with latentstore.open_store(store) as opened:  # the Store's queries run on the same locked connection
        assert len(opened.similar("demo", "user", "u01", k=5)) == 5
        assert opened.similar_many("demo", "item", ["i01", "i02"], k=3).num_rows == 6


@pytest.mark.parametrize("attack, statement", [
    ("copy onto the pointer", "COPY"),
    ("reattach a version read-write", "DETACH"),
    ("export", "EXPORT"),
    ("install", "INSTALL and LOAD"),
    ("load", "INSTALL and LOAD"),
])
def test_latentstore_sql_refuses_the_attack_by_name_and_the_store_is_unchanged(store, attack, statement):
    sql, _ = _attacks(store)[attack]
    before = _snapshot(store)
    result = _cli("sql", "--store", store, sql)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"error: the store is read-only: {statement} statements are refused (queries "
                                     "only: SELECT, EXPLAIN, SET VARIABLE, PRAGMA, CALL); use --table NAME=FILE to "
                                     "query a file of yours")
    assert _snapshot(store) == before


def test_latentstore_sql_configuration_changes_and_file_reads_fail_on_the_lock(store):
    before = _snapshot(store)
    locked = _cli("sql", "--store", store, "SET enable_external_access = true")
    assert locked.returncode == 1 and len(locked.stderr.strip().splitlines()) == 1
    assert "configuration has been locked" in locked.stderr
    sneaky = _cli("sql", "--store", store, f"SELECT * FROM read_csv('{store}/FORMAT')")
    assert sneaky.returncode == 1 and "Permission Error" in sneaky.stderr
    ok = _cli("sql", "--store", store, "SET VARIABLE k = 'i01'; SELECT key FROM demo.item WHERE key = getvariable('k')",
              "-f", "csv")
    assert ok.returncode == 0 and ok.stdout.splitlines() == ["key", "i01"], ok.stderr
    assert _snapshot(store) == before


def test_a_users_file_comes_in_as_a_table_and_only_that_way(store, tmp_path):
    people = write_csv(tmp_path / "people.csv", ["key", "age"], [["u01", 31], ["stranger", 40]])
    result = _cli("sql", "--store", store, "--table", f"people={people}", "-f", "csv",
                  "SELECT p.key, p.age, e.key IS NOT NULL AS known FROM people p LEFT JOIN demo.user e USING (key) "
                  "ORDER BY p.key")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["key,age,known", "stranger,40,False", "u01,31,True"]
    direct = _cli("sql", "--store", store, "--table", f"people={people}", f"SELECT * FROM read_csv('{people}')")
    assert direct.returncode == 1 and "Permission Error" in direct.stderr  # the file itself stays closed
    taken = _cli("sql", "--store", store, "--table", f"versions={people}", "SELECT 1")
    assert taken.returncode == 2 and "table 'versions' for" in taken.stderr and "taken" in taken.stderr
    malformed = _cli("sql", "--store", store, "--table", str(people), "SELECT 1")
    assert malformed.returncode == 2 and "expected NAME=FILE" in malformed.stderr
    con = latentstore.connect(store, tables={"people": people})
    try:
        assert con.execute("SELECT count(*) FROM people").fetchone()[0] == 2
        with pytest.raises(duckdb.Error, match="Permission Error"):
            con.execute(f"COPY people TO '{people}'")
    finally:
        con.close()
    assert people.read_text().splitlines()[0] == "key,age"


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


# -- a store that travels (case 9) --------------------------------------------------------------------------

def test_a_copied_read_only_store_opens_at_its_new_path(store, tmp_path):
    moved = tmp_path / "mounted elsewhere" / "it's \"the\" store"
    shutil.copytree(store, moved)
    subprocess.run(["chmod", "-R", "a-w", str(moved)], check=True)
    try:
        assert "/" not in (moved / "current.sql").read_text().split("ATTACH IF NOT EXISTS '")[1].split("models/")[0]
        con = latentstore.connect(moved)
        try:
            path = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = 'demo'").fetchone()[0]
            assert path == str(moved / "models" / "demo" / "v000001.duckdb")
            assert con.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 50
            assert con.execute("SELECT status, retained FROM versions").fetchall() == [("current", True)]
        finally:
            con.close()
        result = _cli("similar", "--store", moved, "--model", "demo", "--entity", "item", "i00", "-k", "2", "-f", "csv")
        assert result.returncode == 0 and len(result.stdout.splitlines()) == 3, result.stderr
        plain = subprocess.run([str(DUCKDB_CLI), "-init", "current.sql", "-csv", "-c",
                                "SELECT status FROM versions; SELECT count(*) AS n FROM demo.user"],
                               cwd=moved, capture_output=True, text=True, timeout=120)
        assert plain.returncode == 0 and "Error" not in plain.stderr, plain.stderr
        assert plain.stdout.split() == ["status", "current", "n", "20"]
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(moved)], check=True)
