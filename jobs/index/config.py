"""Config of the index stage: where the raw ratings or events are, how to read and validate them."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from jobs.common.config import StrictModel, resolve_path
from jobs.synthetic.config import Synthetic
from schemas.events import ANY_TYPE, TYPE, log_edges, template_fields
from schemas.store import check_name

InputFormat = Literal["auto", "csv", "tsv", "movielens-udata", "movielens-dat", "parquet", "jsonl"]


class ColumnMap(StrictModel):
    """Which raw column holds each canonical field (see schemas.ratings)."""

    user: str = "user"
    """Raw column with the user id (any type; kept as text)."""
    item: str = "item"
    """Raw column with the item id (any type; kept as text)."""
    rating: str = "rating"
    """Raw column with the numeric rating."""
    timestamp: str | None = "timestamp"
    """Raw column with the event time (Unix seconds/milliseconds or ISO-8601); "" for none."""
    type: str | None = None
    """Events only: raw column with the event type (e.g. page_view); none: every row uses the "*" template."""

    @field_validator("timestamp", "type")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None


class InputConfig(StrictModel):
    """The raw ratings or events: one file, a directory of files, or generated data."""

    path: str | None = None
    """File or directory (relative paths resolve against the config file's directory)."""
    synthetic: Synthetic | None = None
    """Generate the data instead (jobs.synthetic.config; the index stage writes it under the store's inputs/
    before the index job reads it)."""
    format: InputFormat = "auto"
    """auto picks by name: u.data, *.dat, *.csv, *.tsv, *.parquet, *.jsonl/*.json."""
    columns: ColumnMap = ColumnMap()
    """Mapping from canonical fields to raw column names."""
    delimiter: str | None = None
    """Field separator for csv (default ",") and tsv (tab)."""
    header: bool = True
    """Whether csv/tsv files start with a header line."""
    timestamp_unit: Literal["s", "ms"] = "s"
    """Unit of numeric timestamps."""
    fingerprint: Literal["content", "metadata"] = "content"
    """content: sha256 of every file (exact); metadata: size and mtime (fast on huge inputs)."""

    _resolve = field_validator("path")(resolve_path)

    @model_validator(mode="after")
    def _one_source(self) -> "InputConfig":
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("set exactly one of input.path or input.synthetic")
        return self


class SplitConfig(StrictModel):
    """How kept ratings are split into train and validation."""

    kind: Literal["random", "time"] = "random"
    """random: a seeded hash of (user, item); time: the latest `fraction` of ratings by timestamp."""
    fraction: float = Field(0.1, gt=0, lt=1)
    """Share of ratings held out for validation."""
    seed: int = 42
    """Seed of the random split (changing it changes the snapshot)."""


class SparkConfig(StrictModel):
    """Where Spark runs. Only this changes to scale out (standalone, YARN, Kubernetes)."""

    master: str = "local[*]"
    """Spark master URL."""
    driver_memory: str = "2g"
    """Driver heap; applies only when this process starts the JVM."""
    shuffle_partitions: int = Field(8, ge=1)
    """spark.sql.shuffle.partitions (AQE coalesces small ones)."""
    conf: dict[str, str] = {}
    """Any extra Spark settings, e.g. executor memory or s3a credentials providers."""


class BucketConfig(StrictModel):
    """How a numeric field enters a token: as the label of its bucket (see schemas.events)."""

    edges: list[float] | None = None
    """Ascending edges, e.g. [0, 500, 1000, 2000]: "<0", "0-500", ..., "2000+"."""
    log_start: float | None = Field(None, gt=0)
    """Log scale instead: edges 0, start, start*base, start*base^2, ... (negative values are quarantined)."""
    log_base: float = Field(2.0, gt=1)
    """Ratio between consecutive log-scale edges."""
    unit: str = ""
    """Appended to the label, e.g. "px" -> "1000-2000px"."""

    @model_validator(mode="after")
    def _one_scale(self) -> "BucketConfig":
        if (self.edges is None) == (self.log_start is None):
            raise ValueError("set exactly one of edges or log_start")
        if self.edges is not None:
            if not self.edges or not all(math.isfinite(e) for e in self.edges):
                raise ValueError("edges must be a non-empty list of finite numbers")
            if any(a >= b for a, b in zip(self.edges, self.edges[1:])):
                raise ValueError("edges must be strictly ascending")
        return self

    @property
    def is_log(self) -> bool:
        return self.log_start is not None

    def bucket_edges(self) -> list[float]:
        return list(self.edges) if self.edges is not None else log_edges(self.log_start, self.log_base)


class EventsConfig(StrictModel):
    """Events only: how rows become tokens, tokens become sessions, and what is held out."""

    templates: dict[str, str]
    """Per event type, the token: "{type}:{page_type}:{portal}" (fields in braces are input columns,
    {type} the event type). "*" applies to unlisted types; without it they are quarantined."""
    buckets: dict[str, BucketConfig] = {}
    """Numeric fields that enter tokens as bucket labels, by column name."""
    session_gap_seconds: int = Field(1800, ge=0)
    """A gap longer than this starts a new session (exactly the gap does not); 0: one session per user."""
    max_length: int = Field(50, ge=2)
    """Sessions longer than this are split into chunks of this many events (counted, never truncated)."""
    holdout: int = Field(1, ge=1)
    """The last this many events of each user (with more than that) are held out for validation."""
    history_length: int = Field(200, ge=1)
    """Per user, the last events kept for validation queries and user vectors."""
    drop_duplicates: bool = True
    """Drop exact duplicate events (same user, time, type and fields); they are counted."""

    @model_validator(mode="after")
    def _history_covers_the_holdout(self) -> "EventsConfig":
        if self.history_length <= self.holdout:
            raise ValueError(f"history_length ({self.history_length}) must exceed holdout ({self.holdout}): "
                             "a held-out event needs events before it to be predicted from")
        return self

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("give at least one template")
        for event_type, template in value.items():
            if not template_fields(template) and not template:
                raise ValueError(f"template for {event_type!r} is empty")
        return value

    def fields(self) -> list[str]:
        """Every input column a template or bucket names ({type} excluded), in first-use order."""
        names: dict[str, None] = {}
        for template in self.templates.values():
            names.update(dict.fromkeys(f for f in template_fields(template) if f != TYPE))
        return list(names)

    @model_validator(mode="after")
    def _buckets_are_used(self) -> "EventsConfig":
        unused = set(self.buckets) - set(self.fields())
        if unused:
            raise ValueError(f"buckets for fields no template uses: {', '.join(sorted(unused))}")
        return self


class IndexConfig(StrictModel):
    """The index stage: raw ratings or events -> validated, deduplicated, indexed snapshot."""

    dataset: str
    """Snapshot namespace in the store (defaults to the config's name)."""
    kind: Literal["ratings", "events"] = "ratings"
    """ratings: (user, item, rating) interactions; events: an event log that becomes tokens and sessions."""
    input: InputConfig
    min_count: int = Field(1, ge=1)
    """Keys seen fewer times than this map to the reserved index 0."""
    rating_range: tuple[float, float] = (0.5, 5.0)
    """Inclusive valid rating range; ratings outside are quarantined."""
    max_key_length: int = Field(256, ge=1)
    """Longest key, in characters: a longer user or item id (events: user or token) is quarantined
    (key_too_long), as every later snapshot keeps every key it has seen."""
    split: SplitConfig = SplitConfig()
    parent: str = "latest"
    """Vocabulary parent: "latest" snapshot of this dataset, "none", or a snapshot id."""
    events: EventsConfig | None = None
    """How events become tokens and sessions (required when kind = "events")."""
    spark: SparkConfig = SparkConfig()

    @model_validator(mode="before")
    @classmethod
    def _synthetic_kind_from_index(cls, data: object) -> object:
        """``[index.input.synthetic]`` generates what ``index.kind`` indexes."""
        if isinstance(data, dict):
            source = data.get("input")
            synthetic = source.get("synthetic") if isinstance(source, dict) else None
            if isinstance(synthetic, dict) and "kind" not in synthetic:
                source = {**source, "synthetic": {**synthetic, "kind": data.get("kind", "ratings")}}
                data = {**data, "input": source}
        return data

    @model_validator(mode="after")
    def _kind_settings(self) -> "IndexConfig":
        synthetic = self.input.synthetic
        if synthetic is not None and synthetic.kind != self.kind:
            raise ValueError(f"input.synthetic generates {synthetic.kind} but index.kind is {self.kind!r}")
        if self.kind == "ratings":
            if self.events is not None:
                raise ValueError("index.events is only for kind = 'events'")
            if self.input.columns.type is not None:
                raise ValueError("input.columns.type is only for kind = 'events'")
            return self
        if self.events is None:
            raise ValueError("kind = 'events' needs an [index.events] section with the token templates")
        # Set to something else than the default, not merely present: a dumped config (every field written)
        # must validate again.
        for name in ("item", "rating"):
            if getattr(self.input.columns, name) != ColumnMap.model_fields[name].default:
                raise ValueError(f"input.columns.{name} is not used by kind = 'events': name the column in a template")
        if self.input.columns.timestamp is None:
            raise ValueError("kind = 'events' needs input.columns.timestamp: sessions are ordered by time")
        if self.input.columns.type is None and set(self.events.templates) != {ANY_TYPE}:
            raise ValueError('without input.columns.type every row is one type: give only the "*" template')
        for name in ("split", "rating_range"):
            if getattr(self, name) != type(self).model_fields[name].default:
                raise ValueError(f"index.{name} is only for kind = 'ratings'; events hold out each user's last events "
                                 "(index.events.holdout)")
        return self

    @field_validator("dataset")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "dataset")

    @field_validator("rating_range")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise ValueError("rating_range must be [low, high] with low < high")
        return value

    def data_config(self) -> dict:
        """The fields that shape the snapshot's content (hashed into its id)."""
        if self.kind == "events":
            return self.model_dump(
                mode="json",
                include={"kind", "min_count", "max_key_length", "input", "events"},
                exclude={"input": {"path": True, "synthetic": True, "fingerprint": True, "columns": {"item", "rating"}}},
            )
        return self.model_dump(
            mode="json",
            include={"min_count", "max_key_length", "rating_range", "split", "input"},
            # columns.type is excluded so that ratings snapshots keep the content key they had before events
            exclude={"input": {"path": True, "synthetic": True, "fingerprint": True, "columns": {"type"}}},
        )

    def raw_columns(self) -> list[tuple[str, str]]:
        """Every raw input column the job reads, once each, with where the config names it (for errors)."""
        columns = self.input.columns
        if self.kind == "ratings":
            named = [(f"input.columns.{k}", v) for k, v in columns.model_dump().items() if k != "type"]
        else:
            named = [("input.columns.user", columns.user), ("input.columns.timestamp", columns.timestamp),
                     ("input.columns.type", columns.type)]
            named += [(f"index.events.templates.{event_type}", field)
                      for event_type, template in self.events.templates.items()
                      for field in template_fields(template) if field != TYPE]
        seen: dict[str, str] = {}
        for where, raw in named:
            if raw:
                seen.setdefault(raw, where)
        return [(where, raw) for raw, where in seen.items()]
