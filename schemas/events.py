"""The events contract: how an event row becomes a token, and tokens become sessions.

Canonical fields: ``user``, ``timestamp`` and optionally ``type`` (mapped from raw
columns by ``[index.input.columns]``), plus the attribute fields that the token
templates name. Every raw row ends in exactly one outcome:

- ``kept``: valid; it becomes one token in its user's sequence;
- ``quarantined``: failed a rule below (first failing Reason), written with the field at fault;
- ``duplicate``: an exact copy (same user, time, type and template fields) of another valid row;

so ``read == kept + quarantined + duplicates`` (``superseded`` is always 0 for events), with
``read`` the number of records (a CSV record whose quoted field spans lines counts once).

Tokens. A template per event type, e.g. ``"{type}:{page_type}:{portal}"``: text in
braces names a raw input column (``{type}`` is the event type), the rest is
literal. The key ``"*"`` applies to every type not listed (and to all rows when
there is no type column). A field listed in ``[index.events.buckets]`` is a
number and enters the token as its bucket's label:

- edges ``e0 < e1 < ... < en``: ``"<e0"`` below ``e0``, ``"ei-ej"`` for ``ei <= v < ej``,
  ``"en+"`` from ``en`` on; then the unit, e.g. ``scroll:1000-2000px``;
- log scale (start ``s``, base ``b``): the edges ``0, s, s*b, ..., s*b^63`` (fewer
  when they would pass 1e300); a negative value is quarantined.

Numbers print as integers when whole (``1000``), else in Python's shortest form (``0.5``).

Order and sessions. A user's events are ordered by timestamp (milliseconds),
then by the token: tokens that are numbers first, by value, then the others by
UTF-8 bytes (so MovieLens movie ids tie-break numerically). A session starts at a
user's first event and wherever the gap to the previous event is *longer* than
``session_gap_seconds`` (exactly the gap stays in the session); a gap of 0 means
one session per user. A session longer than ``max_length`` is split into
consecutive chunks of ``max_length`` events (the last one shorter); chunks are
counted in the manifest, never dropped or truncated.

Validation. The last ``holdout`` events of each indexed user with more than
``holdout`` events are held out; the rest are training sessions. A history per
indexed user keeps their last ``history_length`` events (training, then held out)
for validation queries and user vectors.
"""

from __future__ import annotations

import string
from enum import StrEnum

USER = "user"
TIMESTAMP = "timestamp"
TYPE = "type"
#: The template key that applies to every event type without its own template.
ANY_TYPE = "*"
#: Log-scale edges after 0: s * b^k for k < LOG_EDGES, as long as they stay below LOG_EDGE_CAP.
LOG_EDGES = 64
LOG_EDGE_CAP = 1e300


class Reason(StrEnum):
    """Why an event row was quarantined. The first failing rule, in this order, wins."""

    MALFORMED_LINE = "malformed_line"
    EMBEDDED_NEWLINE = "embedded_newline"  # a field holds a line break (``detail`` names it)
    INVALID_UTF8 = "invalid_utf8"  # a field held bytes that are not UTF-8, any U+FFFD (``detail`` names it)
    MISSING_USER = "missing_user"
    MISSING_TIMESTAMP = "missing_timestamp"
    UNPARSABLE_TIMESTAMP = "unparsable_timestamp"
    NEGATIVE_TIMESTAMP = "negative_timestamp"  # before 1970-01-01
    MISSING_TYPE = "missing_type"  # only when a type column is mapped
    UNKNOWN_TYPE = "unknown_type"  # no template for the type and no "*" template
    MISSING_FIELD = "missing_field"  # a field the row's template names is empty (``detail`` names it)
    NON_NUMERIC_FIELD = "non_numeric_field"  # a bucketed field is not a number
    NEGATIVE_FIELD = "negative_field"  # a log-scale bucketed field is below 0
    KEY_TOO_LONG = "key_too_long"  # the user or the token is longer than index.max_key_length (``detail``: which)


#: Sessions table (training split): one row per session chunk, tokens in order.
SESSION_COLUMNS = {
    "user": "int32",
    "session": "int32",  # the user's session number, from 1
    "chunk": "int32",  # chunk within the session, from 0
    "start_ms": "int64",
    "end_ms": "int64",
    "length": "int32",
    "tokens": "list<int32>",
}
#: Histories table: one row per indexed user.
HISTORY_COLUMNS = {
    "user": "int32",
    "events": "int64",  # all kept events of the user
    "recent": "list<int32>",  # their last history_length tokens in order, held-out ones last
    "held_out": "int32",  # how many of the last tokens of ``recent`` are validation
}
#: Quarantine table: the raw values as text, then why and where.
QUARANTINE_COLUMNS = ("user", "timestamp", "type", "fields", "raw_record", "reason", "detail", "source_file")


def template_fields(template: str) -> list[str]:
    """The field names a template uses, in order; ValueError on anything but plain ``{name}``."""
    fields = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name or name.isdigit() or spec or conversion:
            raise ValueError(f"template {template!r}: use plain {{column}} fields (got {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}})")
        fields.append(name)
    return fields


def template_parts(template: str) -> list[tuple[str, str | None]]:
    """(literal text, field name or None) pairs that concatenate into the token."""
    template_fields(template)  # validates
    return [(literal, name) for literal, name, _, _ in string.Formatter().parse(template)]


def format_number(value: float) -> str:
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def log_edges(start: float, base: float) -> list[float]:
    edges, edge = [0.0], float(start)
    for _ in range(LOG_EDGES):
        if edge > LOG_EDGE_CAP:
            break
        edges.append(edge)
        edge *= base
    return edges


def bucket_labels(edges: list[float], unit: str) -> list[str]:
    """Label of bucket ``i`` = number of edges <= value (0: below the first edge)."""
    text = [format_number(e) for e in edges]
    labels = [f"<{text[0]}"]
    labels += [f"{low}-{high}" for low, high in zip(text, text[1:])]
    labels.append(f"{text[-1]}+")
    return [label + unit for label in labels]


def bucket_label(value: float, edges: list[float], unit: str) -> str:
    """The reference implementation the Spark expression must agree with."""
    index = sum(1 for edge in edges if edge <= value)
    return bucket_labels(edges, unit)[index]
