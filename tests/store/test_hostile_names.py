"""Hostile names at every entry point (issue 12, case 2): a name from a user is quoted (and works) or refused
with a clear one-line error; it is never executed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

import latentstore
from jobs.store.current_sql import render
from jobs.store.duck import quote_identifier, quote_literal
from schemas.errors import InputError, StoreError
from schemas.store import StoreLayout
from tests.helpers import publish_vectors, write_csv

ROOT = Path(__file__).resolve().parents[2]
#: The issue's CSV header: it closed the quoted column name and wrote a file.
INJECTION = "k\" AS VARCHAR) FROM feature_rows r; COPY (SELECT 43) TO 'pwned2.csv'; SELECT CAST(1 AS VARCHAR) --"
HOSTILE = [INJECTION, 'ge"nres', "it's", "'; DROP TABLE item; --", "with space", "{braces}", "Ünï ☃", '"', ""]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("hostile") / "store"
    publish_vectors(root, "demo", {"item": {f"i{i:02d}": rng.normal(size=4).tolist() for i in range(20)},
                                   "user": {f"u{i:02d}": rng.normal(size=4).tolist() for i in range(10)}})
    return root


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentstore.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _one_clear_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("name", HOSTILE)
def test_quoting_helpers_round_trip_any_name(name):
    con = duckdb.connect()
    result = con.execute(f"SELECT {quote_literal(name)} AS {quote_identifier(name or 'x')}")
    assert result.fetchone() == (name,)
    assert result.description[0][0] == (name or "x")
    with pytest.raises(InputError, match="must not be empty"):
        quote_identifier("")
    for bad in ("nul\x00byte", 7):
        with pytest.raises(InputError):
            quote_identifier(bad)
        with pytest.raises(InputError):
            quote_literal(bad)


def test_connect_refuses_or_quotes_hostile_names(store, tmp_path):
    for model in ("demo'; DROP TABLE demo.item; --", 'demo"', "../demo"):
        with pytest.raises(StoreError, match="no model"):
            latentstore.connect(store, versions={model: 1})
    with pytest.raises(StoreError, match="not a version number"):
        latentstore.connect(store, versions={"demo": "1; DROP TABLE demo.item"})
    people = write_csv(tmp_path / "people.csv", ["key"], [["u01"]])
    tables = {name: people for name in HOSTILE if name}
    con = latentstore.connect(store, tables=tables)
    try:
        for name in tables:  # every name became exactly that table
            assert con.execute(f"SELECT key FROM {quote_identifier(name)}").fetchall() == [("u01",)]
    finally:
        con.close()
    assert not (tmp_path / "pwned2.csv").exists() and not (ROOT / "pwned2.csv").exists()


def test_sql_never_runs_a_smuggled_statement(store, tmp_path):
    result = _cli("sql", "--store", store, "SELECT 1; COPY (SELECT 43) TO 'pwned.csv'", cwd=tmp_path)
    _one_clear_line(result, "COPY statements are refused")
    people = write_csv(tmp_path / "people.csv", ["key"], [["u01"]])
    quoted = _cli("sql", "--store", store, "--table", f'ge"nres={people}', "-f", "csv",
                  'SELECT key FROM "ge""nres"', cwd=tmp_path)
    assert quoted.returncode == 0 and quoted.stdout.splitlines() == ["key", "u01"], quoted.stderr
    assert not (tmp_path / "pwned.csv").exists()


def test_similar_refuses_hostile_models_entities_keys_and_columns(store, tmp_path):
    _one_clear_line(_cli("similar", "--store", store, "--model", 'demo"; COPY (SELECT 1) TO \'x.csv\'; --',
                         "i01", cwd=tmp_path), "no model")
    _one_clear_line(_cli("similar", "--store", store, "--model", "demo", "--entity", "item'; --", "i01",
                         cwd=tmp_path), "has no entity")
    _one_clear_line(_cli("similar", "--store", store, "--model", "demo", "--entity", "item",
                         "i01' OR '1'='1", cwd=tmp_path), "not found in demo.item")
    keys = write_csv(tmp_path / "keys.csv", [INJECTION], [["i01"], ["i02"]])
    found = _cli("similar", "--store", store, "--model", "demo", "--entity", "item", "--keys", keys,
                 "--key-column", INJECTION, "-k", "2", "-f", "csv", cwd=tmp_path)
    assert found.returncode == 0 and len(found.stdout.splitlines()) == 5, found.stderr
    assert not list(tmp_path.glob("x.csv")) and not (tmp_path / "pwned2.csv").exists()


def test_features_never_runs_a_column_name(store, tmp_path):
    rows = write_csv(tmp_path / "rows.csv", [INJECTION, "age"], [["u01", 30], ["nobody", 40]])
    out = tmp_path / "features.parquet"
    quoted = _cli("features", "--store", store, "--model", "demo", "--keys", rows, "--key-column", INJECTION,
                  "--out", out, cwd=tmp_path)
    assert quoted.returncode == 0, quoted.stderr  # the hostile name is a column like any other
    assert [r[INJECTION] for r in pq.read_table(out).to_pylist()] == ["u01", "nobody"]
    assert not (tmp_path / "pwned2.csv").exists()
    odd = write_csv(tmp_path / "odd.csv", ["user's id", "age"], [["u01", 30], ["nobody", 40]])
    result = _cli("features", "--store", store, "--model", "demo", "--keys", odd, "--key-column", "user's id",
                  "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out).to_pylist()
    assert [r["user's id"] for r in table] == ["u01", "nobody"] and [r["vector"] is None for r in table] == [False, True]


def test_plot_quotes_label_columns(store, tmp_path):
    labels = write_csv(tmp_path / "labels.csv", ["it's key", 'ge"nres {0}', INJECTION],
                       [[f"i{i:02d}", f"g{i % 3}|x", f"title {i}"] for i in range(20)])
    out = tmp_path / "map.png"
    result = _cli("plot", "--store", store, "--model", "demo", "--labels", labels, "--key-column", "it's key",
                  "--label-column", 'ge"nres {0}', "--title-column", INJECTION, "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "pwned2.csv").exists()
    from jobs.store.maps import _labels

    assert _labels(str(labels), "it's key", 'ge"nres {0}', INJECTION)["i04"] == ("g1", "title 4")
    _one_clear_line(_cli("plot", "--store", store, "--model", "demo", "--labels", labels, "--label-column",
                         "nope\"; --", "--key-column", "it's key", "--out", out, cwd=tmp_path),
                    "no column 'nope\"; --' (--label-column)")
    _one_clear_line(_cli("plot", "--store", store, "--model", "demo", "--out", tmp_path / "map.txt", cwd=tmp_path),
                    "name the file .png")


def test_current_sql_refuses_hostile_model_and_entity_names(store):
    from jobs.common.files import read_json

    layout = StoreLayout(store)
    record = read_json(layout.version_record("demo", 1))
    for model in ("demo; DROP", "Demo", "select", "../demo", "demo'"):
        with pytest.raises(StoreError, match=f"registry record of model {model!r}: model") as caught:
            render(layout, {model: record})
        assert "\n" not in str(caught.value)
    hostile_entity = {**record, "entities": {"item\"; --": record["entities"]["item"]}}
    with pytest.raises(StoreError, match="registry record of model 'demo': entity"):
        render(layout, {"demo": hostile_entity})
    script = render(layout, {"demo": record})  # the store's own names go in as they are, paths as literals
    assert "ATTACH IF NOT EXISTS 'models/demo/v000001.duckdb' AS demo (READ_ONLY);" in script
