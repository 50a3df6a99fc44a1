"""Store commands: versions (with metrics, gate and drift), rollback."""

from __future__ import annotations

from typing import Annotated

import typer

from latentstore.cli.common import DEFAULT_STORE, FormatOption, OutputFormat, StoreOption, app, emit, fail
from schemas.errors import LatentstoreError

VERSIONS_SQL = """
SELECT model, version, strftime(created_at, '%Y-%m-%d %H:%M') AS created, snapshot_id,
       metric_name || ' ' || printf('%.4f', metric_value) AS metric,
       (SELECT string_agg(t.key || ' ' || printf('%.2f', (t.value->>'overlap_at_10')::DOUBLE)
                          || ' +' || printf('%.0f', 100 * (t.value->>'new_keys')::DOUBLE) || '%'
                          || ' -' || printf('%.0f', 100 * (t.value->>'removed_keys')::DOUBLE) || '%', ', ' ORDER BY t.key)
        FROM json_each(drift->'tables') t) AS "drift: overlap@10 +new -removed",
       CASE WHEN (gate->>'forced')::BOOLEAN THEN 'forced' ELSE gate->>'rule' END AS gate, status
FROM versions WHERE ? IS NULL OR model = ? ORDER BY model, version
"""


@app.command()
def versions(store: StoreOption = DEFAULT_STORE,
             model: Annotated[str | None, typer.Option("--model")] = None,
             format: FormatOption = OutputFormat.table) -> None:
    """Every version (newest last): metric, drift from the version it replaced, gate, status
    (current, retained, removed by retention, abandoned by a killed publish)."""
    from latentstore import connect

    try:
        con = connect(store)
    except LatentstoreError as exc:
        fail(str(exc))
    result = con.execute(VERSIONS_SQL, [model, model])
    emit([d[0] for d in result.description], result.fetchall(), format)


@app.command()
def rollback(
    model: Annotated[str, typer.Option("--model", help="Model name in the store.")],
    to: Annotated[int, typer.Option("--to", min=1, help="The (retained) version to make current.")],
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Make an older version of MODEL current again, atomically; recorded as a rollback event."""
    from jobs.publish.job import rollback as roll_back
    from schemas.store import StoreLayout

    try:
        event = roll_back(StoreLayout(store), model, to)
    except LatentstoreError as exc:
        fail(str(exc))
    typer.echo(f"{model}: v{event['from_version']} -> v{event['to_version']} (rollback at {event['at']})")
