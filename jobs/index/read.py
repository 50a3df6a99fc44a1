"""Read raw input with Spark into canonical text columns, keeping malformed lines."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from jobs.index.config import ColumnMap
from jobs.index.probe import ProbedInput
from schemas.ratings import CANONICAL_COLUMNS

CORRUPT = "_corrupt_record"


def _quoted(name: str) -> F.Column:
    return F.col(f"`{name}`")


def _text_schema(names: list[str]) -> StructType:
    return StructType([StructField(n, StringType()) for n in names] + [StructField(CORRUPT, StringType())])


def ratings_columns(columns: ColumnMap) -> dict[str, str | None]:
    """Canonical ratings column -> raw column (None: not in the input)."""
    return {canon: getattr(columns, canon) for canon in CANONICAL_COLUMNS}


def read_raw(spark: SparkSession, probed: ProbedInput, columns: dict[str, str | None]) -> DataFrame:
    """One row per input record with the canonical ``columns`` (in order) as trimmed text
    (empty -> NULL), ``raw_record`` (the unparsable line, if any) and ``source_file``."""
    paths = [str(p) for p in probed.files]
    mapping = {canon: raw for canon, raw in columns.items() if raw}
    # PERMISSIVE + a corrupt-record column: malformed lines are kept for quarantine,
    # where DROPMALFORMED would lose them silently.
    permissive = (
        spark.read.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
    )
    if probed.is_text:
        frame = (
            permissive.schema(_text_schema(probed.columns))
            .option("header", probed.header)
            .option("sep", probed.separator)
            .option("enforceSchema", True)
            # Records, not lines: a quoted field that spans lines is one record (counted once, then
            # quarantined as embedded_newline), where line by line its fragments would be two rows and
            # the second could pass as valid. multiLine also checks every record's field count whatever
            # columns a query reads (line by line, Spark's column pruning skips that check). The price:
            # one task per file (gzip is so anyway); on 4M rows with 2 cores the read took as long (2.05 s
            # vs 2.07 s: one stream parses ~1.5x faster than split lines), so a single huge file on a
            # many-core machine reads slower: give it as a directory of parts to read them in parallel.
            .option("multiLine", True)
            .csv(paths)
        )
    elif probed.format == "jsonl":
        frame = permissive.schema(_text_schema(list(dict.fromkeys(mapping.values())))).json(paths)
    else:
        frame = spark.read.parquet(*paths).withColumn(CORRUPT, F.lit(None).cast("string"))

    def text(canon: str) -> F.Column:
        if canon not in mapping:
            return F.lit(None).cast("string").alias(canon)
        return F.nullif(F.trim(_quoted(mapping[canon]).cast("string")), F.lit("")).alias(canon)

    return frame.select(
        *[text(c) for c in columns],
        F.col(CORRUPT).alias("raw_record"),
        F.col("_metadata.file_path").alias("source_file"),
    )
