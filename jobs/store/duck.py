"""The one door to DuckDB: connections with the vss extension loaded offline, SQL quoting, and the
lock that makes a reader's connection unable to touch any file."""

from __future__ import annotations

import importlib.resources
import platform
from pathlib import Path

import duckdb

from schemas.errors import InputError, StoreError

#: What `latentstore sql` runs: queries, plans, variables (``SET VARIABLE``; configuration SETs are refused by
#: the lock), PRAGMAs and CALLs of table functions. Anything else (ATTACH, DETACH, COPY, EXPORT, INSTALL, LOAD,
#: CREATE, INSERT, ...) is refused before it runs.
READ_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN, duckdb.StatementType.SET,
                             duckdb.StatementType.PRAGMA, duckdb.StatementType.CALL})
_STATEMENT_NAMES = {duckdb.StatementType.LOAD: "INSTALL and LOAD"}  # DuckDB types INSTALL as LOAD


def vss_binary() -> Path:
    """The signed vss build shipped in the duckdb-extension-vss wheel (matches duckdb's version)."""
    root = importlib.resources.files("duckdb_extension_vss") / "extensions" / f"v{duckdb.__version__}"
    path = Path(str(root)) / "vss.duckdb_extension"
    if not path.is_file():
        raise StoreError(f"vss extension for duckdb {duckdb.__version__} not found at {path}; "
                         "install duckdb-extension-vss with the same version as duckdb")
    return path


def platform_tag() -> str:
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())
    system = {"Darwin": "osx"}.get(platform.system(), platform.system().lower())
    return f"{system}_{machine}"


def install_vss(extension_dir: Path) -> Path:
    """Copy vss into ``extension_dir`` (DuckDB's layout) so any client can ``LOAD vss`` offline."""
    target = extension_dir / f"v{duckdb.__version__}" / platform_tag() / "vss.duckdb_extension"
    if not target.is_file():
        extension_dir.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(":memory:", config=_offline(extension_dir))
        try:
            con.execute(f"INSTALL {quote_literal(str(vss_binary()))}")
        finally:
            con.close()
    return target


def _offline(extension_dir: Path | None) -> dict:
    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    if extension_dir is not None:
        config["extension_directory"] = str(extension_dir)
    return config


def connect(database: str | Path = ":memory:", read_only: bool = False, extension_dir: Path | None = None):
    """A connection with vss loaded and no network access for extensions."""
    con = duckdb.connect(str(database), read_only=read_only, config=_offline(extension_dir))
    con.execute(f"LOAD {quote_literal(str(vss_binary()))}")
    return con


# -- quoting: every name or text from a user enters SQL through one of these ---------------------------------

def quote_identifier(name: str) -> str:
    """``name`` as a SQL identifier, whatever it holds: in double quotes, inner double quotes doubled
    (``ge"nres`` -> ``"ge""nres"``)."""
    if name == "":
        raise InputError("SQL name must not be empty")
    return '"' + _sql_text(name, "name").replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """``text`` as a SQL string literal: in single quotes, inner single quotes doubled."""
    return "'" + _sql_text(text, "text").replace("'", "''") + "'"


def _sql_text(value: str, what: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"SQL {what} {value!r} is not text")
    if "\x00" in value:  # DuckDB's parser ends a string at NUL: refuse rather than truncate
        raise InputError(f"SQL {what} {value!r} contains a NUL character")
    return value


# -- the read-only wall ------------------------------------------------------------------------------------------

def lock_down(con) -> None:
    """From here on the connection can read what it has attached and nothing else.

    ``enable_external_access = false`` stops COPY TO, EXPORT, reading other files, INSTALL and LOAD, but it
    keeps every attached file allowed, so ``DETACH m; ATTACH '<its file>' AS rw`` would reopen a version
    file read-write; disabling the local file system stops every later open of any file (the attached
    ones stay readable through the handles they hold). ``lock_configuration`` refuses any SET or RESET
    that would undo this. Call it after every ATTACH, LOAD and file read the connection needs."""
    con.execute("SET enable_external_access = false")  # must come first: it needs the file system to list paths
    con.execute("SET disabled_filesystems = 'LocalFileSystem'")
    con.execute("SET lock_configuration = true")


def check_read_only(con, sql: str) -> None:
    """Raise InputError unless every statement of ``sql`` is one `latentstore sql` runs (READ_STATEMENTS);
    a second wall in front of ``lock_down``. A parse error is raised as DuckDB's own error."""
    for statement in con.extract_statements(sql):
        if statement.type not in READ_STATEMENTS:
            kind = _STATEMENT_NAMES.get(statement.type, statement.type.name.replace("_", " "))
            raise InputError(f"the store is read-only: {kind} statements are refused (queries only: SELECT, "
                             "EXPLAIN, SET VARIABLE, PRAGMA, CALL); use --table NAME=FILE to query a file of yours")


def read_file(path: str | Path, query: str | None = None):
    """A user's CSV, Parquet or JSON file as an Arrow table, read by a throwaway DuckDB connection that can
    open that one file and nothing else. ``query`` (default: every row) binds the path as its one
    parameter, e.g. ``f"SELECT a FROM {reader_of(path)}(?)"``."""
    path = Path(path).resolve()
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    con = duckdb.connect(":memory:", config=_offline(None))
    try:
        con.execute(f"SET allowed_paths = [{quote_literal(str(path))}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con.execute(query or f"SELECT * FROM {reader_of(path)}(?)", [str(path)]).to_arrow_table()
    except duckdb.Error as exc:  # unreadable or malformed: DuckDB says where
        raise InputError(f"{path}: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()


def reader_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "read_parquet"
    if name.endswith((".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz")):
        return "read_json"
    return "read_csv"
