"""Labels for keys from a user's table (CSV, Parquet or JSON): what maps colour by and exports carry.

Read through a connection that can open this one file (the store's own connection can open none); any
column names work (they are quoted), and every value is read as text.
"""

from __future__ import annotations

from pathlib import Path

from jobs.store.duck import quote_identifier, read_file, reader_of
from schemas.errors import StoreError


def read_labels(path: str | Path, key_column: str, columns: list[str],
                options: tuple[str, ...] = ()) -> dict[str, tuple[str | None, ...]]:
    """key -> the values of ``columns`` (text, None where empty) for every row of ``path``. ``options``: the
    command-line option naming each column, for the error when one is missing (default: the column's name)."""
    if not Path(path).is_file():
        raise StoreError(f"labels file not found: {path}")
    present = read_file(path, f"DESCRIBE SELECT * FROM {reader_of(Path(path))}(?)").column("column_name").to_pylist()
    named = dict(zip([key_column, *columns], options or ("--key-column", *(["--label-column"] * len(columns)))))
    for column in (key_column, *columns):
        if column not in present:
            raise StoreError(f"{path}: no column {column!r} ({named.get(column, column)}); its columns are: "
                             f"{', '.join(present)}")
    wanted = [key_column, *columns]
    selected = ", ".join(f"CAST({quote_identifier(c)} AS VARCHAR) AS c{i}" for i, c in enumerate(wanted))
    table = read_file(path, f"SELECT {selected} FROM {reader_of(Path(path))}(?)")
    values = [table.column(i).to_pylist() for i in range(len(wanted))]
    return {row[0]: tuple(row[1:]) for row in zip(*values)}
