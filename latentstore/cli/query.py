"""Query commands: sql, similar (one key or a file of keys), features, analogy, plot."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from latentstore.cli.common import (
    DEFAULT_STORE,
    EntityOption,
    FormatOption,
    ModelOption,
    OutputFormat,
    StoreOption,
    app,
    emit,
    fail,
)
from schemas.errors import LatentstoreError

KOption = Annotated[int, typer.Option("-k", min=1, help="How many neighbours.")]
MinCountOption = Annotated[int, typer.Option("--min-count", min=0, help="Only keys seen at least this often.")]
AsOfOption = Annotated[str | None, typer.Option("--as-of", help="A version number, or an ISO time: the version "
                                                                  "current then (default: the current one).")]


TableOption = Annotated[list[str] | None, typer.Option(
    "--table", help="NAME=FILE: load your CSV, Parquet or JSON file as table NAME first (repeatable); "
                    "the query itself can read no file.")]


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL to run on the store (views, macros: see README).")],
    store: StoreOption = DEFAULT_STORE,
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
    table: TableOption = None,
) -> None:
    """Run a SQL query on the store's current versions (read-only: queries only, no file read or written)."""
    import duckdb

    from latentstore import connect
    from jobs.store.duck import check_read_only

    try:
        con = connect(store, tables=_named_files(table or []))
        check_read_only(con, query)  # the connection is locked too; this refuses ATTACH, COPY, ... by name first
        result = con.sql(query)
        if result is None:
            return
        columns, rows = result.columns, result.fetchall()
    except LatentstoreError as exc:
        fail(str(exc))
    except duckdb.Error as exc:
        fail(str(exc), code=1)
    emit(columns, rows, format)


def _named_files(values: list[str]) -> dict[str, Path]:
    """``--table NAME=FILE`` options as {name: file}."""
    tables = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            fail(f"--table {value!r}: expected NAME=FILE, e.g. --table movies=movies.csv")
        if name in tables:
            fail(f"--table {name}: given twice")
        tables[name] = Path(path)
    return tables


def _open(store: Path, model: str | None = None, as_of: str | None = None):
    from latentstore import open_store

    if as_of is None:
        return open_store(store)
    if as_of.isdigit():
        return open_store(store, versions={model: int(as_of)})
    return open_store(store, as_of=as_of)


def read_rows(path: Path):
    """A CSV, Parquet or plain-text (one key per line, column "key") file as an Arrow table, read by DuckDB
    through a connection that can open this file only (the store's connection can open none)."""
    from jobs.store.duck import read_file
    from schemas.errors import InputError

    if not path.is_file():
        raise InputError(f"keys file not found: {path}")
    if path.name.lower().endswith(".txt"):
        return read_file(path, "SELECT trim(line) AS key FROM read_csv(?, columns = {'line': 'VARCHAR'}, "
                               "header = false, sep = '\\0') WHERE trim(line) <> ''")
    return read_file(path)


def write_rows(table, out: Path) -> None:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.name.lower().endswith(".parquet"):
        pq.write_table(table, out)
    else:
        pcsv.write_csv(table, out)


@app.command()
def similar(
    key: Annotated[str | None, typer.Argument(help="Key whose nearest neighbours to list.")] = None,
    model: ModelOption = ...,
    entity: EntityOption = "item",
    k: KOption = 10,
    min_count: MinCountOption = 0,
    keys: Annotated[Path | None, typer.Option("--keys", help="Many keys at once: a CSV, Parquet or .txt file.")] = None,
    key_column: Annotated[str, typer.Option("--key-column", help="Column of --keys holding the keys.")] = "key",
    out: Annotated[Path | None, typer.Option("--out", help="With --keys: write the result here (.parquet or .csv).")] = None,
    store: StoreOption = DEFAULT_STORE,
    format: FormatOption = OutputFormat.table,
) -> None:
    """The K keys nearest to KEY by cosine distance (excluding KEY itself); with --keys, for every key of a file."""
    if (key is None) == (keys is None):
        fail("give a KEY or --keys FILE")
    try:
        with _open(store) as opened:
            if key is not None:
                rows = opened.similar(model, entity, key, k, min_count)
                emit(["key", "distance", "count"], rows, format)
                return
            if min_count:
                fail("--min-count applies to one KEY; filter the --keys result instead")
            wanted = read_rows(keys)
            if key_column not in wanted.column_names:
                fail(f"{keys}: no column {key_column!r} (its columns: {', '.join(wanted.column_names)}); set --key-column")
            result = opened.similar_many(model, entity, wanted.column(key_column).cast("string").to_pylist(), k)
    except LatentstoreError as exc:
        fail(str(exc))
    unknown = len(set(wanted.column(key_column).cast("string").to_pylist()) - set(result.column("query").to_pylist()))
    if out is not None:
        write_rows(result, out)
        typer.echo(f"{result.num_rows} neighbours of {wanted.num_rows - unknown} keys written to {out}; "
                   f"{unknown} keys not in {model}.{entity}", err=True)
        return
    emit(result.column_names, [tuple(r.values()) for r in result.to_pylist()], format)
    if unknown:
        typer.echo(f"{unknown} keys not in {model}.{entity}", err=True)


@app.command()
def features(
    model: ModelOption,
    keys: Annotated[Path, typer.Option("--keys", help="Your rows: a CSV, Parquet or .txt file with a key column.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the rows with their vectors (.parquet).")],
    entity: EntityOption = "user",
    key_column: Annotated[str, typer.Option("--key-column", help="Column of --keys holding the keys.")] = "key",
    as_of: AsOfOption = None,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Join vectors onto your rows as features: every row kept, unknown keys get NULL vectors (counted)."""
    if not out.name.lower().endswith(".parquet"):
        fail(f"--out {out}: vectors are lists; write Parquet (.parquet)")
    try:
        with _open(store, model, as_of) as opened:
            rows = read_rows(keys)
            joined, unknown = opened.features(model, entity, rows, key_column)
            version = opened.table(model, entity).version
    except LatentstoreError as exc:
        fail(str(exc))
    write_rows(joined, out)
    share = unknown / max(joined.num_rows, 1)
    typer.echo(f"{joined.num_rows} rows written to {out} with {model}.{entity} v{version}: "
               f"{joined.num_rows - unknown} with a vector, {unknown} unknown keys ({share:.1%}) with NULLs")


@app.command()
def analogy(
    a: Annotated[str, typer.Argument(help="A: the keys nearest A - B + C ...")],
    b: Annotated[str, typer.Argument(help="B")],
    c: Annotated[str, typer.Argument(help="C")],
    model: ModelOption = ...,
    entity: EntityOption = "item",
    k: KOption = 10,
    min_count: MinCountOption = 0,
    store: StoreOption = DEFAULT_STORE,
    format: FormatOption = OutputFormat.table,
) -> None:
    """Keys nearest vec(A) - vec(B) + vec(C) (unit vectors), excluding A, B and C: "B is to A as C is to ?"."""
    try:
        with _open(store) as opened:
            rows = opened.analogy(model, entity, a, b, c, k, min_count)
    except LatentstoreError as exc:
        fail(str(exc))
    emit(["key", "distance", "count"], rows, format)


@app.command()
def plot(
    model: ModelOption,
    out: Annotated[Path, typer.Option("--out", help="The PNG to write.")],
    entity: EntityOption = "item",
    labels: Annotated[Path | None, typer.Option("--labels", help="CSV or Parquet with a label per key.")] = None,
    key_column: Annotated[str, typer.Option("--key-column", help="Column of --labels with the keys.")] = "key",
    label_column: Annotated[str | None, typer.Option("--label-column", help="Column that colours the points "
                                                                            "(multi-valued a|b: the first).")] = None,
    title_column: Annotated[str | None, typer.Option("--title-column", help="Column naming annotated points.")] = None,
    method: Annotated[str, typer.Option("--method", help="pca or tsne.")] = "pca",
    sample: Annotated[int, typer.Option("--sample", min=10, help="At most this many points.")] = 10_000,
    min_count: MinCountOption = 0,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """A 2-D map (PCA or t-SNE) of an entity's vectors coloured by a label, as a PNG."""
    from jobs.store.maps import draw

    if method not in ("pca", "tsne"):
        fail("--method must be pca or tsne")
    if out.suffix.lower() != ".png":
        fail(f"--out {out}: the map is a PNG; name the file .png")
    if label_column and labels is None:
        fail("--label-column needs --labels FILE")
    try:
        with _open(store) as opened:
            drawn = draw(opened.con, opened.table(model, entity).name, model, entity, out,
                         str(labels) if labels else None, key_column, label_column, title_column, method, sample,
                         min_count=min_count)
    except LatentstoreError as exc:
        fail(str(exc))
    typer.echo(f"{drawn['points']} points ({drawn['method']}) written to {drawn['file']}")


class ExportFormat(str, enum.Enum):
    projector = "projector"
    parquet = "parquet"


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="projector: a folder; parquet: a .parquet file.")],
    model: ModelOption,
    entity: EntityOption = "item",
    format: Annotated[ExportFormat, typer.Option("--format", help="projector (TensorBoard's Embedding "
                                                                  "Projector) or parquet.")] = ExportFormat.projector,
    labels: Annotated[Path | None, typer.Option("--labels", help="CSV or Parquet with labels per key.")] = None,
    key_column: Annotated[str, typer.Option("--key-column", help="Column of --labels with the keys.")] = "key",
    label_column: Annotated[list[str] | None, typer.Option(
        "--label-column", help="A column of --labels for metadata.tsv (repeatable).")] = None,
    min_count: MinCountOption = 0,
    as_of: AsOfOption = None,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Export one entity's vectors: for the Embedding Projector (vectors.tsv, metadata.tsv,
    projector_config.pbtxt) or as Parquet with each row's lineage."""
    from jobs.store import export as exporting

    if format is ExportFormat.parquet and (labels or label_column):
        fail("--labels and --label-column are for --format projector; join your table to the Parquet file instead")
    if format is ExportFormat.parquet and out.suffix.lower() != ".parquet":
        fail(f"{out}: --format parquet writes one file; name it .parquet")
    if format is ExportFormat.projector and out.exists() and not out.is_dir():
        fail(f"{out} is a file; --format projector writes a folder")
    try:
        with _open(store, model, as_of) as opened:
            table = opened.table(model, entity)
            if format is ExportFormat.projector:
                done = exporting.projector(opened.con, table.name, f"{model}.{entity}", out,
                                           str(labels) if labels else None, key_column, label_column or [],
                                           min_count)
            else:
                run_id, snapshot_id, created_at = opened.con.execute(
                    "SELECT run_id, snapshot_id, created_at::VARCHAR FROM versions WHERE model = ? AND version = ?",
                    [model, table.version]).fetchone()
                lineage = {"model": model, "entity": entity, "version": table.version, "run_id": run_id,
                           "snapshot_id": snapshot_id, "created_at": created_at}
                done = exporting.parquet(opened.con, table.name, out, lineage, min_count)
    except LatentstoreError as exc:
        fail(str(exc))
    typer.echo(f"{done['rows']} rows of {model}.{entity} v{table.version} written to {', '.join(done['files'])}")
