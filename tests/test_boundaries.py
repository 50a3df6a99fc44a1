"""Boundaries: dependencies point one way, and each heavy library stays behind its door.

Direction, top to bottom: the entry points (the CLI, ``python -m jobs.index`` and
``jobs.train``) -> flows (wiring only) -> stages (jobs.stages, jobs.policy,
jobs.markers, the pipeline config) -> the jobs (index, train, publish; none
imports another), and beside them the read client (latentstore) and the synthetic
generators (called by the stage, never by the index job) -> store access
(jobs.store, shared by the publish job and the read client) -> the generators'
settings (which the index config names) -> common -> schemas. Checked on the
source with ``ast``, imports inside functions included.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pyspark", "torch", "duckdb", "prefect")


#: Each module and the heavy libraries importing it may load.
DOORS = [
    ("schemas", set()),
    ("jobs.config", set()),
    ("jobs.index.job", set()),
    ("jobs.index.rules", {"pyspark"}),
    ("jobs.index.events", {"pyspark"}),
    ("jobs.synthetic.events", set()),
    ("jobs.stages", set()),
    ("jobs.policy", set()),
    ("jobs.store.registry", set()),
    ("jobs.store.current_sql", {"duckdb"}),
    ("jobs.store.maps", {"duckdb"}),
    ("jobs.train.loop", {"torch"}),
    ("jobs.train.mf", {"torch"}),
    ("jobs.train.skipgram", {"torch"}),
    ("jobs.train.gru", {"torch"}),
    ("jobs.publish.job", {"duckdb"}),
    ("latentstore.client", {"duckdb"}),
    ("latentstore.cli", set()),
]


def test_imports_stay_behind_their_door():
    """Each module in a fresh interpreter (what it pulls in is what a user of it pays), all at once."""
    code = "import sys, {}; print(','.join(m for m in {!r} if m in sys.modules))"
    running = [(module, allowed, subprocess.Popen([sys.executable, "-c", code.format(module, HEAVY)], cwd=ROOT,
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
               for module, allowed in DOORS]
    breaches = []
    for module, allowed, process in running:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"import {module} failed: {err}"
        loaded = set(filter(None, out.strip().split(",")))
        if not loaded <= allowed:
            breaches.append(f"{module} imports {sorted(loaded - allowed)}")
    assert breaches == []


def test_flows_only_wire_jobs():
    source = (ROOT / "flows" / "pipeline.py").read_text()
    for engine in ("pyspark", "torch", "duckdb"):
        assert f"import {engine}" not in source and f"from {engine}" not in source


# -- dependencies point one way --------------------------------------------------------------------------------

PACKAGES = ("latentstore", "flows", "jobs", "schemas")
#: Each layer, top to bottom, with the layers it may import besides its own.
LAYERS = {
    "entry": {"flows", "stages", "jobs", "read client", "synthetic", "store access", "synthetic settings", "common",
              "schemas"},
    "flows": {"stages", "schemas"},
    "stages": {"jobs", "synthetic", "store access", "synthetic settings", "common", "schemas"},
    "jobs": {"store access", "synthetic settings", "common", "schemas"},
    "read client": {"store access", "common", "schemas"},
    "synthetic": {"store access", "synthetic settings", "common", "schemas"},  # planted measures: exact top-k
    "store access": {"common", "schemas"},
    "synthetic settings": {"common", "schemas"},
    "common": {"schemas"},
    "schemas": set(),
}
#: The layer of a module: that of the longest of these names it is or lies under ("jobs" is only the package
#: itself: a new module directly in jobs/ must be placed here).
MEMBERS = {
    "latentstore.cli": "entry", "jobs.index.__main__": "entry", "jobs.train.__main__": "entry",
    "flows": "flows",
    "jobs.stages": "stages", "jobs.policy": "stages", "jobs.markers": "stages", "jobs.config": "stages",
    "jobs.index": "jobs", "jobs.train": "jobs", "jobs.publish": "jobs",
    "latentstore": "read client",
    "jobs.store": "store access",
    "jobs.synthetic": "synthetic", "jobs.synthetic.config": "synthetic settings",
    "jobs.common": "common", "jobs": "common",
    "schemas": "schemas",
}
#: Layers whose members stay apart: a job changes without reading the others.
SEPARATE = {"jobs"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _member(module: str) -> str:
    """The MEMBERS name ``module`` falls under (the longest)."""
    names = [m for m in MEMBERS if module == m or (module.startswith(m + ".") and m != "jobs")]
    assert names, f"{module} is in no layer: add it to MEMBERS in {Path(__file__).name}"
    return max(names, key=len)


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module imported) for every first-party import in ``source``, at any depth (inside functions
    too); ``from a import b`` names ``a.b`` when that is a module of the tree, else ``a``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
                      for alias in node.names]
    return sorted({(line, target) for line, target in found if target.split(".")[0] in PACKAGES})


def allowed(source: str, target: str) -> bool:
    """Whether module ``source`` may import module ``target``: within its member, into a layer LAYERS lists for
    its own, or into another member of its own layer unless that layer keeps its members apart."""
    mine, theirs = _member(source), _member(target)
    layer, other = MEMBERS[mine], MEMBERS[theirs]
    if mine == theirs or other in LAYERS[layer]:
        return True
    return layer == other and layer not in SEPARATE


def test_dependencies_point_one_way():
    against = []
    for module, path in MODULES.items():
        for line, target in imports_of(path.read_text(), module, path.name == "__init__.py"):
            if not allowed(module, target):
                against.append(f"{path.relative_to(ROOT)}:{line} ({MEMBERS[_member(module)]}) -> {target} "
                               f"({MEMBERS[_member(target)]})")
    assert not against, ("imports against the direction of LAYERS (a layer imports only those listed for it):\n  "
                         + "\n  ".join(against))


def test_no_module_imports_by_name_at_run_time():
    """importlib.import_module or __import__ would hide an import from the test above."""
    hidden = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name in ("__import__", "importlib.import_module", "import_module"):
                    hidden.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}(...)")
    assert not hidden, "imports the direction test cannot see:\n  " + "\n  ".join(hidden)


def test_every_layer_is_listed_once_and_points_down():
    assert set(MEMBERS.values()) == set(LAYERS)
    order = list(LAYERS)
    for layer, below in LAYERS.items():
        assert all(order.index(other) > order.index(layer) for other in below), layer


@pytest.mark.parametrize("source, target, ok", [
    ("jobs.publish.build", "jobs.store.duck", True),
    ("latentstore.client", "jobs.store.registry", True),
    ("jobs.index.config", "jobs.synthetic.config", True),  # the index config names the generators' settings
    ("jobs.stages", "jobs.synthetic", True),  # the stage generates the input ...
    ("jobs.index.job", "jobs.synthetic.ratings", False),  # ... the index job never does
    ("latentstore.cli.store", "jobs.publish.job", True),
    ("jobs.index.__main__", "jobs.stages", True),
    ("jobs.publish.drift", "latentstore.client", False),  # the writer through the read side
    ("latentstore.client", "jobs.publish.registry", False),  # the read side through the writer
    ("jobs.synthetic.ratings", "jobs.index.config", False),
    ("jobs.stages", "latentstore.store", False),
    ("flows.pipeline", "jobs.index.job", False),  # past the stages
    ("jobs.index.job", "jobs.train.job", False),  # one job into another
    ("jobs.stages", "jobs.index.__main__", False),
    ("schemas.store", "jobs.common.files", False),
])
def test_the_direction_rule(source, target, ok):
    assert allowed(source, target) is ok


def test_imports_inside_functions_and_relative_ones_are_seen():
    source = ("import os\nfrom jobs.store import duck\n\ndef f():\n    from latentstore.store import open_store\n"
              "    import flows.pipeline\n\nclass C:\n    def g(self):\n        from . import gate\n")
    assert imports_of(source, "jobs.publish.job") == [(2, "jobs.store.duck"), (5, "latentstore.store"),
                                                      (6, "flows.pipeline"), (10, "jobs.publish.gate")]
