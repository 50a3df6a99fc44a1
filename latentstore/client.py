"""Read side: a read-only DuckDB connection on a store's current versions, or on the versions of a past time.

Read-only means the connection cannot change a file, by any SQL: once the versions are attached and the
views defined, it is locked (jobs.store.duck.lock_down), so ATTACH of a file, COPY TO, EXPORT, INSTALL,
LOAD, reading any other file and any configuration change fail with DuckDB's Permission or Invalid Input
error. Your own files come in explicitly: ``tables={"movies": "movies.csv"}`` loads each as a TEMP table
before the lock, or ``con.register("movies", arrow_table_or_dataframe)`` at any time.

The script it runs is current.sql's, rendered for where the store is now (the file on disk has paths
relative to the store), so a store copied or mounted read-only at another path opens the same.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from jobs.common.files import read_json
from jobs.store import duck
from jobs.store.current_sql import render
from jobs.store.registry import check_format, has_record, pointers, version_at
from schemas.errors import InputError, StoreError
from schemas.store import StoreLayout

#: current.sql's ATTACH lines, relative (this version) or absolute (stores written before it).
_ATTACH_LINE = re.compile(r"^ATTACH .*models/([a-z][a-z0-9_]*)/v(\d{6,})\.duckdb' AS \1 \(READ_ONLY\);$")


def connect(store: str | Path, as_of: str | datetime | None = None, versions: dict[str, int] | None = None,
            tables: dict[str, str | Path] | None = None):
    """A DuckDB connection with each model's version attached READ_ONLY, vss loaded and the views and
    macros of current.sql defined, locked so that it can change no file.

    By default the versions current.sql names. ``as_of`` (an ISO time or a datetime) attaches the
    version of every model that was current then (rollbacks included); ``versions`` pins given models
    to given versions. ``tables`` maps TEMP table names to files of yours (CSV, Parquet or JSON, by the
    file's name) loaded before the lock. The connection keeps the files it attached even after a publish
    moves a pointer; open a new connection to see the new versions (and the registry's new rows).
    """
    layout = _layout(store)
    script = _script_for(layout, as_of, versions or {})
    con = duck.connect(":memory:", extension_dir=layout.extensions)
    try:
        try:
            con.execute(script)
        except duckdb.Error as exc:
            raise StoreError(f"{layout.root}: the current versions do not open: {str(exc).splitlines()[0]}") from None
        for name, path in (tables or {}).items():
            load_table(con, name, path)
        duck.lock_down(con)
    except BaseException:
        con.close()
        raise
    return con


def load_table(con, name: str, path: str | Path) -> None:
    """A user's file as TEMP table ``name`` (any name: it is quoted); a name the store's SQL already uses is
    refused."""
    rows = duck.read_file(path)
    con.register("__latentstore_load", rows)
    try:
        con.execute(f"CREATE TEMP TABLE {duck.quote_identifier(name)} AS SELECT * FROM __latentstore_load")
    except duckdb.CatalogException:
        raise InputError(f"table {name!r} for {path}: the name is taken by the store's SQL; choose another") from None
    finally:
        con.unregister("__latentstore_load")


def parse_time(value: str | datetime) -> datetime:
    """An ISO-8601 time; a time without a zone is UTC."""
    try:
        at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise StoreError(f"as of {value!r}: not an ISO-8601 time (e.g. 2026-11-24T12:00:00Z)") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _layout(store: str | Path) -> StoreLayout:
    layout = StoreLayout(store)
    if not check_format(layout):
        raise StoreError(f"no latentstore store at {layout.root}; run `latentstore run` first")
    return layout


def attached_versions(layout: StoreLayout) -> dict[str, int]:
    """{model: version} that current.sql attaches: what readers see (a pointer the writer has switched
    becomes visible when it rewrites current.sql)."""
    try:
        script = layout.current_sql.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StoreError(f"store {layout.root} has nothing published yet") from None
    attached = {m.group(1): int(m.group(2)) for m in map(_ATTACH_LINE.match, script.splitlines()) if m}
    if not attached:
        raise StoreError(f"{layout.current_sql} attaches no version; publish a model first")
    return attached


def _script_for(layout: StoreLayout, as_of, versions: dict[str, int]) -> str:
    """current.sql's content for this store's location: current.sql's versions, or those of ``as_of``
    (and the pinned ``versions``)."""
    if as_of is None and not versions:
        current = attached_versions(layout)
        chosen = dict(current)
    else:
        current = pointers(layout)
        chosen = dict(current)
    if as_of is not None:
        at = parse_time(as_of)
        chosen = {m: v for m in current if (v := version_at(layout, m, at)) is not None}
        if not chosen:
            raise StoreError(f"nothing was published in {layout.root} as of {at.isoformat()}")
    for model, version in versions.items():
        if model not in current:
            raise StoreError(f"no model {model!r} in {layout.root}; models: {', '.join(sorted(current)) or 'none'}")
        if isinstance(version, bool) or not isinstance(version, int):
            raise StoreError(f"{model} version {version!r}: not a version number")
        chosen[model] = version
    records = {}
    for model, version in chosen.items():
        record_path = layout.version_record(model, version)
        if not has_record(layout, model, version):
            raise StoreError(f"{model} has no version {version} in {layout.root}")
        if not layout.version_file(model, version).is_file():
            if current.get(model) == version:
                raise StoreError(f"{layout.version_file(model, version)} is missing: {model} version {version} is "
                                 "current")
            raise StoreError(f"{model} version {version} was removed by retention; it can no longer be queried")
        records[model] = read_json(record_path)
    return render(layout, records, pointers=current, client=True)
