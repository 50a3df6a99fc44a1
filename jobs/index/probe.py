"""Look at the raw input before Spark starts: files, format, columns, emptiness.

Pure Python (pyarrow for Parquet footers): a bad path, an empty input or a
column mapping to a missing column fails here in milliseconds with a message
that names the file and field, before anything is written to the store.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from jobs.index.config import IndexConfig
from schemas.errors import InputError
from schemas.ratings import ITEM, RATING, TIMESTAMP, USER

# The original GroupLens files have no header: their columns, by position.
_GROUPLENS_COLUMNS = [USER, ITEM, RATING, TIMESTAMP]
_SEPARATORS = {"csv": ",", "tsv": "\t", "movielens-udata": "\t", "movielens-dat": "::"}
_TEXT_FORMATS = frozenset(_SEPARATORS)
_JSON_SAMPLE_LINES = 1000
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbedInput:
    """What the index job needs to read the input with an explicit schema."""

    files: list[Path]
    format: str  # never "auto"
    columns: list[str]  # raw column names, in file order for text formats
    separator: str | None
    header: bool

    @property
    def is_text(self) -> bool:
        return self.format in _TEXT_FORMATS


def list_files(path: str) -> list[Path]:
    """The data files behind ``path``: a file, a directory (recursively) or a glob."""
    if any(ch in path for ch in "*?["):
        candidates = [Path(p) for p in sorted(glob.glob(path, recursive=True))]
    else:
        root = Path(path)
        if not root.exists():
            raise InputError(f"input not found: {path}")
        candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    # Spark's own markers and hidden files are not data.
    files = [p for p in candidates if p.is_file() and not p.name.startswith(("_", "."))]
    if not files:
        raise InputError(f"input has no data files: {path}")
    for p in files:
        if not os.access(p, os.R_OK):
            raise InputError(f"input file is not readable: {p}")
    return files


def _open_text(path: Path):
    """The file as text: gunzipped when its name ends in .gz (as Spark reads it), a UTF-8 byte order
    mark dropped (Spark drops it too), undecodable bytes replaced (the index job quarantines them)."""
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="")
    return path.open("r", encoding="utf-8-sig", errors="replace", newline="")


def detect_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")  # Spark decompresses gzip by the name
    if name == "u.data":
        return "movielens-udata"
    for suffix, fmt in ((".dat", "movielens-dat"), (".csv", "csv"), (".tsv", "tsv"), (".parquet", "parquet"),
                        (".jsonl", "jsonl"), (".json", "jsonl"), (".ndjson", "jsonl")):
        if name.endswith(suffix):
            return fmt
    raise InputError(f"cannot tell the format of {path}: set input.format (csv, tsv, movielens-udata, "
                     "movielens-dat, parquet, jsonl; a .gz file is read gunzipped)")


def _first_line(path: Path) -> str | None:
    with _open_text(path) as fh:
        for line in fh:
            if line.strip():
                return line.rstrip("\r\n")
    return None


def _text_columns(path: Path, sep: str, header: bool, fmt: str) -> list[str]:
    if fmt in ("movielens-udata", "movielens-dat"):
        return list(_GROUPLENS_COLUMNS)
    line = _first_line(path)
    if line is None:
        raise InputError(f"input file is empty: {path}")
    if not header:
        width = len(line.split(sep))
        return [f"_c{i}" for i in range(width)]
    return next(csv.reader([line], delimiter=sep)) if len(sep) == 1 else line.split(sep)


def _json_keys(path: Path, max_lines: int = _JSON_SAMPLE_LINES) -> list[str]:
    """Union of the keys of the first JSON objects (lines may omit optional keys)."""
    keys: dict[str, None] = {}
    with _open_text(path) as fh:
        for number, line in enumerate(fh, start=1):
            if number > max_lines:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a malformed line is quarantined by the index job
            if isinstance(record, dict):
                keys.update(dict.fromkeys(record))
    if not keys:
        raise InputError(f"{path}: no JSON object in its first {max_lines} lines")
    return list(keys)


def _has_rows(files: list[Path], fmt: str, header: bool) -> bool:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return any(pq.ParquetFile(p).metadata.num_rows > 0 for p in files)
    skip = 1 if header and fmt in ("csv", "tsv") else 0
    for p in files:
        try:
            with _open_text(p) as fh:
                nonblank = 0
                for line in fh:
                    if line.strip():
                        nonblank += 1
                        if nonblank > skip:
                            return True
        except (OSError, EOFError) as exc:  # e.g. a .gz file that is not gzip, or cut short
            raise InputError(f"cannot read {p} as {fmt}: {exc}") from None
    return False


def _columns(files: list[Path], fmt: str, sep: str | None, header: bool) -> list[str]:
    first = files[0]
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(first).names)
        if fmt == "jsonl":
            return _json_keys(first)
        return _text_columns(first, sep or ",", header, fmt)
    except InputError:
        raise
    except (OSError, EOFError, ValueError) as exc:
        raise InputError(f"cannot read {first} as {fmt}: {exc}") from None


def probe(cfg: IndexConfig) -> ProbedInput:
    """Check the input exists, is non-empty and has every column the index stage reads."""
    source = cfg.input
    assert source.path is not None, "synthetic inputs are generated before probing"
    files = list_files(source.path)
    fmt = source.format if source.format != "auto" else detect_format(files[0])
    sep = source.delimiter or _SEPARATORS.get(fmt)
    header = source.header and fmt in ("csv", "tsv")
    columns = _columns(files, fmt, sep, header)
    if not _has_rows(files, fmt, header):
        raise InputError(f"input has no rows: {source.path}")
    for where, raw in cfg.raw_columns():
        if raw in columns:
            continue
        message = f"column {raw!r} ({where}) not found in {files[0]}; its columns are: {', '.join(columns)}"
        if fmt == "jsonl" and where.startswith("index.events.templates"):
            # JSON objects omit absent fields: rows of that type without it are quarantined (missing_field)
            log.warning("%s (in the first %d lines)", message, _JSON_SAMPLE_LINES)
            continue
        raise InputError(message)
    return ProbedInput(files=files, format=fmt, columns=columns, separator=sep, header=header)
