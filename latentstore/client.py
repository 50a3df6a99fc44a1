"""Read side: a read-only DuckDB connection on the store's current versions."""

from __future__ import annotations

from pathlib import Path

from latentstore import duck
from schemas.errors import StoreError
from schemas.store import FORMAT_LINE, StoreLayout


def connect(store: str | Path):
    """A DuckDB connection with every model's current version attached READ_ONLY,
    vss loaded and the views and macros of current.sql defined.

    The connection keeps the versions it attached even after a publish moves a
    pointer; open a new connection to see the new versions.
    """
    layout = StoreLayout(store)
    if not layout.format_file.is_file():
        raise StoreError(f"no latentstore store at {layout.root}; run `latentstore run` first")
    found = layout.format_file.read_text().strip()
    if found != FORMAT_LINE.strip():
        raise StoreError(f"{layout.format_file} says {found!r}; this latentstore reads {FORMAT_LINE.strip()!r}")
    try:
        script = layout.current_sql.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StoreError(f"store {layout.root} has nothing published yet") from None
    con = duck.connect(":memory:", extension_dir=layout.extensions)
    try:
        con.execute(script)
    except Exception:
        con.close()
        raise
    return con
