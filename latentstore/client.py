"""Read side: a read-only DuckDB connection on a store's current versions, or on the versions of a past time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from latentstore import duck
from schemas.errors import StoreError
from schemas.store import FORMAT_LINE, StoreLayout


def connect(store: str | Path, as_of: str | datetime | None = None, versions: dict[str, int] | None = None):
    """A DuckDB connection with each model's version attached READ_ONLY, vss loaded and the views and
    macros of current.sql defined.

    By default the current versions (current.sql). ``as_of`` (an ISO time or a datetime) attaches the
    version of every model that was current then (rollbacks included); ``versions`` pins given models
    to given versions. The connection keeps the files it attached even after a publish moves a pointer;
    open a new connection to see the new versions.
    """
    layout = StoreLayout(store)
    if not layout.format_file.is_file():
        raise StoreError(f"no latentstore store at {layout.root}; run `latentstore run` first")
    found = layout.format_file.read_text().strip()
    if found != FORMAT_LINE.strip():
        raise StoreError(f"{layout.format_file} says {found!r}; this latentstore reads {FORMAT_LINE.strip()!r}")
    if as_of is None and not versions:
        try:
            script = layout.current_sql.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StoreError(f"store {layout.root} has nothing published yet") from None
    else:
        script = _script_for(layout, as_of, versions or {})
    con = duck.connect(":memory:", extension_dir=layout.extensions)
    try:
        con.execute(script)
    except Exception:
        con.close()
        raise
    return con


def parse_time(value: str | datetime) -> datetime:
    """An ISO-8601 time; a time without a zone is UTC."""
    try:
        at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise StoreError(f"as of {value!r}: not an ISO-8601 time (e.g. 2026-11-24T12:00:00Z)") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _script_for(layout: StoreLayout, as_of, versions: dict[str, int]) -> str:
    """current.sql's content for the versions of ``as_of`` (and the pinned ``versions``)."""
    from jobs.common.files import read_json
    from jobs.publish.current_sql import render
    from jobs.publish.registry import pointers, version_at

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
        chosen[model] = version
    records = {}
    for model, version in chosen.items():
        record_path = layout.version_record(model, version)
        if not record_path.is_file():
            raise StoreError(f"{model} has no version {version} in {layout.root}")
        if not layout.version_file(model, version).is_file():
            raise StoreError(f"{model} version {version} was removed by retention; it can no longer be queried")
        records[model] = read_json(record_path)
    return render(layout, records, pointers=current)
