"""Pipeline commands: run (a Prefect flow per config), and index, train, publish one stage at a time."""

from __future__ import annotations

import enum
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from latentstore.cli.common import (
    DEFAULT_STORE,
    LockTimeoutOption,
    StoreOption,
    app,
    fail,
    quiet_run_tracebacks,
    setup_logging,
    writable_store,
)

class FoldIn(str, enum.Enum):
    new = "new"
    all = "all"


ForceOption = Annotated[bool, typer.Option("--force", help="Publish even if the quality gate refuses (recorded).")]
FoldInOption = Annotated[FoldIn | None, typer.Option(
    "--fold-in", help="Start each model from its current version (a rebuilt snapshot's new rows): new trains only "
                      "the new rows, all every row (docs/operations.md, Fold-in).")]


def _prefect_env(store: Path) -> None:
    """Keep Prefect's state inside the store unless the user configured Prefect."""
    home = Path(os.environ.setdefault("PREFECT_HOME", str(store.resolve() / ".prefect")))
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _preflight(config: Path, input_path: Path | None):
    """Everything that can be checked without Spark or Prefect, before anything is written."""
    from jobs.config import load_config
    from jobs.index.probe import probe

    cfg = load_config(config, str(input_path) if input_path else None)
    if cfg.index.input.path is not None:
        probe(cfg.index)
    return cfg


@app.command()
def run(
    configs: Annotated[list[Path], typer.Argument(help="Pipeline configs (TOML), run one after the other.")],
    store: StoreOption = DEFAULT_STORE,
    input: Annotated[Path | None, typer.Option("--input", help="Read this file or folder instead of the config's input.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted training run from its checkpoint.")] = True,
    force: ForceOption = False,
    lock_timeout: LockTimeoutOption = None,
    fold_in: FoldInOption = None,
) -> None:
    """Index, train and publish each CONFIG as one Prefect flow run."""
    setup_logging()
    if input is not None and len(configs) > 1:
        fail("--input replaces one config's input: give one config with it")
    writable_store(store)
    loaded = [_preflight(config, input) for config in configs]  # every config checked before any runs
    _prefect_env(store)
    from flows.pipeline import pipeline
    from flows.server import start_temporary_server

    quiet_run_tracebacks()
    if not os.environ.get("PREFECT_API_URL"):
        start_temporary_server()  # in its own session: a Ctrl-C reaches this process, which stops it
    # One process keeps one Spark session: configs with other Spark settings index in a child process each.
    isolate = len({cfg.index.spark.model_dump_json() for cfg in loaded}) > 1
    for config, cfg in zip(configs, loaded):
        summary = pipeline(config_path=str(config), store=str(store),
                           input_path=str(input.resolve()) if input else None, resume=resume, force=force,
                           isolate_index=isolate, lock_timeout_seconds=lock_timeout,
                           fold_in=fold_in.value if fold_in else None)
        _print_summary(cfg, store, summary)


@app.command()
def serve(
    configs: Annotated[list[Path], typer.Argument(help="Pipeline configs (TOML): a deployment each.")],
    store: StoreOption = DEFAULT_STORE,
    cron: Annotated[str | None, typer.Option("--cron", help='Schedule, e.g. "0 2 * * *" (UTC); none: runs on demand.')] = None,
    stage: Annotated[list[str] | None, typer.Option("--stage", help="Stages to run (repeat; default all): index, train, publish.")] = None,
    max_lateness: Annotated[float | None, typer.Option("--max-lateness-minutes", help="Skip (Cancelled) a run this late.")] = None,
) -> None:
    """Serve a deployment per CONFIG from this process until stopped (SIGTERM), without a work pool.

    Needs a Prefect API (PREFECT_API_URL, e.g. `prefect server start`) for schedules
    and `prefect deployment run`; each config's deployment is <name>-served."""
    setup_logging()
    if not os.environ.get("PREFECT_API_URL"):
        fail("latentstore serve needs a Prefect server for its schedules: set PREFECT_API_URL (e.g. "
             "http://127.0.0.1:4200/api after `prefect server start`); a temporary server would never run them")
    for config in configs:
        _preflight(config, None)
    _prefect_env(store)
    from flows.serve import serve as serve_forever
    from flows.serve import served_deployments

    serve_forever(served_deployments(configs, store, cron, stage, max_lateness))


def _print_summary(cfg, store: Path, summary: dict) -> None:
    from rich.console import Console

    console = Console()
    counts = summary["index"]["counts"]
    console.print(f"\n[bold]{cfg.name}[/] into {store.resolve()}")
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(counts["quarantine_reasons"].items()))
    console.print(
        f"  rows: read {counts['read']}, kept {counts['kept']}, quarantined {counts['quarantined']}"
        f"{f' ({reasons})' if reasons else ''}, duplicates {counts['duplicates']}, superseded {counts['superseded']}"
    )
    for model, outcome in summary["models"].items():
        published, metric = outcome["publish"], outcome["train"]["primary_metric"]
        value = "n/a" if metric["value"] is None else f"{metric['value']:.4f}"
        console.print(f"[bold green]published[/] {model} v{published['version']}: {metric['name']} {value}")
        for entity, info in sorted(published["entities"].items()):
            console.print(f"  {model}.{entity}: {info['rows']} vectors of dim {info['dim']}"
                          f"{' (HNSW index)' if info['hnsw'] else ''}")
    console.print("\nTry:", style="bold")
    for line in _examples(store, summary):
        typer.echo(f"  {line}")


def _examples(store: Path, summary: dict) -> list[str]:
    """Commands to copy, with real keys from the store: the most frequent item or token and user."""
    from latentstore import connect

    cli, duckdb_cli = _program(sys.argv[0]), _program(str(Path(sys.executable).parent / "duckdb"))
    if os.sep in duckdb_cli:  # its command runs after `cd` into the store
        duckdb_cli = str(Path(duckdb_cli).resolve())
    con = connect(store)

    def top(model: str, entity: str) -> str:
        row = con.execute("SELECT key FROM embeddings WHERE model = ? AND entity = ? ORDER BY count DESC, key LIMIT 1",
                          [model, entity]).fetchone()
        return row[0] if row else "?"

    lines = []
    try:
        for model, outcome in summary["models"].items():
            family = outcome["train"]["family"]
            things = "item" if family == "mf" else "token"
            thing, user = top(model, things), top(model, "user")
            lines.append(f"{cli} similar --store {store} --model {model} --entity {things} '{thing}'")
            if family == "mf":
                lines.append(f"{cli} sql --store {store} \"SELECT * FROM recommend('{model}', '{user}', k := 5)\"")
            elif family == "gru":
                lines.append(f"{cli} sql --store {store} \"SELECT * FROM next_events('{model}', '{user}', k := 5)\"")
            else:
                lines.append(f"{cli} sql --store {store} \"SELECT * FROM nearest('{model}', 'token', "
                             f"vector_of('{model}', 'user', '{user}'), k := 5)\"")
    finally:
        con.close()
    return lines + [f"cd {store} && {duckdb_cli} -init current.sql  # in the store: its paths are relative"]


def _program(path: str) -> str:
    """How to call a program: its bare name when PATH finds this very file, else its path."""
    invoked = Path(path)
    found = shutil.which(invoked.name)
    if found and Path(found).resolve() == invoked.resolve():
        return invoked.name
    return os.path.relpath(invoked) if invoked.is_absolute() else str(invoked)


@app.command()
def index(config: Path, store: StoreOption = DEFAULT_STORE,
          input: Annotated[Path | None, typer.Option("--input")] = None) -> None:
    """Run only the index stage (Spark): raw input -> snapshot."""
    _run_stage("index", config, store, input)


ModelOption = Annotated[str | None, typer.Option("--model", help="One of the config's models (default: all of them).")]
SnapshotOption = Annotated[str | None, typer.Option(help="Snapshot id (default: the dataset's latest).")]


@app.command()
def train(config: Path, store: StoreOption = DEFAULT_STORE, model: ModelOption = None,
          snapshot: SnapshotOption = None,
          resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = True,
          lock_timeout: LockTimeoutOption = None, fold_in: FoldInOption = None) -> None:
    """Run only the train stage (PyTorch) on a snapshot, for each model of the config."""
    _run_stage("train", config, store, None, model=model, snapshot_id=snapshot, resume=resume,
               lock_timeout=lock_timeout, fold_in=fold_in)


@app.command()
def publish(config: Path, store: StoreOption = DEFAULT_STORE, model: ModelOption = None,
            snapshot: SnapshotOption = None, force: ForceOption = False,
            lock_timeout: LockTimeoutOption = None, fold_in: FoldInOption = None) -> None:
    """Run only the publish stage (DuckDB) for each model's finished training run (``--fold-in``: the
    fold-in run ``train --fold-in`` made)."""
    _run_stage("publish", config, store, None, model=model, snapshot_id=snapshot, force=force,
               lock_timeout=lock_timeout, fold_in=fold_in)


def _run_stage(name: str, config: Path, store: Path, input_path: Path | None, model: str | None = None,
               lock_timeout: float | None = None, fold_in: FoldIn | None = None, **kwargs) -> None:
    setup_logging()
    from jobs import stages
    from schemas.store import StoreLayout

    writable_store(store)
    cfg = _preflight(config, input_path) if name == "index" else _load(config).with_lock_timeout(lock_timeout)
    cfg = cfg.with_fold_in(fold_in.value if fold_in else None)
    if name == "train":
        kwargs["lock_timeout"] = lock_timeout
    if name == "index":
        summaries = [stages.index(cfg, StoreLayout(store))]
    else:
        models = [cfg.model(model).name] if model else cfg.model_names()
        summaries = [getattr(stages, name)(cfg, StoreLayout(store), model=m, **kwargs) for m in models]
    for summary in summaries:
        typer.echo(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2, default=str))


def _load(config: Path):
    from jobs.config import load_config

    return load_config(config)
