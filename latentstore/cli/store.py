"""Store commands: versions (with metrics, gate and drift), rollback, repair."""

from __future__ import annotations

from typing import Annotated

import typer

from latentstore.cli.common import (
    DEFAULT_STORE,
    FormatOption,
    LockTimeoutOption,
    OutputFormat,
    StoreOption,
    app,
    emit,
    fail,
    setup_logging,
    writable_store,
)

VERSIONS_SQL = """
SELECT model, version, strftime(created_at, '%Y-%m-%d %H:%M') AS created, snapshot_id,
       metric_name || ' ' || printf('%.4f', metric_value) AS metric,
       (SELECT string_agg(t.key || ' ' || printf('%.2f', (t.value->>'overlap_at_10')::DOUBLE)
                          || ' +' || printf('%.0f', 100 * (t.value->>'new_keys')::DOUBLE) || '%'
                          || ' -' || printf('%.0f', 100 * (t.value->>'removed_keys')::DOUBLE) || '%', ', ' ORDER BY t.key)
        FROM json_each(drift->'tables') t) AS "drift: overlap@10 +new -removed",
       CASE WHEN (gate->>'forced')::BOOLEAN THEN 'forced' ELSE gate->>'rule' END AS gate,
       CASE WHEN fold_in->>'mode' IS NULL THEN 'full'
            ELSE 'fold-in ' || (fold_in->>'mode') || ' from ' || coalesce(
              (SELECT 'v' || max(p.version) FROM versions p WHERE p.model = v.model
               AND p.run_id = (v.fold_in->>'parent_run')), 'run ' || (fold_in->>'parent_run')) END AS trained,
       status
FROM versions v WHERE ? IS NULL OR model = ? ORDER BY model, version
"""


@app.command()
def versions(store: StoreOption = DEFAULT_STORE,
             model: Annotated[str | None, typer.Option("--model")] = None,
             format: FormatOption = OutputFormat.table) -> None:
    """Every version (newest last): metric, drift from the version it replaced, gate, status
    (current, retained, removed by retention, abandoned by a killed publish)."""
    from latentstore import connect

    con = connect(store)
    known = [m for (m,) in con.execute("SELECT DISTINCT model FROM versions ORDER BY model").fetchall()]
    if model is not None and model not in known:
        fail(f"no model {model!r} in {store}; its models: {', '.join(known) or 'none'}")
    result = con.execute(VERSIONS_SQL, [model, model])
    emit([d[0] for d in result.description], result.fetchall(), format)
    _warn_broken_pointers(store, [model] if model else known)


def _lock_timeout(given: float | None) -> float:
    from jobs.publish.config import DEFAULT_LOCK_TIMEOUT_SECONDS

    return DEFAULT_LOCK_TIMEOUT_SECONDS if given is None else given


def _warn_broken_pointers(store, models: list[str]) -> None:
    """Readers keep working on a broken pointer (current.sql still attaches the last version), so say it here."""
    from jobs.store.registry import BrokenPointer, current_version
    from schemas.store import StoreLayout

    for model in models:
        try:
            current_version(StoreLayout(store), model)
        except BrokenPointer as broken:
            typer.secho(f"warning: {broken}", err=True, fg=typer.colors.YELLOW)


@app.command()
def rollback(
    model: Annotated[str, typer.Option("--model", help="Model name in the store.")],
    to: Annotated[int, typer.Option("--to", min=1, help="The (retained) version to make current.")],
    store: StoreOption = DEFAULT_STORE,
    lock_timeout: LockTimeoutOption = None,
) -> None:
    """Make an older version of MODEL current again, atomically; recorded as a rollback event.
    Also repairs MODEL's pointer if it is garbled or missing (to the version given)."""
    from jobs.publish.job import rollback as roll_back
    from schemas.store import StoreLayout

    setup_logging()
    event = roll_back(StoreLayout(writable_store(store)), model, to,
                      lock_timeout_seconds=_lock_timeout(lock_timeout))
    before = "a broken pointer" if event["from_version"] is None else f"v{event['from_version']}"
    typer.echo(f"{model}: {before} -> v{event['to_version']} ({event['event']} at {event['at']})")


@app.command()
def repair(store: StoreOption = DEFAULT_STORE, lock_timeout: LockTimeoutOption = None) -> None:
    """Rebuild garbled or missing model pointers from the registry, finish what a killed writer left,
    and rewrite current.sql. A healthy store is left as it is."""
    from jobs.publish.repair import repair as repair_store
    from schemas.store import StoreLayout

    setup_logging()
    done = repair_store(StoreLayout(writable_store(store)),
                        lock_timeout_seconds=_lock_timeout(lock_timeout))
    typer.echo("\n".join(done) if done else f"{store}: nothing to repair")
