"""The ratings contract: canonical columns and the validation rules of the index stage.

Raw input columns are mapped onto these canonical names by the config
(``[input.columns]``). Every raw row ends in exactly one of four outcomes:

- ``kept``: valid, and the latest rating of its (user, item) pair: the highest
  timestamp wins, then the highest rating (no dependence on input order);
- ``quarantined``: failed a rule below; written with its reason;
- ``duplicate``: an exact copy (user, item, rating, timestamp) of another valid row;
- ``superseded``: a valid rating of a (user, item) that a later one replaced.

so that ``read == kept + quarantined + duplicates + superseded`` always holds, where
``read`` is the number of records in the input: a CSV record whose quoted field spans
lines counts once (and is quarantined: ``embedded_newline``).
"""

from enum import StrEnum

USER = "user"
ITEM = "item"
RATING = "rating"
TIMESTAMP = "timestamp"

#: Canonical columns, in order; TIMESTAMP is optional in the input.
CANONICAL_COLUMNS = (USER, ITEM, RATING, TIMESTAMP)
#: Columns that become vocabularies (entity name == column name).
ID_COLUMNS = (USER, ITEM)


class Reason(StrEnum):
    """Why a row was quarantined. The first failing rule, in this order, wins."""

    MALFORMED_LINE = "malformed_line"  # wrong field count / unparsable record
    EMBEDDED_NEWLINE = "embedded_newline"  # a field holds a line break (a quoted CSV field spanning lines)
    INVALID_UTF8 = "invalid_utf8"  # a field held bytes that are not UTF-8 (any U+FFFD, even a literal one)
    MISSING_USER = "missing_user"
    MISSING_ITEM = "missing_item"
    KEY_TOO_LONG = "key_too_long"  # user or item id longer than index.max_key_length characters
    MISSING_RATING = "missing_rating"
    NON_NUMERIC_RATING = "non_numeric_rating"
    RATING_OUT_OF_RANGE = "rating_out_of_range"
    MISSING_TIMESTAMP = "missing_timestamp"  # only when a timestamp column is mapped
    UNPARSABLE_TIMESTAMP = "unparsable_timestamp"
    NEGATIVE_TIMESTAMP = "negative_timestamp"  # before 1970-01-01 (Unix time below 0)


class Outcome(StrEnum):
    KEPT = "kept"
    QUARANTINED = "quarantined"
    DUPLICATE = "duplicate"
    SUPERSEDED = "superseded"


#: Columns of the interactions table in a snapshot (one Parquet dataset per split).
INTERACTION_COLUMNS = {"user": "int32", "item": "int32", "rating": "float32", "timestamp": "int64"}
#: Quarantine table columns: the raw fields as text, then why and where.
QUARANTINE_COLUMNS = ("user", "item", "rating", "timestamp", "raw_record", "reason", "source_file")
