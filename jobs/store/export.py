"""Export one published table: for TensorBoard's Embedding Projector, or as Parquet for other jobs.

- ``projector``: a folder with ``vectors.tsv`` (one row per key, the vector's values tab-separated),
  ``metadata.tsv`` (a header, then per key: key, count, and the label columns joined from a key
  table, in the same order) and ``projector_config.pbtxt`` naming both. TSV has no quoting, so a
  backslash, tab, newline or carriage return inside a value is written as ``\\\\``, ``\\t``, ``\\n``,
  ``\\r``; a key without a label gets an empty field. Load the folder in TensorBoard
  (``tensorboard --logdir OUT``, Projector tab) or upload both TSV files at projector.tensorflow.org.
- ``parquet``: key, vector (FLOAT[dim]), bias, count, and the lineage of every row (model,
  entity, version, run_id, snapshot_id, created_at), for Spark, pandas or polars.

Rows are the keys with ``count >= min_count``, most frequent first (then by key), streamed in
Arrow batches: memory is one batch, not the table.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import csv

from jobs.store.knn import vectors_of
from jobs.store.labels import read_labels
from schemas.errors import StoreError

BATCH_ROWS = 65_536
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def tsv_field(value) -> str:
    """One TSV field: text with its separators escaped (None: empty)."""
    return "" if value is None else str(value).translate(_ESCAPES)


def _rows(con, table: str, min_count: int):
    query = f"SELECT key, vector, bias, count FROM {table} WHERE count >= ? ORDER BY count DESC, key"
    return con.execute(query, [min_count]).fetch_record_batch(BATCH_ROWS)


def projector(con, table: str, name: str, out: Path, labels: str | None = None, key_column: str = "key",
              label_columns: list[str] | None = None, min_count: int = 0) -> dict:
    """Write ``table`` (qualified, on ``con``) as an Embedding Projector folder ``out``; returns what it wrote."""
    label_columns = label_columns or []
    if label_columns and labels is None:
        raise StoreError("--label-column needs --labels FILE")
    known = read_labels(labels, key_column, label_columns) if labels else {}
    out.mkdir(parents=True, exist_ok=True)
    rows = labelled = 0
    with (out / "vectors.tsv").open("wb") as vectors_file, \
            (out / "metadata.tsv").open("w", encoding="utf-8", newline="\n") as metadata_file:
        metadata_file.write("\t".join(tsv_field(c) for c in ["key", "count", *label_columns]) + "\n")
        for batch in _rows(con, table, min_count):
            keys, counts = batch.column(0).to_pylist(), batch.column(3).to_pylist()
            vectors = vectors_of(batch.column(1))  # Arrow writes each float32 in its shortest exact form
            columns = {f"c{i}": pa.array(vectors[:, i]) for i in range(vectors.shape[1])}
            csv.write_csv(pa.table(columns), vectors_file, csv.WriteOptions(include_header=False, delimiter="\t",
                                                                            quoting_style="none"))
            for key, count in zip(keys, counts):
                values = known.get(key)
                labelled += values is not None
                fields = [key, count, *(values or (None,) * len(label_columns))]
                metadata_file.write("\t".join(tsv_field(v) for v in fields) + "\n")
            rows += len(keys)
    if rows == 0:
        raise StoreError(f"{name} has no keys with count >= {min_count}: nothing to export")
    (out / "projector_config.pbtxt").write_text(
        "embeddings {\n"
        f'  tensor_name: "{name}"\n'
        '  tensor_path: "vectors.tsv"\n'
        '  metadata_path: "metadata.tsv"\n'
        "}\n", encoding="utf-8")
    return {"rows": rows, "labelled": labelled, "files": [str(out / n) for n in
                                                          ("vectors.tsv", "metadata.tsv", "projector_config.pbtxt")]}


def parquet(con, table: str, out: Path, lineage: dict, min_count: int = 0) -> dict:
    """Write ``table`` with its ``lineage`` (model, entity, version, run_id, snapshot_id, created_at) on every
    row to the Parquet file ``out``, through a temporary file: a failure leaves no partial file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    rows = 0
    writer = None
    try:
        for batch in _rows(con, table, min_count):
            extra = {name: pa.array([value] * batch.num_rows, pa.int32() if name == "version" else pa.string())
                     for name, value in lineage.items()}
            data = pa.table({**{name: batch.column(name) for name in ("key", "vector", "bias", "count")}, **extra})
            writer = writer or pq.ParquetWriter(tmp, data.schema)
            writer.write_table(data)
            rows += batch.num_rows
        if writer is None:
            raise StoreError(f"{lineage['model']}.{lineage['entity']} has no keys with count >= {min_count}: "
                             "nothing to export")
        writer.close()
        writer = None
        tmp.replace(out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return {"rows": rows, "files": [str(out)]}
