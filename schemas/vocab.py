"""The index contract: how keys become dense integer indices.

- Indices are contiguous in ``[0, size)``. Index ``0`` is reserved for
  unknown and rare keys (seen fewer than ``min_count`` times); every other
  index maps to exactly one key and back.
- First build: keys with ``count >= min_count`` are ordered by count
  descending, then key ascending (byte order of the UTF-8 string), and numbered
  from 1. The order does not depend on input order or partitioning.
- Rebuild on a parent snapshot: every key of the parent vocabulary keeps its
  index, even if its count drops (never demoted, never removed). Keys not in
  the parent with ``count >= min_count`` are appended after the parent's
  largest index, ordered like a first build.
- Unseen keys at read time map to ``0``.

A vocabulary is stored as Parquet with columns ``key`` (string), ``index``
(int32) and ``count`` (int64: occurrences among kept rows of this snapshot).
Reserved index 0 has no row.
"""

UNKNOWN_INDEX = 0
FIRST_INDEX = 1
VOCAB_COLUMNS = ("key", "index", "count")
