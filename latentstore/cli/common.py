"""What every command shares: the Typer app, the store option, errors, logging, output."""

from __future__ import annotations

import csv
import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Learn embeddings from behaviour data and serve them as a SQL feature store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
DEFAULT_STORE = Path("latentstore-data")
StoreOption = Annotated[Path, typer.Option("--store", help="Store root: everything a run writes lives here.")]
ModelOption = Annotated[str, typer.Option("--model", help="Model name in the store.")]
EntityOption = Annotated[str, typer.Option("--entity", help="Entity table, e.g. item, user or token.")]
log = logging.getLogger("latentstore.cli")


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


FormatOption = Annotated[OutputFormat, typer.Option("--format", "-f")]


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s",
                                           datefmt="%H:%M:%S"))
    for name in ("jobs", "latentstore", "flows"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.propagate = False


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def emit(columns: list[str], rows: list[tuple], fmt: OutputFormat) -> None:
    if fmt is OutputFormat.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt is OutputFormat.json:
        typer.echo(json.dumps([dict(zip(columns, row)) for row in rows], default=str))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns)
        for row in rows:
            table.add_row(*(cell(v) for v in row))
        Console().print(table)


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list | tuple) and len(value) > 4:
        return "[" + ", ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in value[:3]) + f", … ({len(value)})]"
    return "NULL" if value is None else str(value)
