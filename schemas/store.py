"""The store layout: one root directory holds everything a run writes.

    <root>/
      FORMAT                              layout version ("latentstore-store 1")
      .writer.lock                        one writer at a time (fcntl.flock)
      inputs/                             inputs the project generates (synthetic data)
      snapshots/<dataset>/<snapshot_id>/  immutable index output (see schemas.snapshot)
      runs/<run_id>/                      checkpoints, vectors and metrics of one training run
      models/<model>/v000001.duckdb       one immutable DuckDB file per (model, version)
      models/<model>/CURRENT              the model's current version number, os.replace'd
      registry/versions/<model>/v000001.json   one record per published version (append-only)
      registry/events/<utc>-<model>-<event>-<id>.json  one record per event: publish, rollback, refused,
                                          removed, recovered (append-only)
      maps/<model>-v000001-<entity>.png   2-D maps drawn after a publish (publish.map)
      extensions/                         the vss extension, so plain duckdb opens the store offline
      current.sql                         ATTACHes every current version READ_ONLY; views; macros
      tmp/                                staging; anything here is garbage after a crash

Everything under ``snapshots/``, ``runs/`` and ``models/`` is written in a
temporary place and moved into place with one rename, so a reader never sees a
partial artifact.
"""

from __future__ import annotations

import re
from pathlib import Path

FORMAT_NAME = "latentstore-store"
FORMAT_VERSION = 1
FORMAT_LINE = f"{FORMAT_NAME} {FORMAT_VERSION}\n"

#: Model, dataset and entity names become SQL identifiers and file names.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
#: Names that would shadow the store's own views and macros.
RESERVED_NAMES = frozenset({"embeddings", "versions", "pointer_events", "main", "temp", "system", "memory"})


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a safe identifier, else raise ValueError naming ``what``."""
    if not NAME_PATTERN.match(value):
        raise ValueError(f"{what} {value!r} must match {NAME_PATTERN.pattern} (lowercase letters, digits, _)")
    if value in RESERVED_NAMES:
        raise ValueError(f"{what} {value!r} is reserved; choose another name")
    return value


def version_name(version: int) -> str:
    return f"v{version:06d}"


class StoreLayout:
    """Paths inside one store root. Pure path arithmetic: nothing is created here."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    # top level
    @property
    def format_file(self) -> Path:
        return self.root / "FORMAT"

    @property
    def lock_file(self) -> Path:
        return self.root / ".writer.lock"

    @property
    def current_sql(self) -> Path:
        return self.root / "current.sql"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def extensions(self) -> Path:
        return self.root / "extensions"

    # index stage
    def dataset_dir(self, dataset: str) -> Path:
        return self.root / "snapshots" / dataset

    def snapshot_dir(self, dataset: str, snapshot_id: str) -> Path:
        return self.dataset_dir(dataset) / snapshot_id

    # train stage
    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    # publish stage
    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_dir(self, model: str) -> Path:
        return self.models / model

    def version_file(self, model: str, version: int) -> Path:
        return self.model_dir(model) / f"{version_name(version)}.duckdb"

    def pointer_file(self, model: str) -> Path:
        return self.model_dir(model) / "CURRENT"

    @property
    def registry_versions(self) -> Path:
        return self.root / "registry" / "versions"

    def version_record(self, model: str, version: int) -> Path:
        return self.registry_versions / model / f"{version_name(version)}.json"

    @property
    def registry_events(self) -> Path:
        return self.root / "registry" / "events"
