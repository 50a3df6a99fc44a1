"""Bad input: one clear message naming the file, field or row; exit code 2; the store untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "latentstore.cli"]


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text('name = "films"\n' + body)
    return path


CSV_CONFIG = '[index.input]\npath = "{path}"\ncolumns = {{ user = "userId", item = "movieId" }}\n'


def _case(tmp_path: Path, case: str) -> tuple[Path, str]:
    header = "userId,movieId,rating,timestamp\n"
    if case == "missing config":
        return tmp_path / "absent.toml", r"config file not found: .*absent\.toml"
    if case == "unknown key":
        return _config(tmp_path, '[index.input]\npath = "r.csv"\n[train]\nepoch = 3\n'), r"pipeline\.toml: train\.epoch: unknown key"
    if case == "wrong type":
        return _config(tmp_path, '[index.input]\npath = "r.csv"\n[train]\ndim = "big"\n'), r"pipeline\.toml: train\.dim: Input should be a valid integer"
    if case == "missing input":
        return _config(tmp_path, CSV_CONFIG.format(path="nowhere.csv")), r"input not found: .*nowhere\.csv"
    if case == "empty input":
        (tmp_path / "empty.csv").write_text(header)
        return _config(tmp_path, CSV_CONFIG.format(path="empty.csv")), r"input has no rows: .*empty\.csv"
    if case == "missing column":
        (tmp_path / "r.csv").write_text("uid,movieId,rating,timestamp\n1,2,3,4\n")
        return (_config(tmp_path, CSV_CONFIG.format(path="r.csv")),
                r"column 'userId' \(input\.columns\.user\) not found in .*r\.csv; its columns are: uid, movieId, rating, timestamp")
    if case == "unknown format":
        (tmp_path / "r.xyz").write_text(header + "1,2,3,4\n")
        return _config(tmp_path, CSV_CONFIG.format(path="r.xyz")), r"cannot tell the format of .*r\.xyz: set input\.format"
    if case == "corrupt parquet":
        (tmp_path / "r.parquet").write_bytes(b"not a parquet file at all")
        return _config(tmp_path, CSV_CONFIG.format(path="r.parquet")), r"cannot read .*r\.parquet as parquet"
    raise AssertionError(case)


CASES = ["missing config", "unknown key", "wrong type", "missing input", "empty input", "missing column",
         "unknown format", "corrupt parquet"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_cleanly_without_touching_a_new_store(tmp_path, case):
    config, message = _case(tmp_path, case)
    store = tmp_path / "store"
    result = _cli("run", config, "--store", store)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not store.exists()


@pytest.mark.spark
def test_bad_input_leaves_an_existing_store_exactly_as_it_was(tmp_path, published_store):
    store, _, _ = published_store
    before = _tree(store)
    config, _ = _case(tmp_path, "missing column")
    result = _cli("run", config, "--store", store)
    assert result.returncode == 2 and result.stderr.startswith("error: column 'userId'")
    assert _tree(store) == before


def test_help_on_every_command():
    for command in ("run", "index", "train", "publish", "sql", "similar", "versions"):
        result = _cli(command, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout, command


def test_queries_on_a_missing_store_fail_cleanly(tmp_path):
    result = _cli("sql", "SELECT 1", "--store", tmp_path / "none")
    assert result.returncode == 2 and result.stderr.startswith("error: no latentstore store at")
    assert not (tmp_path / "none").exists()


# -- environment failures (issue 12, case 10): one line, the documented exit code, no traceback ---------------

@pytest.fixture
def small_store(tmp_path) -> Path:
    from tests.helpers import publish_vectors

    store = tmp_path / "store"
    publish_vectors(store, "m", {"item": {"a": [1.0, 0.0], "b": [0.9, 0.1], "c": [0.0, 1.0]}})
    return store


def _one_error_line(result: subprocess.CompletedProcess, code: int, pattern: str) -> None:
    import re

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_a_store_path_that_is_a_file_is_named(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a store")
    for command in (["versions"], ["rollback", "--model", "m", "--to", "1"], ["repair"]):
        _one_error_line(_cli(*command, "--store", afile), 2, rf"error: .*{afile}")
    _one_error_line(_cli("repair", "--store", afile / "below"), 2, rf"{afile} is a file, not a directory")
    assert afile.read_text() == "not a store"


def test_names_that_are_paths_and_unknown_models_are_refused(small_store):
    _one_error_line(_cli("rollback", "--store", small_store, "--model", "../x", "--to", "1"), 2,
                    r"error: model '\.\./x' must match")
    _one_error_line(_cli("similar", "a", "--store", small_store, "--model", "../x"), 2, r"error: no model '\.\./x'")
    _one_error_line(_cli("versions", "--store", small_store, "--model", "nosuch"), 2,
                    r"error: no model 'nosuch' in .*; its models: m")


def test_a_full_disk_is_one_line_exit_1(small_store):
    with open("/dev/full", "w") as full:  # every write fails with ENOSPC
        result = subprocess.run([*CLI, "similar", "a", "--store", str(small_store), "--model", "m", "-f", "csv"],
                                cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    _one_error_line(result, 1, r"^error: No space left on device")


def test_debug_shows_the_traceback_of_an_unexpected_error(small_store):
    with open("/dev/full", "w") as full:
        result = subprocess.run([*CLI, "--debug", "similar", "a", "--store", str(small_store), "--model", "m",
                                 "-f", "csv"], cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" in result.stderr and "OSError" in result.stderr


def test_sql_that_duckdb_rejects_exits_1_with_duckdbs_message(small_store):
    for query, message in (("SELECT * FROM m.nosuch", "Table with name nosuch does not exist"),
                           ("SELECT key FROM m.item WHERE", "syntax error"),
                           ("SELECT 1 / 'a'", "Conversion Error")):
        result = _cli("sql", "--store", small_store, query)
        assert result.returncode == 1 and result.stdout == "", (query, result.stderr)
        assert result.stderr.startswith("error: ") and message in result.stderr and "Traceback" not in result.stderr
    assert _cli("sql", "--store", small_store, "SELECT count(*) AS n FROM m.item", "-f", "csv").stdout == "n\n3\n"
