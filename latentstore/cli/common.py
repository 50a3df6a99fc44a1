"""What every command shares: the Typer app and its error contract, the store option, logging, output.

Exit codes (documented in the README): 0 done; 1 an environment or I/O failure
(disk full, permission denied) or an unexpected error; 2 bad input, config,
usage or store state (the message names the file, field, row or option); 3 the
store or a training run stayed locked for ``--lock-timeout``; 130 and 143
stopped by SIGINT and SIGTERM. Every failure is one ``error:`` line; the
traceback only with ``--debug`` (or LATENTSTORE_DEBUG=1).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from jobs.common import signals
from schemas.errors import LatentstoreError, StoreError, StoreLockedError

EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_LOCKED = 1, 2, 3


class App(typer.Typer):
    """The Typer app, called with the CLI's error contract (see the module's docstring)."""

    def __call__(self, *args, **kwargs):
        signals.install()
        try:
            code = super().__call__(*args, standalone_mode=False, **kwargs)  # Ctrl-C: returns 130
        except typer.TyperException as usage:  # an unknown option, a bad value: click's usage message
            if hasattr(usage, "show"):
                usage.show()
            else:
                _error_line(str(usage))
            sys.exit(getattr(usage, "exit_code", EXIT_BAD_INPUT))
        except BaseException as error:  # noqa: BLE001 - the one place errors become exit codes
            _exit_for(error)
        if signals.received() is not None or code == 130:  # typer turns KeyboardInterrupt into 130
            _stopped(signals.received() or signal.SIGINT)
        sys.exit(code if isinstance(code, int) else 0)


def debugging() -> bool:
    return os.environ.get("LATENTSTORE_DEBUG", "") not in ("", "0")


def _exit_for(error: BaseException) -> None:
    if isinstance(error, SystemExit):
        raise error
    if signals.received() is not None:  # whatever error the interrupted work raised, a signal stopped it
        _stopped(signals.received())
    if isinstance(error, KeyboardInterrupt) or _is_prefect_signal(error):
        _stopped(getattr(error, "signal", None) or getattr(error, "signum", signal.SIGINT))
    if debugging():
        raise error
    if isinstance(error, LatentstoreError):
        _error_line(str(error))
        sys.exit(EXIT_LOCKED if isinstance(error, StoreLockedError) else EXIT_BAD_INPUT)
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename else ""
        _error_line(f"{error.strerror or error}{where}")
        sys.exit(EXIT_FAILURE)
    _error_line(f"unexpected {type(error).__name__}: {error} (--debug shows the traceback)")
    sys.exit(EXIT_FAILURE)


def _is_prefect_signal(error: BaseException) -> bool:
    exceptions = sys.modules.get("prefect.exceptions")
    return exceptions is not None and isinstance(error, exceptions.TerminationSignal)


def _stopped(signum: int) -> None:
    code = signals.exit_code(signum)
    name = signal.Signals(signum).name
    _error_line(f"stopped by {name}; nothing was published after it arrived")
    sys.exit(code)


app = App(
    help="Learn embeddings from behaviour data and serve them as a SQL feature store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of failures.")] = False) -> None:
    if debug:
        os.environ["LATENTSTORE_DEBUG"] = "1"


def writable_store(path: Path) -> Path:
    """``path`` if a writer can use it as a store root, else a StoreError saying why."""
    existing = next((p for p in (path, *path.absolute().parents) if p.exists()), None)
    if existing is None:
        return path
    if existing == path and not path.is_dir():
        raise StoreError(f"store path {path} is a file, not a directory")
    if existing != path and not existing.is_dir():
        raise StoreError(f"store path {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StoreError(f"store {path} is not writable ({existing}: read-only or permission denied); "
                         "readers can still query it")
    return path
DEFAULT_STORE = Path("latentstore-data")
StoreOption = Annotated[Path, typer.Option("--store", help="Store root: everything a run writes lives here.")]
LockTimeoutOption = Annotated[float | None, typer.Option(
    "--lock-timeout", min=0, help="Seconds to wait for a lock another writer holds (default: the config's "
    "publish.lock_timeout_seconds for the store, as long as it trains for a training run).")]
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


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a failed run's traceback. For an error the user acts on (bad input, the gate, a lock, a
    signal) the message says it all and the CLI prints it once: keep the log line, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _user_error(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


def _user_error(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, LatentstoreError | KeyboardInterrupt) or _is_prefect_signal(error):
            return True
        error = error.__cause__
    return False


def quiet_run_tracebacks() -> None:
    """Drop the tracebacks of user errors from Prefect's run logs (``--debug`` keeps them); call after
    Prefect configured its logging."""
    if not debugging():
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(_NoTracebackForUserErrors())


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print the one error line and end the command with ``code``."""
    _error_line(message)
    raise typer.Exit(code)


def _error_line(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)


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
