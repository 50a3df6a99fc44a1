"""Render current.sql: the script that turns a plain DuckDB session into a store reader.

It ATTACHes every model's current version READ_ONLY under the model's name,
loads vss from the store's own extension directory (offline), and defines
TEMP views and macros (TEMP, so that names resolve in the reader's catalog).

Every path in the file is relative to the store root, so the store still opens
when it is copied or mounted (read-only) at another path: DuckDB resolves
relative paths against the process's working directory, so run it from the
store's directory: ``cd STORE && duckdb -init current.sql``. The Python client
renders the same script for the store's actual location (``client=True``):
absolute paths, and the registry read into TEMP tables at connect time, because
its connection can open no file once it is locked (jobs.store.duck.lock_down).

Names: model and entity names are checked against schemas.store.NAME_PATTERN
(they are file names and unquoted SQL names); text goes through quote_literal.

- ``embeddings(model, entity, key, vector FLOAT[], bias, count, version)``: every current table.
- ``models``: one row per attached model (version, run, snapshot, output range, tables).
- ``versions``: every published version from the registry, with ``is_current``, ``retained``
  (its file still exists) and ``status`` (current, retained, removed, abandoned), the gate
  decision and the drift from the version it replaced.
- ``registry_events``: every event (publish, rollback, recovered, refused, removed);
  ``pointer_events``: the ones that moved a pointer.
- ``version_at(model, at)``: the version that was current at a time (rollbacks included).
- ``vector_of(model, entity, key)``; ``most_similar(model, entity, key, k)``;
  ``nearest(model, entity, vector, k)``: exact search, any model;
  ``recommend(model, user_key, k)``: an ``mf`` model's predicted ratings;
  ``next_events(model, user_key, k)``: a ``gru`` model's next-event scores and
  probabilities (softmax over the published tokens).
- ``<model>_<entity>_nearest(unit_vector, k)``: the HNSW fast path on the model's own
  table, for a vector of length 1 (a key's ``unit`` column): the index is on ``unit``
  with the inner-product metric, and vss only uses it on a base table with a
  constant query vector, so the query is not normalised inside the macro.
"""

from __future__ import annotations

from datetime import UTC, datetime

from jobs.store.duck import quote_literal
from jobs.store.registry import SEGMENTS
from schemas.errors import StoreError
from schemas.store import StoreLayout, check_name

_VERSION_COLUMNS = {
    "model": "VARCHAR",
    "version": "INTEGER",
    "created_at": "TIMESTAMPTZ",
    "run_id": "VARCHAR",
    "snapshot_id": "VARCHAR",
    "dataset": "VARCHAR",
    "model_kind": "VARCHAR",
    "dim": "INTEGER",
    "metric_name": "VARCHAR",
    "metric_value": "DOUBLE",
    "metric_direction": "VARCHAR",
    "metrics": "JSON",
    "params": "JSON",
    "entities": "JSON",
    "validation_set": "VARCHAR",
    "gate": "JSON",
    "fold_in": "JSON",
    "drift": "JSON",
    "snapshot_manifest": "JSON",
    "code_version": "VARCHAR",
    "git_commit": "VARCHAR",
    "file": "VARCHAR",
}
_EVENT_COLUMNS = {
    "at": "TIMESTAMPTZ",
    "model": "VARCHAR",
    "event": "VARCHAR",
    "from_version": "INTEGER",
    "to_version": "INTEGER",
    "version": "INTEGER",
    "run_id": "VARCHAR",
    "details": "JSON",
}


def nearest_macro(model: str, entity: str) -> str:
    """Name of a table's HNSW fast-path macro."""
    return f"{model}_{entity}_nearest"


def macro_clashes(records: dict[str, dict], model: str, entities: list[str]) -> list[str]:
    """Macro names ``model``'s tables would share with another model's (``shop`` + ``next_token`` and
    ``shop_next`` + ``token`` both make ``shop_next_token_nearest``)."""
    taken = {nearest_macro(m, e): f"{m}.{e}" for m, r in records.items() if m != model for e in r["entities"]}
    return [f"{nearest_macro(model, e)} ({model}.{e} and {taken[nearest_macro(model, e)]})"
            for e in entities if nearest_macro(model, e) in taken]


#: A SQL string literal (single quotes doubled); kept under this name for the modules that import it.
literal = quote_literal


def _checked(name: str, what: str, model: str) -> str:
    """``name`` if it is a safe SQL and file name, else a StoreError naming the model's registry record."""
    try:
        return check_name(name, what)
    except ValueError as exc:
        raise StoreError(f"registry record of model {model!r}: {exc}") from None


def _struct(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in columns.items()) + "}"


def _events_source(store: StoreLayout, path) -> str:
    """The event files, plus the compacted segments once there are any (an id in both: the segment's copy)."""
    loose = (f"SELECT *, parse_filename(filename, true) AS id FROM read_json("
             f"{path(str((store.registry_events / '*.json').relative_to(store.root)))}, format = 'unstructured', "
             f"columns = {_struct(_EVENT_COLUMNS)}, filename = true)")
    if not any(store.event_segments.glob("*.jsonl")):
        return loose
    segments = (f"SELECT * FROM read_json({path(str((store.event_segments / '*.jsonl').relative_to(store.root)))}, "
                f"format = 'newline_delimited', columns = {_struct({**_EVENT_COLUMNS, 'id': 'VARCHAR'})})")
    return (f"WITH segments AS ({segments})\n"
            f"    SELECT * EXCLUDE (filename) FROM ({loose}) WHERE id NOT IN (SELECT id FROM segments)\n"
            f"    UNION ALL BY NAME SELECT * FROM segments")


def _records_source(store: StoreLayout, path) -> str:
    """The version record files, plus the compacted ones once a model has any (never the same version twice:
    only records of versions without a file are compacted, and the files go once the segment is written)."""
    files_glob = path(str((store.registry_versions / "*" / "*.json").relative_to(store.root)))
    files = f"SELECT * FROM read_json({files_glob}, format = 'unstructured', columns = {_struct(_VERSION_COLUMNS)})"
    if not any(store.registry_versions.glob(f"*/{SEGMENTS}/*.jsonl")):
        return files
    segments = path(str((store.registry_versions / "*" / SEGMENTS / "*.jsonl").relative_to(store.root)))
    return (f"SELECT DISTINCT ON (model, version) * FROM ({files}\n"
            f"    UNION ALL SELECT * FROM read_json({segments}, format = 'newline_delimited', "
            f"columns = {_struct(_VERSION_COLUMNS)}))")


def render(store: StoreLayout, current: dict[str, dict], pointers: dict[str, int] | None = None,
           client: bool = False) -> str:
    """``current`` maps each model to the registry record of the version to attach (its current one, or
    one as of a time); ``pointers`` are the real current versions (``versions.is_current``), by default
    the attached ones. ``client``: for latentstore.connect (absolute paths where the store is now, the
    registry read into TEMP tables at once); otherwise the current.sql file (paths relative to the store)."""
    def path(relative: str) -> str:
        return quote_literal(str(store.root / relative) if client else relative)

    generated = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [
        f"-- latentstore current.sql, generated {generated}; do not edit.",
        f"-- Rendered by latentstore.connect for the store at {store.root}." if client else
        "-- Paths are relative to the store: open it from the store's directory:  cd STORE && duckdb -init current.sql",
        "SET autoinstall_known_extensions = false;",
        f"SET extension_directory = {path('extensions')};",
        "LOAD vss;",
        "SET TimeZone = 'UTC';  -- times without a zone are UTC, as in the Python client",
    ]
    embeddings, models = [], []
    macros = []
    for model, record in sorted(current.items()):
        _checked(model, "model", model)
        for entity, info in record["entities"].items():
            _checked(entity, "entity", model)
            _checked(info["table"], "entity", model)
        clashes = macro_clashes(current, model, list(record["entities"]))
        if clashes:
            raise StoreError(f"SQL macro names collide: {'; '.join(clashes)}")  # publish checks this first
        version_file = store.version_file(model, int(record["version"])).relative_to(store.root)
        lines.append(f"ATTACH IF NOT EXISTS {path(str(version_file))} AS {model} (READ_ONLY);")
        models.append(
            f"SELECT model, version, run_id, snapshot_id, model_kind, y_low, y_high, created_at, entities FROM {model}.meta"
        )
        for entity, info in sorted(record["entities"].items()):
            table = f"{model}.{info['table']}"
            embeddings.append(
                f"SELECT {literal(model)} AS model, {literal(entity)} AS entity, key, vector::FLOAT[] AS vector, "
                f"bias, count, {int(record['version'])} AS version FROM {table}"
            )
            vector_type = f"FLOAT[{int(info['dim'])}]"
            # vss recognises the index scan only when the projected expression is exactly the ORDER BY one:
            # the distance (1 + score) is computed outside the inner query
            score = f"array_negative_inner_product(unit, unit_vector::{vector_type})"
            macros.append(
                f"CREATE OR REPLACE TEMP MACRO {nearest_macro(model, entity)}(unit_vector, k := 10) AS TABLE\n"
                f"  SELECT key, 1 + score AS distance, bias, count FROM (\n"
                f"    SELECT key, {score} AS score, bias, count FROM {table} ORDER BY {score} LIMIT k);"
            )
    lines.append("CREATE OR REPLACE TEMP VIEW embeddings AS\n  " + "\n  UNION ALL ".join(embeddings) + ";")
    lines.append("CREATE OR REPLACE TEMP VIEW models AS\n  " + "\n  UNION ALL ".join(models) + ";")
    pointers = pointers if pointers is not None else {m: int(r["version"]) for m, r in current.items()}
    pointer_rows = ", ".join(f"({literal(m)}, {int(v)})" for m, v in sorted(pointers.items())) or "(NULL, NULL)"
    files_glob = path(str((store.models / "*" / "*.duckdb").relative_to(store.root)))
    root = quote_literal(str(store.root) + "/" if client else "")  # glob() returns paths as the pattern has them
    registry = "TABLE" if client else "VIEW"  # a table is read now, a view at each query
    lines += [
        f"CREATE OR REPLACE TEMP {registry} registry_events AS\n"
        '  SELECT "at" AS event_time, model, event, from_version, to_version, version, run_id, details\n'
        f"  FROM ({_events_source(store, path)}) ORDER BY id;",
        f"CREATE OR REPLACE TEMP {registry} versions AS\n"
        f"  SELECT r.*, (r.version = c.current_version) IS TRUE AS is_current, f.file IS NOT NULL AS retained,\n"
        "         CASE WHEN r.version = c.current_version THEN 'current' WHEN a.version IS NOT NULL THEN 'abandoned'\n"
        "              WHEN f.file IS NULL THEN 'removed' ELSE 'retained' END AS status\n"
        f"  FROM ({_records_source(store, path)}) r\n"
        f"  LEFT JOIN (VALUES {pointer_rows}) c(model, current_version) ON r.model = c.model\n"
        f"  LEFT JOIN glob({files_glob}) f ON f.file = {root} || r.file\n"
        "  LEFT JOIN (SELECT DISTINCT model, version FROM registry_events WHERE event = 'abandoned') a\n"
        "    ON a.model = r.model AND a.version = r.version;",
        "CREATE OR REPLACE TEMP VIEW pointer_events AS\n"
        "  SELECT event_time, model, event, from_version, to_version, run_id, details FROM registry_events\n"
        "  WHERE to_version IS NOT NULL;",
        "CREATE OR REPLACE TEMP MACRO version_at(model_name, at_time) AS\n"
        "  (SELECT to_version FROM pointer_events WHERE model = model_name AND event_time <= at_time::TIMESTAMPTZ\n"
        "   ORDER BY event_time DESC LIMIT 1);",
        "CREATE OR REPLACE TEMP MACRO vector_of(model_name, entity_name, key_value) AS\n"
        "  (SELECT vector FROM embeddings WHERE model = model_name AND entity = entity_name AND key = key_value);",
        "CREATE OR REPLACE TEMP MACRO most_similar(model_name, entity_name, key_value, k := 10) AS TABLE\n"
        "  SELECT e.key, list_cosine_distance(e.vector, q.vector) AS distance, e.bias, e.count\n"
        "  FROM embeddings e,\n"
        "       (SELECT vector FROM embeddings WHERE model = model_name AND entity = entity_name AND key = key_value) q\n"
        "  WHERE e.model = model_name AND e.entity = entity_name AND e.key <> key_value\n"
        "  ORDER BY distance, e.key LIMIT k;",
        "CREATE OR REPLACE TEMP MACRO nearest(model_name, entity_name, query_vector, k := 10) AS TABLE\n"
        "  SELECT key, list_cosine_distance(vector, query_vector::FLOAT[]) AS distance, bias, count\n"
        "  FROM embeddings WHERE model = model_name AND entity = entity_name\n"
        "  ORDER BY distance, key LIMIT k;",
        "CREATE OR REPLACE TEMP MACRO recommend(model_name, user_key, k := 10) AS TABLE\n"
        "  SELECT i.key,\n"
        "         m.y_low + (m.y_high - m.y_low) / (1 + exp(-(list_dot_product(u.vector, i.vector) + u.bias + i.bias)))\n"
        "           AS predicted_rating,\n"
        "         i.count\n"
        "  FROM embeddings i,\n"
        "       (SELECT vector, bias FROM embeddings WHERE model = model_name AND entity = 'user' AND key = user_key) u,\n"
        "       (SELECT y_low, y_high FROM models WHERE model = model_name) m\n"
        "  WHERE i.model = model_name AND i.entity = 'item'\n"
        "  ORDER BY predicted_rating DESC, i.key LIMIT k;",
        "CREATE OR REPLACE TEMP MACRO next_events(model_name, user_key, k := 10) AS TABLE\n"
        "  WITH scored AS (\n"
        "    SELECT t.key, list_dot_product(u.vector, t.vector) + t.bias AS score, t.count\n"
        "    FROM embeddings t,\n"
        "         (SELECT vector FROM embeddings WHERE model = model_name AND entity = 'user' AND key = user_key) u\n"
        "    WHERE t.model = model_name AND t.entity = 'next_token'),\n"
        "  shifted AS (SELECT key, score, count, exp(score - max(score) OVER ()) AS weight FROM scored)\n"
        "  SELECT key, score, weight / sum(weight) OVER () AS probability, count\n"
        "  FROM shifted ORDER BY score DESC, key LIMIT k;",
        *macros,
    ]
    return "\n".join(lines) + "\n"
