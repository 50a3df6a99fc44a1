"""A store that repairs: garbled or missing pointers are named, readers keep working, `repair` and
`rollback` rebuild them from the registry (issue 12, case 8)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import latentstore
from jobs.publish.repair import repair
from jobs.store.registry import BrokenPointer, events
from schemas.store import StoreLayout
from tests.helpers import publish_vectors

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "latentstore.cli"]
TWO_D = {"item": {"a": [1, 0], "b": [0.9, 0.1], "c": [0, 1], "d": [0.1, 0.9]}}
NO_GATE = {"gate": {"enabled": False}}
GARBLED = {"letters": "abc", "empty": "", "no such version": "99", "negative": "-1", "deleted": None}
FOUND = {"abc": "held 'abc'", "": "held ''", "99": "held '99'", "-1": "held '-1'", None: "was missing"}


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def _two_models(store: Path) -> StoreLayout:
    """Models m (v1, v2 current) and n (v1), published through the real publish job."""
    publish_vectors(store, "m", TWO_D, publish=NO_GATE)
    publish_vectors(store, "m", TWO_D, publish=NO_GATE)
    publish_vectors(store, "n", TWO_D, publish=NO_GATE)
    return StoreLayout(store)


def _break(layout: StoreLayout, content: str | None) -> None:
    pointer = layout.pointer_file("m")
    pointer.unlink()
    if content is not None:
        pointer.write_text(content)


def _current_sql_models(layout: StoreLayout) -> set[str]:
    con = latentstore.connect(layout.root)
    try:
        return {m for (m,) in con.execute("SELECT model FROM models").fetchall()}
    finally:
        con.close()


@pytest.mark.parametrize("content", GARBLED.values(), ids=GARBLED.keys())
def test_a_broken_pointer_is_named_readers_keep_working_and_repair_rebuilds_it(tmp_path, content):
    layout = _two_models(tmp_path / "store")
    _break(layout, content)
    sql_before = layout.current_sql.read_text()
    # readers still see the last good versions
    assert _current_sql_models(layout) == {"m", "n"}
    # every writer, for any model, refuses with an error naming the pointer file (not a raw traceback)
    for attempt in (lambda: publish_vectors(layout.root, "n", TWO_D, publish=NO_GATE),
                    lambda: publish_vectors(layout.root, "m", TWO_D, publish=NO_GATE)):
        with pytest.raises(BrokenPointer, match=rf"{layout.pointer_file('m')} .*latentstore repair"):
            attempt()
    assert layout.current_sql.read_text() == sql_before  # nothing was dropped from current.sql
    assert repair(layout) == [f"m: pointer rebuilt to v000002 (it {FOUND[content]})"]
    assert layout.pointer_file("m").read_text() == "2\n"
    event = [e for e in events(layout, "m") if e["event"] == "repaired"]
    assert len(event) == 1 and event[0]["to_version"] == 2 and event[0]["details"]["found"] == content
    assert _current_sql_models(layout) == {"m", "n"}
    assert publish_vectors(layout.root, "m", TWO_D, publish=NO_GATE).version == 3  # writers work again
    assert repair(layout) == []


def test_the_cli_names_a_broken_pointer_and_repairs_it(tmp_path):
    layout = _two_models(tmp_path / "store")
    _break(layout, "abc")
    versions = _cli("versions", "--store", layout.root)
    assert versions.returncode == 0 and f"warning: {layout.pointer_file('m')}" in versions.stderr
    refused = _cli("rollback", "--store", layout.root, "--model", "n", "--to", 1)
    assert refused.returncode == 2 and refused.stderr.startswith("error: ") and "Traceback" not in refused.stderr
    assert str(layout.pointer_file("m")) in refused.stderr
    repaired = _cli("repair", "--store", layout.root)
    assert repaired.returncode == 0, repaired.stderr
    assert "m: pointer rebuilt to v000002" in repaired.stdout
    assert _cli("repair", "--store", layout.root).stdout.strip().endswith("nothing to repair")


def test_rollback_repairs_the_pointer_of_its_model_to_the_version_given(tmp_path):
    layout = _two_models(tmp_path / "store")
    _break(layout, "garbage")
    rolled = _cli("rollback", "--store", layout.root, "--model", "m", "--to", 1)
    assert rolled.returncode == 0, rolled.stderr
    assert "m: a broken pointer -> v1 (repaired" in rolled.stdout
    con = latentstore.connect(layout.root)
    assert con.execute("SELECT version FROM models WHERE model = 'm'").fetchone()[0] == 1
    con.close()


def test_a_deleted_pointer_does_not_silently_drop_the_model_from_current_sql(tmp_path):
    layout = _two_models(tmp_path / "store")
    _break(layout, None)
    with pytest.raises(BrokenPointer, match="is missing although the model was published"):
        publish_vectors(layout.root, "n", TWO_D, publish=NO_GATE)
    assert _current_sql_models(layout) == {"m", "n"}
